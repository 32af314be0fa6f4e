"""No host reads inside the training loop except on logging steps, for every method, through the real train.py.

On a GPU a host read (``.item()``, ``.cpu()``, ``.tolist()``, ``bool(tensor)``, a boolean mask) waits for every
queued kernel, so the loop cannot run ahead of the device. On the CPU the same calls are found by wrapping them
(lightning_modules/run/host_reads.py); on CUDA tests/test_cuda.py runs steps under ``torch.cuda.set_sync_debug_mode``.

Each method trains long enough to enter its later phases (PHASES), and the test checks that it did: the end of the
warm-up for all, the epochs after a zero-lr initialisation epoch (CoKe's paper config, SeCu), CoKe's stage 2, SwAV's
queue, MoCo v2's queue after it wraps, DeepCluster-v2's re-clustered epochs.
"""
import pytest
import pytorch_lightning as pl

import lightning_modules.run.runs as runs
import train
from lightning_modules.run.host_reads import HostReads, StepTracker, logging_step
from training_utils import TINY, metrics

EVERY = 3  # logger.log_every_n_steps: steps 2, 5, 8 and 11 log, the others may not read
BATCHES = 4  # per epoch: data.subset=13 per class x 10 classes / batch 32
EPOCHS = 3  # epoch 0 warms up (or runs at lr 0, then epoch 1 warms up); the last epoch is past the warm-up
# Kornia draws its random parameters on the CPU by design (its generators' default), so reading them (ColorJitter's
# random order and its skip-a-neutral-step checks) waits for nothing on a GPU. The CUDA test catches it if not.
CPU_SIDE_BY_DESIGN = {"kornia"}

METHODS = {
    "coke_paper": ("configs/pretrain/coke_cifar10_paper.yaml", ["method.num_clusters=[20,30]"]),
    "coke": ("configs/pretrain/coke_cifar10.yaml", ["method.num_clusters=[20,30]"]),
    "coke_quick": ("configs/pretrain/quick.yaml", ["method.num_clusters=[20,30]"]),
    "coke_twoview": ("configs/pretrain/coke_cifar10_twoview.yaml", ["method.num_clusters=[20,30]"]),
    "coke_coarse": ("configs/pretrain/coke_coarse_cifar10.yaml", ["method.num_clusters=[20,30]"]),
    "simclr": ("configs/pretrain/simclr_cifar10.yaml", []),
    "mocov2": ("configs/pretrain/mocov2_cifar10.yaml", []),
    "mocov3": ("configs/pretrain/mocov3_cifar10.yaml", []),
    "swav": ("configs/pretrain/swav_cifar10.yaml", ["method.num_prototypes=30"]),
    "deepclusterv2": ("configs/pretrain/deepclusterv2_cifar10.yaml", ["method.num_prototypes=[20,30,40]"]),
    "secu": ("configs/pretrain/secu_cifar10.yaml", []),
    "supervised": ("configs/pretrain/supervised_coarse_cifar10.yaml", []),
    "supcon": ("configs/pretrain/supcon_coarse_cifar10.yaml", []),
    "coins": ("configs/pretrain/coins_cifar10.yaml", []),
}
# The settings that bring each method's later phases into EPOCHS x BATCHES steps (a one-epoch warm-up for all).
STAGE2 = ["method.stage2_epochs=2"]  # one-view CoKe: epochs 1 and 2 are stage 2 (the second reads the first's slots)
PHASES = {
    "coke_paper": STAGE2,  # and epoch 0 is its clustering initialisation at lr 0 (init_epochs=1)
    "coke": STAGE2,
    "coke_quick": STAGE2,
    "coke_coarse": STAGE2,
    # 64 keys a step: the queue of 96 wraps at step 1 and again every 3 steps after.
    "mocov2": ["method.queue_size=96"],
    # Filled from epoch 1 (steps 4 and 5), in use from step 6 on; the prototypes learn from step 2.
    "swav": ["method.queue_length=64", "method.queue_start_epoch=1", "method.freeze_prototypes_iters=2"],
    # SeCu counts its lr-0 epoch and warm-up in epochs of schedule_epoch_images (50,000 as shipped): here 128 images,
    # this run's own epoch of 4 steps of 32, so epoch 0 runs at lr 0, epoch 1 warms up and epoch 2 is past it.
    "secu": [f"method.schedule_epoch_images={BATCHES * 32}"],
}


def later_phase_run(method: str) -> tuple[str, list[str]]:
    """The method's config and the overrides that run it through its later phases in EPOCHS x BATCHES steps."""
    config, overrides = METHODS[method]
    return config, [*overrides, f"trainer.max_epochs={EPOCHS}", "optim.warmup_epochs=1", *PHASES.get(method, [])]


class Phases(pl.Callback):
    """What each step ran under, read on the host only (a tensor read here would be filed under the step): its epoch,
    the first parameter group's lr, and CoKe's stage 2. Keeps the module for checks after the run."""

    def __init__(self):
        self.epochs, self.lrs, self.stage2 = [], [], []
        self.module = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.epochs.append(trainer.current_epoch)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.stage2.append(pl_module.in_stage2() if hasattr(pl_module, "in_stage2") else False)

    def on_train_end(self, trainer, pl_module):
        self.module = pl_module


def train_counting_reads(config, overrides, tmp_path, cifar10_tar, cache_dir, monkeypatch,
                         reads: HostReads | None = None, callbacks: tuple[pl.Callback, ...] = ()) -> HostReads:
    reads = reads or HostReads()
    build = runs.build_trainer

    def build_tracked(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.insert(0, StepTracker(reads))  # first, so epoch-end hooks are filed outside the steps
        trainer.callbacks.extend(callbacks)
        return trainer

    monkeypatch.setattr(runs, "build_trainer", build_tracked)
    args = [config, *TINY, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", f"run_dir={tmp_path}",
            "run_name=reads", "data.subset=13", "data.batch_size=32", "trainer.max_epochs=2",
            f"logger.log_every_n_steps={EVERY}", "trainer.check_val_every_n_epoch=2", "data.eval_subset=5", *overrides]
    with reads:
        assert train.main(args) == 0
    return reads


def reads_outside_logging(reads: HostReads, exempt: set[str] = CPU_SIDE_BY_DESIGN) -> dict:
    """The reads filed under a training step that is neither a logging step nor an epoch's first step's finite
    check (the saved weights' first loss is checked at once, lightning_modules/run/last_good.py)."""
    bad = {}
    for read in reads.reads:
        if read.step < 0 or logging_step(read.step, EVERY) or read.package in exempt:
            continue
        if read.step % BATCHES == 0 and read.function == "check_finite":
            continue
        bad.setdefault(read.step, []).append(f"{read.what} at {read.where}")
    return bad


def assert_later_phases_entered(method: str, phases: Phases, run_dir) -> None:
    module, steps = phases.module, EPOCHS * BATCHES
    assert phases.epochs == [s // BATCHES for s in range(steps)]
    # lr 0 through the initialisation epochs, a one-epoch linear warm-up, then the cosine: the peak is the warm-up's
    # last step, and every later step is under it.
    zero = module.zero_lr_epochs * BATCHES
    lrs = phases.lrs
    assert lrs[:zero] == [0.0] * zero and zero + BATCHES < steps, (method, lrs)
    warm, after = lrs[zero:zero + BATCHES], lrs[zero + BATCHES:]
    assert 0 < warm[0] < warm[-1] and warm == sorted(warm) and len(set(warm)) == BATCHES, (method, lrs)
    assert after[0] == pytest.approx(warm[-1]) and after[-1] < warm[-1] and after == sorted(after, reverse=True)
    if method in ("coke_paper", "secu"):
        assert zero == BATCHES  # their epoch 0 runs at lr 0 for the network
    if method in ("coke_paper", "coke", "coke_quick", "coke_coarse"):
        assert phases.stage2 == [s >= BATCHES for s in range(steps)], phases.stage2
        assert module.clustering.stage2_started
    if method == "swav":  # logged on steps 2, 5, 8 and 11: not yet full, full from step 6
        assert metrics(run_dir)["train/queue_in_use"] == [0.0, 0.0, 1.0, 1.0]
        assert module.queue_in_use() and int(module.queue_count) == 2 * BATCHES * 32
    if method == "mocov2":
        assert int(module.queue_ptr) == steps * 64 % 96 and steps * 64 > 2 * 96
    if method == "deepclusterv2":  # clustered again at the start of every epoch, on the steps' memory
        assert int(module.clustered_epoch) == EPOCHS - 1


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_host_reads_between_logging_steps(method, tmp_path, cifar10_tar, cache_dir, monkeypatch, one_thread):
    config, overrides = later_phase_run(method)
    phases = Phases()
    reads = train_counting_reads(config, overrides, tmp_path, cifar10_tar, cache_dir, monkeypatch, callbacks=(phases,))
    assert reads.steps == set(range(EPOCHS * BATCHES))  # the tracker saw every training step
    assert_later_phases_entered(method, phases, next((tmp_path / "reads").iterdir()))
    assert reads_outside_logging(reads) == {}


def test_the_counter_sees_a_host_read_in_a_step(tmp_path, cifar10_tar, cache_dir, monkeypatch, one_thread):
    """A method that reads its loss every step is caught, with the source line."""
    from lightning_modules.simclr import SimCLR

    original = SimCLR.training_loss

    def reads_every_step(self, batch, feats):
        loss = original(self, batch, feats)
        self.print_loss = loss.item()
        return loss

    monkeypatch.setattr(SimCLR, "training_loss", reads_every_step)
    reads = train_counting_reads(METHODS["simclr"][0], ["trainer.max_epochs=1"], tmp_path, cifar10_tar, cache_dir,
                                 monkeypatch)
    bad = reads_outside_logging(reads)
    assert sorted(bad) == [s for s in range(BATCHES) if not logging_step(s, EVERY)]
    assert all(any("item at tests/test_host_reads.py" in r for r in rows) for rows in bad.values()), bad


def test_swav_knows_on_the_host_when_its_queue_is_full(rng):
    """SwAV decides whether the queue joins the Sinkhorn batch from a host count: it follows enqueue and a loaded
    state dict (a resume or a warm start), and agrees with the buffer ``queue_count`` it mirrors."""
    from dataclasses import asdict

    import torch

    from configs.loader import load_config, to_plain
    from datamodules.datamodule import DataInfo
    from lightning_modules.registry import method_class, method_schemas

    cfg = load_config(METHODS["swav"][0], [*TINY[:4], "method.num_prototypes=5", "method.queue_length=6",
                                           "method.queue_start_epoch=0"], method_schemas())
    info = asdict(DataInfo(20, 0, 0, [], [], [], []))

    def build():
        return method_class("swav")(to_plain(cfg), info)

    swav, dim = build(), cfg.model.proj_output_dim
    in_use = []
    with HostReads() as reads:
        for _ in range(3):
            in_use.append(swav.queue_in_use())
            swav.enqueue([torch.randn(4, dim, generator=rng), torch.randn(4, dim, generator=rng)])
        in_use.append(swav.queue_in_use())
    assert reads.reads == []
    assert in_use == [False, False, True, True] and int(swav.queue_count) == 12  # 6 rows: full after 2 batches
    resumed, fresh = build(), build()
    resumed.load_state_dict(swav.state_dict())
    assert resumed.queue_in_use() and not fresh.queue_in_use()
    half = swav.state_dict() | {"queue_count": torch.tensor(3)}
    resumed.load_state_dict(half)
    assert not resumed.queue_in_use()
