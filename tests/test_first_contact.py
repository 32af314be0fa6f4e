"""What a first run tells its user: the CPU notice and stop, the whole-run progress fields, the loader
workers and the precision that fit the machine."""
from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch

import train
from configs.loader import load_config
from datamodules.datamodule import PretrainDataModule, available_cores
from lightning_modules.run import cpu_run, runs
from lightning_modules.run.cpu_run import QUICK_CONFIG, fit_precision_to_cpu
from lightning_modules.run.run_clock import BatchRate, batches_done, clock, in_words, run_batches
from lightning_modules.run.run_progress import RunProgressBar, run_summary
from training_utils import TINY

TINY_QUICK = [QUICK_CONFIG, *TINY, "data.subset=20", "data.eval_subset=10", "method.num_clusters=[10,20]",
              "checkpoint.every_n_epochs=0", "trainer.num_sanity_val_steps=0", "trainer.check_val_every_n_epoch=3"]


def fake_trainer(**kwargs):
    values = dict(num_training_batches=10, max_epochs=4, max_steps=-1, accumulate_grad_batches=1, current_epoch=0)
    return SimpleNamespace(**{**values, **kwargs})


class FakeTime:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_run_batches_count_every_epoch_or_stop_at_max_steps():
    assert run_batches(fake_trainer()) == 40
    assert run_batches(fake_trainer(max_steps=15, accumulate_grad_batches=2)) == 30
    assert run_batches(fake_trainer(max_epochs=-1)) is None
    assert batches_done(fake_trainer(current_epoch=2), batch_idx=4) == 25  # a resumed run counts its past epochs


def test_durations_read_as_a_clock_and_in_words():
    assert clock(0) == "0:00:00" and clock(3725.4) == "1:02:05" and clock(33 * 3600 + 61) == "33:01:01"
    assert [in_words(s) for s in (45, 12 * 60, 3.5 * 3600, 33 * 3600, 100 * 3600)] == [
        "45 s", "12 min", "3.5 h", "33 h", "4.2 days"]


def test_batch_rate_leaves_out_the_warm_up_batch_and_windows_images_per_epoch():
    now = FakeTime()
    rate = BatchRate(window=2, now=now)
    rate.start()
    assert rate.seconds_per_batch is None and rate.eta(10) is None and rate.images_per_sec is None
    for t in (10.0, 12.0, 14.0, 16.0):  # a slow first batch, then one every 2 s
        now.t = t
        rate.batch_done(128)
    assert rate.measured == 3 and rate.seconds_per_batch == 2.0 and rate.eta(10) == 20.0
    assert rate.images_per_sec == 64.0 and rate.elapsed == 16.0
    rate.new_epoch()
    assert rate.images_per_sec is None and rate.seconds_per_batch == 2.0  # the run's pace survives the epoch


def test_run_summary_shows_epochs_done_elapsed_eta_and_images_per_second():
    now = FakeTime()
    rate = BatchRate(now=now)
    rate.start()
    for t in (5.0, 6.0, 7.0):
        now.t = t
        rate.batch_done(64)
    trainer = fake_trainer(current_epoch=1)  # batch 2 of epoch 1: 13 of 40 batches done, 27 left at 1 s each
    assert run_summary(trainer, rate, batch_idx=2) == {
        "epochs done": "1/4", "run elapsed": "0:00:07", "run ETA": "0:00:27", "img/s": "64"}
    assert run_summary(fake_trainer(), BatchRate(), None) == {
        "epochs done": "0/4", "run elapsed": "0:00:00", "run ETA": "-", "img/s": "-"}
    assert run_summary(trainer, rate, batch_idx=9)["epochs done"] == "2/4"  # the last batch of epoch 1 completes it


def test_loader_workers_are_capped_at_the_available_cores_with_one_line(caplog):
    cfg = load_config(None, [f"data.num_workers={available_cores() + 3}"])
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    with caplog.at_level(logging.INFO, logger="datamodules.datamodule"):
        assert datamodule.loader_workers() == datamodule.loader_workers() == available_cores()
    assert len([r for r in caplog.records if "num_workers" in r.getMessage()]) == 1
    cfg = load_config(None, ["data.num_workers=0"])
    assert PretrainDataModule(cfg.data, cfg.augment).loader_workers() == 0


def test_bf16_falls_back_to_32_only_when_no_gpu_was_found(monkeypatch, caplog):
    monkeypatch.setattr(cpu_run, "gpu_found", lambda: False)
    with caplog.at_level(logging.WARNING, logger="lightning_modules.run.cpu_run"):
        assert fit_precision_to_cpu({"precision": "bf16-mixed", "max_epochs": 3}) == {"precision": "32",
                                                                                       "max_epochs": 3}
    assert len(caplog.records) == 1 and "-> 32" in caplog.records[0].getMessage()
    assert fit_precision_to_cpu({"precision": "bf16-mixed", "accelerator": "cpu"})["precision"] == "bf16-mixed"
    assert fit_precision_to_cpu({"precision": "16-mixed"})["precision"] == "16-mixed"
    monkeypatch.setattr(cpu_run, "gpu_found", lambda: True)
    assert fit_precision_to_cpu({"precision": "bf16-mixed"})["precision"] == "bf16-mixed"


def test_a_slow_first_batch_is_enough_for_the_estimate(caplog):
    from pytorch_lightning.accelerators import CPUAccelerator

    trainer = fake_trainer(num_training_batches=97, max_epochs=400, accelerator=CPUAccelerator(), is_global_zero=True,
                           strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    for allow_slow in (False, True):
        notice = cpu_run.CpuCostNotice(allow_slow=allow_slow, budget_minutes=0, measure_seconds=0)
        notice.on_train_start(trainer, None)
        notice.on_train_batch_start(trainer, None, None, 0)
        if allow_slow:
            notice.on_train_batch_end(trainer, None, None, None, 0)
        else:
            with pytest.raises(cpu_run.SlowCpuRun):
                notice.on_train_batch_end(trainer, None, None, None, 0)
        assert not notice.active  # decided after the first batch, not after 1 + measure_batches
    assert "Continuing, because allow_slow_cpu=true" in notice_lines(caplog)


def notice_lines(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "lightning_modules.run.cpu_run")


@pytest.mark.slow
def test_a_cpu_run_over_the_budget_prints_the_estimate_and_the_quick_command_then_stops(
        tmp_path, cifar10_tar, cache_dir, caplog):
    args = [*TINY_QUICK, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", f"run_dir={tmp_path / 'runs'}",
            "run_name=slow", "trainer.max_epochs=1000000", "allow_slow_cpu=false"]
    with caplog.at_level(logging.WARNING, logger="lightning_modules.run.cpu_run"):
        assert train.main(args) == 3
    text = notice_lines(caplog)
    assert "no GPU in use: training on the CPU" in text
    assert re.search(r"a training batch takes \d+\.\d\d s, so this run \(1000000 epochs x 3 batches\) would take "
                     r"about [\d.]+ (h|days)", text), text
    assert f"train.py {QUICK_CONFIG}" in text and "allow_slow_cpu=true" in text and "Stopping" in text
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # stopped within the first epochs, nothing saved


@pytest.mark.slow
def test_a_short_cpu_run_gets_the_notice_and_the_whole_run_progress_fields(
        tmp_path, cifar10_tar, cache_dir, caplog, monkeypatch):
    shown = []

    class RecordingBar(RunProgressBar):
        def get_metrics(self, trainer, pl_module):
            shown.append(super().get_metrics(trainer, pl_module))
            return shown[-1]

    monkeypatch.setattr(runs, "RunProgressBar", RecordingBar)
    args = [*TINY_QUICK, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", f"run_dir={tmp_path / 'runs'}",
            "run_name=short", "trainer.max_epochs=3", "trainer.enable_progress_bar=true",
            "allow_slow_cpu=false"]  # (TINY allows slow runs): a run under the budget must go on without it
    with caplog.at_level(logging.WARNING, logger="lightning_modules.run.cpu_run"):
        assert train.main(args) == 0
    text = notice_lines(caplog)
    assert "(3 epochs x 3 batches) would take about" in text
    assert "Stopping" not in text and QUICK_CONFIG not in text  # a short run needs no pointer to the quick config
    assert "Continuing" not in text  # nor a reason to go on
    fields = [f for f in shown if f["run ETA"] != "-"]
    assert fields and {"epochs done", "run elapsed", "run ETA", "img/s"} <= set(fields[-1])
    assert fields[0]["epochs done"] == "0/3" and fields[-1]["epochs done"] == "3/3"
    assert all(re.fullmatch(r"\d+:\d\d:\d\d", f["run ETA"]) for f in fields) and fields[-1]["run ETA"] == "0:00:00"
    assert float(fields[-1]["img/s"]) > 0


SIMCLR = "configs/pretrain/simclr_cifar10.yaml"


@pytest.mark.slow
@pytest.mark.skipif(cpu_run.gpu_found(), reason="the switch is for machines without a GPU")
def test_a_bf16_config_trains_in_fp32_on_a_cpu_without_accelerator_cpu(tmp_path, cifar10_tar, cache_dir, caplog,
                                                                       monkeypatch):
    """README: without a GPU a config's bf16-mixed becomes 32 with a one-line notice. Every other training test passes
    trainer.accelerator=cpu, which keeps the precision asked; this one leaves the accelerator to Lightning (auto) and
    looks at the autocast state inside the training step."""
    from lightning_modules.simclr import SimCLR

    seen = []
    original = SimCLR.training_loss

    def observing(self, batch, feats):
        seen.append((torch.is_autocast_enabled("cpu"), feats[0].dtype, str(self.trainer.precision)))
        return original(self, batch, feats)

    monkeypatch.setattr(SimCLR, "training_loss", observing)
    args = [SIMCLR, *TINY, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", f"run_dir={tmp_path / 'runs'}",
            "run_name=bf16", "data.subset=20", "data.eval_subset=10", "trainer.max_epochs=1",
            "trainer.check_val_every_n_epoch=5", "checkpoint.every_n_epochs=0",
            "trainer.accelerator=auto", "trainer.precision=bf16-mixed"]
    with caplog.at_level(logging.WARNING, logger="lightning_modules.run.cpu_run"):
        assert train.main(args) == 0
    assert "trainer.precision=bf16-mixed -> 32" in notice_lines(caplog)
    assert seen and all(step == (False, torch.float32, "32-true") for step in seen), seen


@pytest.mark.slow
def test_max_time_minutes_stops_a_run_at_its_budget_and_lets_a_slow_cpu_run_start(tmp_path, cifar10_tar, cache_dir,
                                                                                   caplog, monkeypatch):
    """README: max_time_minutes=N trains for N minutes, and bounds a CPU run that would otherwise stop. Deterministic:
    Lightning's Timer reads a stand-in clock that moves 25 s per training step, so 2 minutes are 5 steps (of 3 per
    epoch, with max_epochs in the millions and allow_slow_cpu=false)."""
    from pytorch_lightning.callbacks import timer

    from lightning_modules.simclr import SimCLR

    clock = [1000.0]
    monkeypatch.setattr(timer, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    original = SimCLR.training_loss

    def a_25_second_step(self, batch, feats):
        clock[0] += 25.0
        if clock[0] > 1000.0 + 30 * 25.0:  # a run the budget does not stop ends here, not after a million epochs
            raise RuntimeError("max_time_minutes=2 did not stop the run after 12.5 minutes on its clock")
        return original(self, batch, feats)

    monkeypatch.setattr(SimCLR, "training_loss", a_25_second_step)
    args = [SIMCLR, *TINY, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", f"run_dir={tmp_path / 'runs'}",
            "run_name=budget", "data.subset=20", "data.eval_subset=10", "trainer.max_epochs=1000000",
            "trainer.check_val_every_n_epoch=1000", "checkpoint.every_n_epochs=0", "logger.log_every_n_steps=1",
            "allow_slow_cpu=false", "max_time_minutes=2"]
    with caplog.at_level(logging.WARNING, logger="lightning_modules.run.cpu_run"):
        assert train.main(args) == 0
    text = notice_lines(caplog)
    assert "Continuing: max_time_minutes=2 bounds it." in text and "Stopping" not in text, text
    run_dir = next((tmp_path / "runs" / "budget").iterdir())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5 and clock[0] == 1000.0 + 5 * 25.0
