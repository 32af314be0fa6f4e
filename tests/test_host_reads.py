"""No host reads inside the training loop except on logging steps, for every method, through the real train.py.

On a GPU a host read (``.item()``, ``.cpu()``, ``.tolist()``, ``bool(tensor)``, a boolean mask) waits for every
queued kernel, so the loop cannot run ahead of the device. On the CPU the same calls are found by wrapping them
(lightning_modules/run/host_reads.py); on CUDA tests/test_cuda.py runs steps under ``torch.cuda.set_sync_debug_mode``.
"""
import pytest

import lightning_modules.run.runs as runs
import train
from lightning_modules.run.host_reads import HostReads, StepTracker, logging_step
from training_utils import TINY

EVERY = 3  # logger.log_every_n_steps: steps 2 and 5 log, the others may not read
BATCHES = 4  # per epoch: data.subset=13 per class x 10 classes / batch 32
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


def train_counting_reads(config, overrides, tmp_path, cifar10_tar, cache_dir, monkeypatch,
                         reads: HostReads | None = None) -> HostReads:
    reads = reads or HostReads()
    build = runs.build_trainer

    def build_tracked(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.insert(0, StepTracker(reads))  # first, so epoch-end hooks are filed outside the steps
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


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_host_reads_between_logging_steps(method, tmp_path, cifar10_tar, cache_dir, monkeypatch, one_thread):
    config, overrides = METHODS[method]
    reads = train_counting_reads(config, overrides, tmp_path, cifar10_tar, cache_dir, monkeypatch)
    assert reads.steps == set(range(2 * BATCHES))  # the tracker saw every training step
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
