"""SeCu: its update rules against hand-computed references on small tensors, the module's wiring on real CIFAR-10
images, and a tiny real fit through train.main that logs finite losses and resumes with its exact state."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from configs.loader import load_config, to_plain
from lightning_modules.secu import STATE, SeCu
from ops.assign import assign, label_histogram
from ops.secu import center_loss, mixed_targets, representation_loss, size_dual_step, size_dual_targets
from training_utils import TINY, metrics, run

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
def _module(*overrides: str) -> SeCu:
    cfg = to_plain(load_config(CONFIG, [*TINY, "method.num_clusters=[3,2]", "method.kernel=torch", *overrides],
                               {"secu": SeCu.Config}))
    return SeCu(cfg, {"num_train": 20, "num_fine": 10, "num_coarse": 2})


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
    torch.testing.assert_close(module.duals, (torch.tensor([0.0, 0.1, 0.3, 0.2, 0.0])
                                              + 0.1 * (size_dual_targets([3, 2], 0.9) - counts / 8)).clamp_min(0))
    loss.backward()
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
    common = ("data.subset=20", "method.num_clusters=[4,8]", "trainer.max_epochs=3",
              "trainer.check_val_every_n_epoch=100", "logger.log_every_n_steps=1")
    steps = 200 // 64
    straight = run(CONFIG, tmp_path / "a", cifar10_tar, cache_dir, *common)
    m = metrics(straight)
    losses = m["train/loss"]
    print("train/loss per step:", [round(v, 3) for v in losses])
    assert len(losses) == 3 * steps and all(math.isfinite(v) for v in losses)
    assert m["lr-SGD/centers"] == [1.2] * len(m["lr-SGD/centers"])  # constant, also in the lr-0 first epoch
    assert m["lr-SGD/decay"][:steps] == [0.0] * steps and m["lr-SGD/decay"][steps] > 0
    assert len(m["secu/changed"]) == 3 and m["secu/changed"][0] == 0 < m["secu/changed"][-1]

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

    from lightning_modules.evaluation.checkpoints import load_source  # evaluate.py scores SeCu's own clusters

    source = load_source(str(straight / "checkpoints" / "last.ckpt"))
    assert torch.equal(source.cluster_labels, a["state_dict"]["label_memory"])
    assert source.clusters_per_head == [4, 8]
