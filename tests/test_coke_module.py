"""The CoKe LightningModule on real CIFAR-10: epoch 0 only initialises the clustering, the losses equal
hand-written references, all variants fit, resume is exact, stage 2 uses soft targets and the coarse variant keeps
every instance inside its superclass. Learning is checked in test_coke_learning.py, CokeState in
test_coke_state.py."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from configs.loader import load_config, to_plain
from datamodules import PretrainDataModule
from lightning_modules.coke import CoKe
from ops.coke_state import CokeState, partition_clusters
from training_utils import TINY, make_trainer, metrics, run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "pretrain"
ONE_VIEW = str(CONFIGS / "coke_cifar10_paper.yaml")
TWO_VIEW = str(CONFIGS / "coke_cifar10_twoview.yaml")
SMALL = ["data.subset=20", "method.num_clusters=[5,10]", "trainer.check_val_every_n_epoch=100"]  # 200 images
STEPS = 200 // 64  # per epoch (drop_last)
STATE = ["centers", "prev_centers", "duals", "counters", "label_memory", "epoch"]


class Interrupted(Exception):
    pass


def coke_cfg(config: str, *overrides: str) -> dict:
    return to_plain(load_config(config, [*TINY, *overrides], {"coke": CoKe.Config}))


def build(config: str, cifar10_tar, cache_dir, *overrides: str):
    """The module and the datamodule train.main would build (without the Trainer)."""
    cfg = load_config(config, [*TINY, *SMALL, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", *overrides],
                      {"coke": CoKe.Config})
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    pl.seed_everything(0)
    return CoKe(to_plain(cfg), asdict(datamodule.info)), datamodule


def clustering_state(ckpt: dict) -> dict[str, torch.Tensor]:
    return {name: ckpt["state_dict"][f"clustering.{name}"] for name in STATE}


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------ epoch 0
def test_epoch_zero_initialises_the_clustering_at_lr_zero(cifar10_tar, cache_dir):
    model, datamodule = build(ONE_VIEW, cifar10_tar, cache_dir)
    trained = lambda m: {n: p.detach().clone() for n, p in m.named_parameters() if not n.startswith("probes")}  # noqa: E731
    before = trained(model)
    record = {"ids": [], "lrs": [], "epoch1_prev": []}

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 0:
                record["ids"].append(batch["index"].clone())
                record["lrs"] += [g["lr"] for g in trainer.optimizers[0].param_groups]
            else:
                record["epoch1_prev"].append(pl_module.clustering.label_memory[batch["index"]].clone())

        def on_train_epoch_end(self, trainer, pl_module):  # runs before the module's own epoch end
            if trainer.current_epoch == 0:
                record["after0"] = trained(pl_module)
                record["memory0"] = pl_module.clustering.label_memory.clone()
                record["centers0"] = pl_module.clustering.centers.clone()

    trainer = make_trainer(2, Watch(), limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)

    assert set(record["lrs"]) == {0.0}
    for name, value in before.items():
        assert torch.equal(record["after0"][name], value), name
    seen = torch.cat(record["ids"])
    assert len(seen) == STEPS * 64 and len(seen.unique()) == len(seen)
    memory = record["memory0"]
    assert (memory[seen] >= 0).all() and (memory[seen, 0] < 5).all() and (memory[seen, 1] < 10).all()
    unseen = torch.ones(len(memory), dtype=torch.bool)
    unseen[seen] = False
    assert (memory[unseen] == -1).all()  # the dropped last batch
    assert len(memory[seen, 1].unique()) >= 8  # a real clustering, not a collapse
    # epoch 1 predicts the labels of epoch 0 against the centres frozen at its end, and now it trains
    assert (record["epoch1_prev"][0] >= 0).float().mean() > 0.9
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if n.startswith("backbone"))


# ------------------------------------------------------------------------------------- references
def _references_batch(cifar10, n: int = 12):
    images = torch.from_numpy(cifar10[1].images[:n]).float() / 255
    fine = torch.from_numpy(cifar10[1].fine[:n])
    return images, {"index": torch.arange(3, 3 + n), "fine": fine, "coarse": (fine < 2).long()}


def _prime(module: CoKe, n_instances: int, seed: int = 0):
    """Distinct current and frozen centres, previous labels for most instances (-1 for a few)."""
    g = torch.Generator().manual_seed(seed)
    state = module.clustering
    with torch.no_grad():
        state.centers.copy_(F.normalize(torch.randn(state.centers.shape, generator=g), dim=1))
        state.prev_centers.copy_(F.normalize(torch.randn(state.centers.shape, generator=g), dim=1))
        for head, k in enumerate(state.num_clusters):
            state.label_memory[:, head] = torch.randint(k, (n_instances,), generator=g)
        state.label_memory[[4, 9]] = -1
        state.label_memory[7, 1] = -1
    return state.label_memory.clone(), state.prev_centers.clone()


def _ce(logits, labels):
    valid = labels >= 0
    return -F.log_softmax(logits[valid], 1).gather(1, labels[valid, None]).mean()


def test_one_view_loss_is_ce_against_frozen_centres_and_previous_labels(cifar10):
    module = CoKe(coke_cfg(ONE_VIEW, "method.num_clusters=[6,9]"), {"num_train": 20, "num_fine": 10, "num_coarse": 2})
    module.eval()  # deterministic BN for the reference forward
    assert module.temperature == 0.1
    images, batch = _references_batch(cifar10)
    memory, frozen = _prime(module, 20)
    feats = [module(images)]
    loss = module.training_loss(batch, feats)

    h = module.prediction(module.projection(feats[0]))
    labels = memory[batch["index"]]
    ref = sum(_ce(F.normalize(h, dim=1) @ c.T / 0.1, labels[:, j]) for j, c in enumerate(frozen.split([6, 9]))) / 2
    torch.testing.assert_close(loss, ref)
    stale = sum(_ce(F.normalize(h, dim=1) @ c.T / 0.1, labels[:, j])
                for j, c in enumerate(module.clustering.centers.split([6, 9]))) / 2
    assert not torch.allclose(loss, stale)  # the current centres would give another loss
    new = module.clustering.label_memory[batch["index"]]
    assert (new >= 0).all() and not torch.equal(new, labels)  # this step's labels were written after the read
    loss.backward()
    assert next(module.backbone.parameters()).grad.abs().sum() > 0


@pytest.mark.parametrize("config, overrides, chosen", [
    (ONE_VIEW, [], {"views": "OneView", "assign_encoder": "ViewAssignment", "last_stage": "NoLastStage",
                    "stage2": "OnlineCenters", "carry": "EpochReset"}),
    (ONE_VIEW, ["method.stage2_epochs=2", "method.stage2_rule=legacy", "method.carried_members.fraction=0.5"],
     {"last_stage": "OfficialLastStage", "stage2": "EarlierStage2", "carry": "CarriedMembers"}),
    (TWO_VIEW, ["method.view_loss=faithful", "method.target.label=current"],
     {"views": "OfficialTwoViewLoss", "target": "CurrentLabel", "stage2": "OnlineCenters"}),
])
def test_compose_fills_each_slot_from_the_configs_enums(config, overrides, chosen):
    """The method converts its plain config at its boundary: compose.py picks each part by the config's Enums and
    returns the typed `Parts`; the clustering's rule objects come from compose.py too."""
    from lightning_modules.coke import compose
    from lightning_modules.coke.config import CoKeConfig, typed

    cfg = coke_cfg(config, "method.num_clusters=[6,9]", *overrides)
    m = typed(cfg["method"])
    assert isinstance(m, CoKeConfig) and not isinstance(m.stage2_rule, str)
    run = compose.Run(cfg["augment"]["num_large_crops"], True, False, 0, cfg["model"]["proj_output_dim"])
    parts = compose.build(m, run, {"num_train": 20, "num_fine": 10, "num_coarse": 2}, CoKe(cfg, {
        "num_train": 20, "num_fine": 10, "num_coarse": 2}))
    assert isinstance(parts, compose.Parts)
    found = {"views": parts.views, "assign_encoder": parts.assignment, "last_stage": parts.last_stage,
             "target": parts.target, "stage2": parts.clustering.stage2, "carry": parts.clustering.carry}
    assert {slot: type(found[slot]).__name__ for slot in chosen} == chosen


def test_two_view_loss_is_alpha_one_hot_plus_swapped_soft_ce(cifar10):
    """view_loss=legacy; the official (faithful) loss is checked in test_coke_faithful.py."""
    module = CoKe(coke_cfg(TWO_VIEW, "method.num_clusters=[6,9]", "method.view_loss=legacy"),
                  {"num_train": 20, "num_fine": 10, "num_coarse": 2})
    module.eval()
    assert module.two_views and module.temperature == 0.05 and module.method_cfg.alpha == 0.2
    images, batch = _references_batch(cifar10)
    memory, frozen = _prime(module, 20)
    feats = [module(images), module(images.flip(3) * 0.8)]
    loss = module.training_loss(batch, feats)

    labels = memory[batch["index"]]
    logits = [[F.normalize(module.prediction(module.projection(f)), dim=1) @ c.T / 0.05 for c in frozen.split([6, 9])]
              for f in feats]
    terms = []
    for v in range(2):
        one_hot = sum(_ce(logits[v][j], labels[:, j]) for j in range(2)) / 2
        swapped = sum(-(F.softmax(logits[1 - v][j].detach(), 1) * F.log_softmax(logits[v][j], 1)).sum(1).mean()
                      for j in range(2)) / 2
        terms.append(0.2 * one_hot + 0.8 * swapped)
    ref = (terms[0] + terms[1]) / 2
    torch.testing.assert_close(loss, ref)
    # the teacher is a stop-gradient: the gradients agree with the detached reference
    got = torch.autograd.grad(loss, feats, retain_graph=True)
    want = torch.autograd.grad(ref, feats)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_two_view_clusters_on_the_unrenormalised_mean_and_small_crops_are_students(cifar10, monkeypatch):
    module = CoKe(coke_cfg(TWO_VIEW, "method.num_clusters=[6,9]", "augment.num_small_crops=2"),
                  {"num_train": 20, "num_fine": 10, "num_coarse": 2})
    module.train()  # batch-statistics BN: the projections of different images differ
    images, batch = _references_batch(cifar10)
    seen = []
    original = CokeState.step
    monkeypatch.setattr(CokeState, "step", lambda self, x, *a: seen.append(x.clone()) or original(self, x, *a))
    small = torch.nn.functional.interpolate(images, size=16)
    other = images.roll(1, dims=0).flip(3)  # a clearly different second view
    feats = [module(images), module(other), module(small), module(small.flip(3))]
    state = {k: v.clone() for k, v in module.clustering.state_dict().items()}
    loss = module.training_loss(batch, feats)
    small_grads = torch.autograd.grad(loss, feats[2:])
    assert all(g.abs().sum() > 0 for g in small_grads)  # small crops are trained as students

    with torch.no_grad():
        x1, x2 = (F.normalize(module.projection(f), dim=1) for f in feats[:2])
    torch.testing.assert_close(seen[0], (x1 + x2) / 2)
    assert len(seen) == 1 and seen[0].shape == (12, 128)
    assert (seen[0].norm(dim=1) < 0.99).all()  # not renormalised
    # small crops never feed the clustering: the same step without them gives the same state
    after = {k: v.clone() for k, v in module.clustering.state_dict().items()}
    module.clustering.load_state_dict(state)
    module.training_loss(batch, feats[:2])
    torch.testing.assert_close(seen[1], seen[0])
    for key, value in module.clustering.state_dict().items():
        assert torch.equal(value, after[key]), key


def test_stage2_loss_reads_the_soft_targets_before_this_step_writes(cifar10, monkeypatch):
    """Stage 2 (one view): the target is a softmax at t = 0.5 of the label frequencies over the EARLIER
    stage-2 epochs, read before this step's label is written (docs/algorithm.md §2); in the first stage-2 epoch,
    with no stage-2 label yet, it is the previous epoch's hard label. (stage2_rule=legacy: label frequencies.)"""
    module = CoKe(coke_cfg(ONE_VIEW, "method.num_clusters=[6,9]", "method.stage2_epochs=3", "method.stage2_rule=legacy"),
                  {"num_train": 20, "num_fine": 10, "num_coarse": 2})
    module.eval()
    monkeypatch.setattr(CoKe, "in_stage2", lambda self: True)
    images, batch = _references_batch(cifar10)
    memory, _ = _prime(module, 20)
    state = module.clustering
    state.begin_stage2()
    ids = batch["index"]
    stage_labels = []  # per stage-2 epoch, the labels this batch got
    g = torch.Generator().manual_seed(5)
    for epoch in range(3):
        with torch.no_grad():  # fresh centres: the labels move from epoch to epoch
            state.centers.copy_(F.normalize(torch.randn(state.centers.shape, generator=g), dim=1))
            state.duals.zero_()
        centers = state.loss_centers().clone()
        prev = state.label_memory[ids].clone()
        feats = [module(images)]
        loss = module.training_loss(batch, feats)
        h = F.normalize(module.prediction(module.projection(feats[0])), dim=1)
        ref = 0
        for j, (c, k) in enumerate(zip(centers.split([6, 9]), [6, 9])):
            log_p = F.log_softmax(h @ c.T / 0.1, 1)
            if not stage_labels:  # first stage-2 epoch: the previous epoch's hard label
                target = F.one_hot(prev[:, j].clamp_min(0), k).float() * (prev[:, j:j + 1] >= 0)
                ref = ref + -(target * log_p).sum(1).sum() / (prev[:, j] >= 0).sum() / 2
                continue
            target = torch.zeros(len(ids), k)
            for row in range(len(ids)):
                seen = [labels[row, j].item() for labels in stage_labels]
                weights = {label: seen.count(label) / len(seen) for label in set(seen)}
                probs = torch.softmax(torch.tensor(list(weights.values())) / 0.5, 0)
                target[row, list(weights)] = probs
            ref = ref + -(target * log_p).sum(1).mean() / 2
        torch.testing.assert_close(loss, ref)
        stage_labels.append(state.label_memory[ids].clone())
        state.end_epoch()
    assert not torch.equal(stage_labels[0], stage_labels[1])  # the last target really was soft somewhere


# ------------------------------------------------------------------------------------ variants
@pytest.mark.parametrize("config, extra", [
    (TWO_VIEW, []),
    (TWO_VIEW, ["augment.num_small_crops=2", "augment.small_crop_size=16"]),
    (ONE_VIEW, ["augment.num_small_crops=2", "augment.small_crop_size=16"]),
    (ONE_VIEW, ["augment.clean_view=true", "method.clean_view.assign_on=clean", "method.clean_view.momentum=0.9",
                "method.proj_last_bn=false"]),
], ids=["two_view", "two_view_multicrop", "one_view_multicrop", "one_view_clean_ema"])
def test_variants_fit_with_finite_loss(config, extra, tmp_path, cifar10_tar, cache_dir):
    run_dir = run(config, tmp_path, cifar10_tar, cache_dir, *SMALL, "trainer.max_epochs=2", "logger.log_every_n_steps=1",
                  *extra)
    losses = metrics(run_dir)["train/loss"]
    assert len(losses) == 2 * STEPS
    assert all(math.isfinite(v) for v in losses)
    assert all(v > 0.5 for v in losses[STEPS:])  # epoch 1 predicts real labels
    ckpt = last_checkpoint(run_dir)
    assert (clustering_state(ckpt)["label_memory"] >= 0).float().mean() > 0.9


# -------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("extra", [[], ["method.stage2_epochs=3"]], ids=["stage1", "stage2"])
def test_resume_mid_epoch_reproduces_the_clustering_state(extra, tmp_path, cifar10_tar, cache_dir, monkeypatch):
    """stage2: the crash falls in the second stage-2 epoch (of three), so the run resumes in the middle of stage 2."""
    common = (*SMALL, "trainer.max_epochs=4", *extra)
    straight = run(ONE_VIEW, tmp_path / "a", cifar10_tar, cache_dir, *common)

    original = CoKe.training_step

    def crash_in_epoch_2(self, batch, batch_idx):
        if self.current_epoch == 2 and batch_idx == 1:  # after one step of epoch 2 changed the state in memory
            raise Interrupted()
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(CoKe, "training_step", crash_in_epoch_2)
        with pytest.raises(Interrupted):
            run(ONE_VIEW, tmp_path / "b", cifar10_tar, cache_dir, *common)
    first = next((tmp_path / "b" / "runs" / "test").iterdir())
    assert last_checkpoint(first)["global_step"] == 2 * STEPS
    resumed = run(ONE_VIEW, tmp_path / "b", cifar10_tar, cache_dir, *common, "resume=auto")
    assert resumed == first

    a, b = last_checkpoint(straight), last_checkpoint(resumed)
    assert a["global_step"] == b["global_step"] == 4 * STEPS
    sa, sb = clustering_state(a), clustering_state(b)
    assert torch.equal(sa["label_memory"], sb["label_memory"])
    assert torch.equal(sa["counters"], sb["counters"]) and sa["epoch"].item() == sb["epoch"].item() == 4
    for name in ("centers", "prev_centers", "duals"):
        assert torch.allclose(sa[name], sb[name], atol=1e-6), name
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    assert (sa["duals"] > 0).any()  # a state that moved, not trivially equal


# ------------------------------------------------------------------------------------- stage 2
def test_stage2_fit_trains_on_soft_targets(tmp_path, cifar10_tar, cache_dir, monkeypatch):
    """Five epochs, the last three in stage 2: each step's targets are the label frequencies of the instance
    over the earlier stage-2 epochs (softmax at t = 0.5); none yet in the first stage-2 epoch. stage2_rule=legacy."""
    calls = []
    original = CokeState.dense_soft_targets

    def recording(self, index, head):
        target = original(self, index, head)
        calls.append((int(self.epoch), head, index.clone(), target.clone()))
        return target

    monkeypatch.setattr(CokeState, "dense_soft_targets", recording)
    memories = {}
    original_end = CokeState.end_epoch

    def remember(self):
        memories[int(self.epoch)] = self.label_memory.clone()
        return original_end(self)

    monkeypatch.setattr(CokeState, "end_epoch", remember)
    run_dir = run(ONE_VIEW, tmp_path, cifar10_tar, cache_dir, *SMALL, "trainer.max_epochs=5", "method.stage2_epochs=3",
                  "method.stage2_rule=legacy", "logger.log_every_n_steps=1")
    losses = metrics(run_dir)["train/loss"]
    assert len(losses) == 5 * STEPS
    assert all(math.isfinite(v) for v in losses) and all(v > 0 for v in losses[STEPS:])
    assert {c[0] for c in calls} == {2, 3, 4}  # only the stage-2 epochs
    assert len(calls) == 3 * STEPS * 2  # every stage-2 step, both heads

    seen = {epoch: torch.zeros(200, dtype=torch.bool) for epoch in (2, 3, 4)}
    for epoch, _, index, _ in calls:
        seen[epoch][index] = True
    soft_rows = 0
    for epoch, head, index, target in calls:
        for row, i in enumerate(index.tolist()):
            earlier = [memories[e][i, head].item() for e in range(2, epoch) if seen[e][i]]
            expected = torch.zeros(target.shape[1])
            if earlier:
                labels = sorted(set(earlier))
                weights = torch.tensor([earlier.count(label) / len(earlier) for label in labels])
                expected[labels] = torch.softmax(weights / 0.5, 0)
                soft_rows += len(labels) > 1
            torch.testing.assert_close(target[row], expected, msg=f"epoch {epoch} head {head} instance {i}")
    assert soft_rows > 0  # some targets really were soft


# -------------------------------------------------------------------------------------- coarse
def test_coarse_variant_keeps_every_label_inside_its_superclass(tmp_path, cifar10_tar, cache_dir):
    run_dir = run(ONE_VIEW, tmp_path, cifar10_tar, cache_dir, *SMALL, "method.num_clusters=[6,11]",
                  "method.coarse_weight=0.5", "trainer.max_epochs=2", "logger.log_every_n_steps=1")
    m = metrics(run_dir)
    assert all(math.isfinite(v) and v > 0 for v in m["train/coarse_ce"])
    cfg = load_config(ONE_VIEW, [*TINY, *SMALL, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}"],
                      {"coke": CoKe.Config})
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    info = datamodule.info
    coarse = torch.from_numpy(datamodule.train_set.data.coarse)
    assert info.superclass_names == ["animals", "vehicles"] and info.superclass_sizes == [120, 80]

    memory = clustering_state(last_checkpoint(run_dir))["label_memory"]
    for head, k in enumerate([6, 11]):
        shares = partition_clusters(k, info.superclass_sizes)
        assert sum(shares) == k and min(shares) >= 1
        starts = torch.tensor([0, *torch.tensor(shares).cumsum(0).tolist()])
        labels = memory[:, head]
        assigned = labels >= 0
        assert assigned.float().mean() > 0.9
        lo, hi = starts[coarse[assigned]], starts[coarse[assigned] + 1]
        assert ((labels[assigned] >= lo) & (labels[assigned] < hi)).all(), head
        for c in range(2):  # every superclass's clusters are used by its own instances only
            in_class = labels[assigned & (coarse == c)]
            assert len(in_class.unique()) >= shares[c] - 1
