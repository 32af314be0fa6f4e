"""SeCu: its update rules against hand-computed references on small tensors, the module's wiring on real CIFAR-10
images, its schedule and optimiser (the official shape counted in images, rates per image, centres never under
LARS), and a tiny real fit through train.main that logs finite losses and resumes with its exact state."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from configs.loader import load_config, to_plain
from lightning_modules.secu import STATE, SeCu
from ops.assign import assign, label_histogram
from ops.secu import center_loss, mixed_targets, representation_loss, size_dual_step, size_dual_targets
from training_utils import TINY, load_benchmark, metrics, run

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "pretrain" / "secu_cifar10.yaml")
OFFSETS = [0, 3, 5]  # two heads, K = 3 and 2, stacked
LABELS = torch.tensor([[0, 3], [0, 3], [0, 4], [2, 3]])  # global indices: counts 3, 0, 1 | 3, 1


# ------------------------------------------------------------------------------------------- the rules
def test_dual_update_against_hand_values():
    duals = torch.tensor([0.0, 0.05, 0.20, 0.10, 0.0])
    targets = size_dual_targets([3, 2], ratio=0.9)
    torch.testing.assert_close(targets, torch.tensor([0.3, 0.3, 0.3, 0.45, 0.45]))
    # ρ + 0.1·(r/K − n/B) with B = 4: 0 − 0.045 → clamped to 0; 0.05 + 0.03; 0.2 + 0.005; 0.1 − 0.03; 0 + 0.02
    stepped = size_dual_step(duals, LABELS, targets, lr=0.1, clamp=True)
    torch.testing.assert_close(stepped, torch.tensor([0.0, 0.08, 0.205, 0.07, 0.02]))
    balanced = size_dual_step(duals, LABELS, size_dual_targets([3, 2], 1.0), lr=0.1, clamp=False)
    torch.testing.assert_close(balanced[0], torch.tensor(0.1 * (1 / 3 - 3 / 4)))  # r = 1: no clamp, stays negative


def test_assignment_with_dual_steps_keeps_every_cluster_at_the_bound_on_average():
    """All 256 points sit near one direction: without duals one cluster takes 240 of them."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(256, 8, generator=g) * 0.3 + torch.eye(8)[0] * 3, dim=1)
    centers = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    duals, targets, sizes = torch.zeros(4), size_dual_targets([4], 0.9), torch.zeros(4)
    assert label_histogram(assign(x, centers, duals, [0, 4])[0], 4).max() >= 200
    for step in range(300):
        labels, _ = assign(x, centers, duals, [0, 4])
        duals = size_dual_step(duals, labels, targets, lr=0.1, clamp=True)
        if step >= 100:
            sizes += label_histogram(labels, 4)
    mean_size = sizes / 200
    assert (mean_size >= 0.9 * 256 / 4 - 1).all(), mean_size  # r·B/K, up to one row
    assert (duals >= 0).all() and (duals == 0).any()  # the cluster above the bound needs no dual


def test_centre_loss_value_and_hardness_weighted_gradient():
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(4, 3, generator=g), dim=1).requires_grad_()
    centers = F.normalize(torch.randn(5, 3, generator=g), dim=1).requires_grad_()
    T = 0.5
    loss = center_loss(x, centers, LABELS, OFFSETS, T)
    loss.backward()

    xs, cs = x.detach().double(), centers.detach().double()
    value, grad = 0.0, torch.zeros(5, 3, dtype=torch.float64)
    for h, (lo, hi) in enumerate(zip(OFFSETS[:-1], OFFSETS[1:])):
        for i in range(4):
            scores = [float(xs[i] @ cs[k]) / T for k in range(lo, hi)]
            y = int(LABELS[i, h])
            log_z = math.log(sum(math.exp(s) for s in scores))
            value += (log_z - scores[y - lo]) / (4 * 2)
            p_y = math.exp(scores[y - lo] - log_z)
            grad[y] += (p_y - 1) * xs[i] / T / (4 * 2)  # only the assigned centre, weighted by 1 − p
    torch.testing.assert_close(loss.double(), torch.tensor(value, dtype=torch.float64))
    torch.testing.assert_close(centers.grad.double(), grad)
    assert centers.grad[1].abs().sum() == 0  # no member: no gradient, though it is in every softmax
    assert x.grad is None  # the centre loss never trains the network


def test_mixed_targets_against_hand_values():
    teacher = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    targets = mixed_targets(teacher, torch.tensor([1, -1]), tau=0.2)
    # softmax([1, 2, 0]) = [0.244728, 0.665241, 0.090031]; 0.8·that + 0.2 on the label; no label: the softmax
    torch.testing.assert_close(targets, torch.tensor([[0.195783, 0.732193, 0.072025], [1 / 3, 1 / 3, 1 / 3]]),
                               atol=1e-6, rtol=0)
    assert not targets.requires_grad


def test_representation_loss_is_swapped_mixed_ce_and_only_the_student_learns():
    g = torch.Generator().manual_seed(2)
    logits1 = torch.randn(4, 5, generator=g, requires_grad=True)
    logits2 = torch.randn(4, 5, generator=g, requires_grad=True)
    tau = 0.2
    loss = representation_loss(logits1, logits2, LABELS, OFFSETS, tau)

    expected, want1 = 0.0, torch.zeros(4, 5, dtype=torch.float64)
    l1, l2 = logits1.detach().double(), logits2.detach().double()
    for h, (lo, hi) in enumerate(zip(OFFSETS[:-1], OFFSETS[1:])):
        for student, teacher in ((l1, l2), (l2, l1)):
            target = 0.8 * torch.softmax(teacher[:, lo:hi], 1)
            target[torch.arange(4), LABELS[:, h] - lo] += tau
            expected -= (target * torch.log_softmax(student[:, lo:hi], 1)).sum() / 4 / (2 * 2)
            if student is l1:  # d/d logits1 = (softmax − target) / (B·2H): the teacher passes no gradient
                want1[:, lo:hi] = (torch.softmax(student[:, lo:hi], 1) - target) / 4 / (2 * 2)
    torch.testing.assert_close(loss.double(), expected)
    got1, = torch.autograd.grad(loss, logits1)
    torch.testing.assert_close(got1.double(), want1)


# ------------------------------------------------------------------------------------ the module
def _module(*overrides: str, tiny: bool = True, num_train: int = 20) -> SeCu:
    """tiny=False: the shipped config as it is but for the small backbone (its schedule and optimiser)."""
    base = TINY if tiny else ["model.backbone=test_resnet", "model.cifar_stem=false"]
    cfg = to_plain(load_config(CONFIG, [*base, "method.num_clusters=[3,2]", "method.kernel=torch", *overrides],
                               {"secu": SeCu.Config}))
    return SeCu(cfg, {"num_train": num_train, "num_fine": 10, "num_coarse": 2})


def _configure(module: SeCu, steps_per_epoch: int, epochs: int, accumulate: int = 1):
    """configure_optimizers under a one-device trainer of `epochs` x `steps_per_epoch` optimiser steps; returns the
    optimiser and {group name: its lr multiplier as a function of the step}."""
    module.trainer = SimpleNamespace(world_size=1, num_devices=1, num_nodes=1, accumulate_grad_batches=accumulate,
                                     max_epochs=epochs, estimated_stepping_batches=steps_per_epoch * epochs)
    configured = module.configure_optimizers()
    module.trainer = None  # detached again: the module's steps run as in the tests above
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    return optimizer, {g["name"]: f for g, f in zip(optimizer.param_groups, scheduler.lr_lambdas)}


@pytest.mark.parametrize("epoch", [0, 1])
def test_step_assigns_on_the_mean_of_views_and_targets_the_previous_label(cifar10, monkeypatch, epoch):
    monkeypatch.setattr(SeCu, "current_epoch", property(lambda self: epoch))
    module = _module()
    module.eval()  # deterministic BN for the reference forward
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        module.centers.copy_(torch.randn(5, 128, generator=g) * 2)  # not unit: the module normalises them
        module.epoch_centers.copy_(F.normalize(torch.randn(5, 128, generator=g), dim=1))
        module.duals.copy_(torch.tensor([0.0, 0.1, 0.3, 0.2, 0.0]))
        module.label_memory.copy_(torch.stack([torch.randint(3, (20,), generator=g),
                                               torch.randint(3, 5, (20,), generator=g)], 1))
    memory = module.label_memory.clone()
    images = torch.from_numpy(cifar10[1].images[:8]).float() / 255
    index = torch.arange(4, 12)
    feats = [module(images), module(images.flip(3) * 0.7)]
    loss = module.training_loss({"index": index}, feats)

    x1, x2 = (F.normalize(module.projection(f), dim=1) for f in feats)
    centers = F.normalize(module.centers, dim=1)
    scores = ((x1 + x2) / 2 @ centers.T).detach() + torch.tensor([0.0, 0.1, 0.3, 0.2, 0.0])
    labels = torch.stack([scores[:, :3].argmax(1), scores[:, 3:].argmax(1) + 3], 1)
    assert torch.equal(module.label_memory[index], labels)
    targets = labels if epoch == 0 else memory[index]
    ref = ((center_loss(x1, centers, labels, OFFSETS, 0.05) + center_loss(x2, centers, labels, OFFSETS, 0.05)) / 2
           + representation_loss(x1 @ module.epoch_centers.T / 0.05, x2 @ module.epoch_centers.T / 0.05, targets,
                                 OFFSETS, 0.2))
    torch.testing.assert_close(loss, ref)
    counts = label_histogram(labels, 5)
    torch.testing.assert_close(module.counts, counts.long())
    dual_lr = 0.1 * 8 / 128  # the official 0.1 per step of 128 images, at 8
    torch.testing.assert_close(module.duals, (torch.tensor([0.0, 0.1, 0.3, 0.2, 0.0])
                                              + dual_lr * (size_dual_targets([3, 2], 0.9) - counts / 8)).clamp_min(0))
    loss.backward()
    assert module.centers.grad.abs().sum() > 0 and next(module.backbone.parameters()).grad.abs().sum() > 0


# ------------------------------------------------------------------------- schedule and optimiser
def test_the_shipped_config_keeps_the_official_schedule_at_batch_128_on_cifar10():
    """idstcv/SeCu main.py: network lr 0 through epoch 0, a linear warm-up over epochs 1-10, then a cosine; the
    centres at a constant 1.2. At batch 128 on the 50,000 images an epoch is 390 steps (the last partial batch
    dropped), and counting the schedule in epochs of 50,000 images changes nothing there."""
    optimizer, lr = _configure(_module(tiny=False, num_train=50000), 390, 401)
    net = lr["decay"]
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.2)  # 0.4 x 128/256, times the multiplier
    assert [net(s) for s in (0, 389)] == [0.0, 0.0]
    assert net(390) == 1 / 3900 and net(390 + 3899) == 1.0  # warm-up: epochs 1-10
    assert 1.0 > net(390 + 3901) > net(200 * 390) > net(401 * 390 - 1) > 0
    assert net(200 * 390) == pytest.approx(0.5 * (1 + math.cos(math.pi * (199 * 390 - 3900) / (400 * 390 - 3900))))
    centers = next(g for g in optimizer.param_groups if g["name"] == "centers")
    assert centers["lr"] == 1.2 and lr["centers"](0) == lr["centers"](10**5) == 1.0
    _, run_epochs = _configure(_module("method.schedule_epoch_images=0", tiny=False, num_train=50000), 390, 401)
    assert all(net(s) == run_epochs["decay"](s) for s in range(0, 401 * 390, 7))  # the schedule of before


@pytest.mark.parametrize("images, batch, steps_per_epoch", [(2500, 64, 39), (2500, 128, 19), (50000, 512, 97)])
def test_the_frozen_phase_and_warm_up_count_official_epochs_of_images(images, batch, steps_per_epoch):
    """A subset or another batch keeps the official frozen 50,000 images and 500,000 warm-up images, in steps of
    its own batch: on 2,500 images at batch 64 the network stays at lr 0 for 781 steps (20 epochs of 39)."""
    epochs = 300
    _, lr = _configure(_module(f"data.batch_size={batch}", tiny=False, num_train=images), steps_per_epoch, epochs)
    frozen, warm = 50000 // batch, 10 * (50000 // batch)
    net = lr["decay"]
    assert net(frozen - 1) == 0.0 < net(frozen) == 1 / warm
    assert net(frozen + warm // 2 - 1) == pytest.approx(0.5) and net(frozen + warm - 1) == 1.0
    assert net(frozen + warm + 1) < 1.0 and net(epochs * steps_per_epoch - 1) < 0.01
    _, run_epochs = _configure(_module(f"data.batch_size={batch}", "method.schedule_epoch_images=0", tiny=False,
                                       num_train=images), steps_per_epoch, epochs)
    assert run_epochs["decay"](steps_per_epoch - 1) == 0.0 < run_epochs["decay"](steps_per_epoch)  # one run epoch


def test_a_budget_run_refits_the_schedule_but_keeps_the_frozen_phase_and_warm_up_in_images():
    """benchmarks/time_to_accuracy.py (budget.py's rows) refits the schedule's length to the time left after each
    epoch; SeCu's lr-0 phase and warm-up stay those of configure_optimizers (official epochs of images), and its
    centres keep their constant lr."""
    from lightning_modules.optim import constant_lr

    budget_callback = load_benchmark("time_to_accuracy").Budget
    batch, steps = 64, 39  # 2,500 images at batch 64
    module = _module(f"data.batch_size={batch}", tiny=False, num_train=2500)
    _, lr = _configure(module, steps, 300)
    names, scheduler = list(lr), SimpleNamespace(lr_lambdas=list(lr.values()))
    trainer = SimpleNamespace(current_epoch=2, num_training_batches=steps, fit_loop=SimpleNamespace(max_epochs=300),
                              lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    module.trainer = SimpleNamespace(world_size=1, accumulate_grad_batches=1)
    callback = budget_callback(minutes=30, eval_every=1, fit_schedule=True, datamodule=None, precision="32")
    callback.epoch_seconds = [5.0, 5.0, 5.0]
    callback.stretch_schedule(trainer, module, now=15.0)  # 1,785 s left at 5 s an epoch: 3 done + 357
    assert trainer.fit_loop.max_epochs == 360
    net = scheduler.lr_lambdas[names.index("decay")]
    frozen, warm = 50000 // batch, 10 * (50000 // batch)
    assert net(frozen - 1) == 0.0 < net(frozen) == 1 / warm and net(frozen + warm - 1) == 1.0
    assert net(360 * steps - 1) < 0.01  # the cosine ends with the refitted run
    assert scheduler.lr_lambdas[names.index("centers")] is constant_lr


@pytest.mark.parametrize("batch, accumulate, rates_at_batch, center_lr, dual_lr", [
    (128, 1, 128, 1.2, 0.1),  # the official values
    (64, 1, 128, 0.6, 0.05),
    (256, 2, 128, 4.8, 0.2),  # 512 images a step; the duals step on every forward of 256
    (64, 1, 0, 1.2, 0.1),  # per step at any batch
])
def test_centre_and_dual_rates_are_per_image(cifar10, batch, accumulate, rates_at_batch, center_lr, dual_lr):
    module = _module(f"data.batch_size={batch}", f"method.rates_at_batch={rates_at_batch}", num_train=batch)
    optimizer, _ = _configure(module, 10, 10, accumulate)
    assert next(g["lr"] for g in optimizer.param_groups if g["name"] == "centers") == pytest.approx(center_lr)
    module.eval()
    x = F.normalize(module.projection(module(torch.from_numpy(cifar10[0].images[:batch]).float() / 255)), dim=1)
    centers = F.normalize(module.centers, dim=1)
    labels, _ = module.cluster_step(x.detach(), centers.detach(), torch.arange(batch))
    want = size_dual_step(torch.zeros(5), labels, size_dual_targets([3, 2], 0.9), dual_lr, clamp=True)
    torch.testing.assert_close(module.duals, want)


def test_centres_take_the_plain_sgd_step_under_lars(cifar10):
    """timm's LARS rescales every group with weight decay; the centres' group steps as torch.optim.SGD (momentum 0.9,
    weight decay 1e-4, lr 0.6 at batch 64) while the network's decayed weights take timm's LARS step."""
    from timm.optim import Lars as TimmLars

    module = _module("optim.name=lars", "method.init_epochs=0", num_train=64)  # the network learns from step 0
    optimizer, _ = _configure(module, 10, 10)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert type(optimizer).__name__ == "Lars" and groups["decay"]["weight_decay"] == 1e-4
    assert groups["decay"]["lr"] == pytest.approx(0.1) and groups["centers"]["lr"] == pytest.approx(0.6)
    images = torch.from_numpy(cifar10[0].images[:64]).float() / 255
    conv = groups["decay"]["params"][0]
    centers, conv_ref = (torch.nn.Parameter(p.detach().clone()) for p in (module.centers, conv))
    sgd = torch.optim.SGD([centers], lr=0.6, momentum=0.9, weight_decay=1e-4)
    lars = TimmLars([conv_ref], lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step in range(2):  # the second step runs on the momentum buffer
        optimizer.zero_grad()
        feats = [module(images), module(images.flip(3))]
        module.training_loss({"index": torch.arange(64)}, feats).backward()
        assert module.centers.grad.abs().sum() > 0
        centers.grad, conv_ref.grad = module.centers.grad.clone(), conv.grad.clone()
        before = module.centers.detach().clone()
        optimizer.step()
        sgd.step()
        lars.step()
        torch.testing.assert_close(module.centers.detach(), centers.detach(), rtol=0, atol=1e-7)
        torch.testing.assert_close(conv.detach(), conv_ref.detach(), rtol=0, atol=1e-7)
        assert (module.centers - before).abs().max() > 1e-2  # timm's trust ratio: 2e-4 at the first step


def test_the_clean_image_departure_assigns_the_un_augmented_image(cifar10):
    """method.assign_on=clean (not the official code): the labels come from the clean image, not the views' mean."""
    with pytest.raises(ValueError, match="augment.clean_view=true"):
        _module("method.assign_on=clean")
    module = _module("method.assign_on=clean", "augment.clean_view=true")
    module.eval()
    images = torch.from_numpy(cifar10[1].images[:8]).float() / 255
    index = torch.arange(8)
    feats = [module(images.flip(3) * 0.7), module(images.flip(2))]
    module.training_loss({"index": index, "clean_view": images}, feats).backward()
    scores = F.normalize(module.projection(module(images)), dim=1) @ F.normalize(module.centers, dim=1).T
    labels = torch.stack([scores[:, :3].argmax(1), scores[:, 3:].argmax(1) + 3], 1)  # duals 0 at the first step
    assert torch.equal(module.label_memory[index], labels)
    assert module.centers.grad.abs().sum() > 0 and next(module.backbone.parameters()).grad.abs().sum() > 0


def test_each_view_goes_through_the_network_alone_as_the_official_code(cifar10):
    images = torch.from_numpy(cifar10[1].images[:16]).float() / 255
    views = [images, images.flip(3) * 0.7]
    separate, joint = _module(), _module("method.separate_view_batches=false")
    joint.load_state_dict(separate.state_dict())
    feats = separate.encode_views(views)
    torch.testing.assert_close(feats[1], separate(views[1]))  # BatchNorm saw view 2 alone
    assert not torch.allclose(joint.encode_views(views)[1], feats[1], atol=1e-4)


def test_the_blur_kernel_holds_three_sigma_of_the_official_blur():
    from datamodules.augment import ViewAugmenter
    from kornia.augmentation import RandomGaussianBlur

    cfg = load_config(CONFIG, [], {"secu": SeCu.Config}).augment
    blurs = [m for m in ViewAugmenter(cfg).modules() if isinstance(m, RandomGaussianBlur)]
    assert [b.flags["kernel_size"] for b in blurs] == [13, 13]
    assert [b.p for b in blurs] == [1.0, 0.1]


# ------------------------------------------------------------------------------------ a real fit
class Interrupted(Exception):
    pass


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_tiny_fit_logs_finite_losses_keeps_the_centre_lr_and_resumes_exactly(tmp_path, cifar10_tar, cache_dir,
                                                                             monkeypatch):
    # Official epochs of 320 images: the network's lr-0 phase is 5 steps, and ends inside epoch 1 of 3 steps.
    common = ("data.subset=20", "method.num_clusters=[4,8]", "trainer.max_epochs=3", "method.schedule_epoch_images=320",
              "trainer.check_val_every_n_epoch=100", "logger.log_every_n_steps=1")
    steps, frozen = 200 // 64, 320 // 64
    straight = run(CONFIG, tmp_path / "a", cifar10_tar, cache_dir, *common)
    m = metrics(straight)
    losses = m["train/loss"]
    print("train/loss per step:", [round(v, 3) for v in losses])
    assert len(losses) == 3 * steps and all(math.isfinite(v) for v in losses)
    assert m["lr-SGD/centers"] == [0.6] * len(m["lr-SGD/centers"])  # 1.2 x 64/128, also while the network is frozen
    assert m["lr-SGD/decay"][:frozen] == [0.0] * frozen and m["lr-SGD/decay"][frozen] > 0
    assert len(m["secu/changed"]) == 3 and m["secu/changed"][0] == 0 < m["secu/changed"][-1]
    assert all(0 <= v <= 1 for v in m["secu/h0_nmi_fine"]) and all(v > 0 for v in m["secu/center_norm"])

    original = SeCu.training_step

    def crash_in_epoch_2(self, batch, batch_idx):
        if self.current_epoch == 2 and batch_idx == 1:  # one step of epoch 2 already changed the state in memory
            raise Interrupted()
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(SeCu, "training_step", crash_in_epoch_2)
        with pytest.raises(Interrupted):
            run(CONFIG, tmp_path / "b", cifar10_tar, cache_dir, *common)
    resumed = run(CONFIG, tmp_path / "b", cifar10_tar, cache_dir, *common, "resume=auto")

    a, b = last_checkpoint(straight), last_checkpoint(resumed)
    assert a["global_step"] == b["global_step"] == 3 * steps
    assert torch.equal(a["state_dict"]["label_memory"], b["state_dict"]["label_memory"])
    assert (a["state_dict"]["label_memory"] >= 0).float().mean() > 0.9
    assert (a["state_dict"]["counts"] == 0).all()  # reset at every epoch end
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    assert set(STATE) | {"centers"} <= set(a["state_dict"])
    assert (a["state_dict"]["duals"] > 0).any()

    from lightning_modules.checkpoints.sources import load_source  # evaluate.py scores SeCu's own clusters

    source = load_source(str(straight / "checkpoints" / "last.ckpt"))
    assert torch.equal(source.cluster_labels, a["state_dict"]["label_memory"])
    assert source.clusters_per_head == [4, 8]
