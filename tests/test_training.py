"""The training base through train.py on real CIFAR-10: learning, resume, NaN stop, W&B offline history and the
automatic offline fallback."""
import re
import socket
import time

import pytest
import torch

from lightning_modules.base import NonFiniteLossError
from lightning_modules.simclr import SimCLR
from ports import closed_local_port
from training_utils import majority_share, metrics, run

# Thresholds were audited single-threaded (benchmarks/test_margins.py): one intra-op thread here too.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SIMCLR = "configs/pretrain/simclr_cifar10.yaml"


def test_simclr_fit_learns_and_probe_beats_chance(tmp_path, cifar10_tar, cache_dir):
    assert torch.get_num_threads() == 1  # as audited
    fit = ("data.subset=100", "trainer.max_epochs=5", "trainer.check_val_every_n_epoch=5", "optim.lr=1.0",
           "optim.probe_lr=0.5", "logger.log_every_n_steps=1")
    run_dir = run(SIMCLR, tmp_path, cifar10_tar, cache_dir, *fit)
    # The lr-0 control: the same 5 epochs at lr 0 for all but the probe (probe_lr is its own), so its backbone stays
    # at random init with BatchNorm statistics adapted to the images, and its online probe trains as long.
    control = metrics(run(SIMCLR, tmp_path / "lr0", cifar10_tar, cache_dir, *fit, "optim.lr=0.0"))
    m = metrics(run_dir)
    losses = m["train/loss"]
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15  # first and last epoch
    control_drop = sum(control["train/loss"][:15]) / 15 - sum(control["train/loss"][-15:]) / 15
    majority = majority_share(run_dir)
    gain = {level: m[f"online/{level}_acc1"][-1] - control[f"online/{level}_acc1"][-1] for level in ("fine", "coarse")}
    print(f"MEASURED simclr_loss_drop={first - last:.4f} simclr_fine={m['online/fine_acc1'][-1]:.4f} "
          f"simclr_coarse={m['online/coarse_acc1'][-1]:.4f} simclr_lr0_fine={control['online/fine_acc1'][-1]:.4f} "
          f"simclr_lr0_coarse={control['online/coarse_acc1'][-1]:.4f} simclr_fine_over_lr0={gain['fine']:.4f} "
          f"simclr_coarse_over_lr0={gain['coarse']:.4f} simclr_lr0_coarse_over_majority="
          f"{control['online/coarse_acc1'][-1] - majority:.4f} simclr_lr0_loss_drop={control_drop:.4f} "
          f"simclr_loss_drop_over_lr0={first - last - control_drop:.4f}")
    # Learning: the loss falls further than the control's, whose weights stay at random init (only BatchNorm statistics
    # and the probes move; its loss still drifts down 0.04 to 0.15). The fit's drop minus the control's,
    # COKE_TEST_SEED 0-9 (benchmarks/test_margins.py, 2026-12-07; 5-9 under AVX2 kernels): 0.328, 0.317, 0.332, 0.277,
    # 0.228, 0.216, 0.354, 0.293, 0.387, 0.335.
    assert (first - last) - control_drop > 0.15, (first, last, control_drop)
    # The online probes, against the control's: guards against a collapse, not learning claims. Five epochs on 1,000
    # images leave them level with the lr-0 control (fine -0.030 to +0.042, coarse -0.052 to +0.032 at seeds 0-9),
    # which itself clears chance (0.1) and the majority share (0.6) by far (fine 0.220 to 0.266, coarse 0.128 to
    # 0.178 over the majority). A collapsed backbone falls to chance and to the majority (about -0.15 on both). SimCLR's
    # learning claim on features is test_baseline_learning's (16 epochs, frozen features, against the lr-0 control).
    assert gain["fine"] > -0.06, (m["online/fine_acc1"][-1], control["online/fine_acc1"][-1])
    assert gain["coarse"] > -0.1, (m["online/coarse_acc1"][-1], control["online/coarse_acc1"][-1])
    assert m["online/coarse_acc1"][-1] > majority, (m["online/coarse_acc1"][-1], majority)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "views").glob("*.png"))
    assert m["perf/images_per_sec"][-1] > 0
    # weights_only loading of our own checkpoint, and probes never fed the backbone:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["cfg"]["method"]["name"] == "simclr"


def test_online_probe_sends_no_gradient_into_backbone(tmp_path, cifar10):
    from configs.loader import load_config, to_plain
    from lightning_modules.registry import method_schemas

    cfg = to_plain(load_config(SIMCLR, ["model.backbone=test_resnet", "model.cifar_stem=false"], method_schemas()))
    info = {"num_train": 10, "num_fine": 10, "num_coarse": 2}
    module = SimCLR(cfg, info)
    images = torch.from_numpy(cifar10[1].images[:8]).float() / 255
    batch = {"fine": torch.arange(8) % 10, "coarse": torch.arange(8) % 2}
    module.online_probe_loss(module(images), batch).backward()
    assert all(p.grad is None for p in module.backbone.parameters())
    assert module.probes["fine"].weight.grad.abs().sum() > 0


class Interrupted(Exception):
    pass


def test_resume_continues_step_and_reproduces_state(tmp_path, cifar10_tar, cache_dir, monkeypatch):
    common = ("data.subset=20", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=5", "checkpoint.every_n_epochs=1")
    straight = run(SIMCLR, tmp_path / "a", cifar10_tar, cache_dir, *common)

    def crash_in_second_epoch(self):
        if self.current_epoch == 1:
            raise Interrupted()

    with monkeypatch.context() as patch:
        patch.setattr(SimCLR, "on_train_epoch_start", crash_in_second_epoch, raising=False)
        with pytest.raises(Interrupted):
            run(SIMCLR, tmp_path / "b", cifar10_tar, cache_dir, *common)
    first = next((tmp_path / "b" / "runs" / "test").iterdir())
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    config_before = (first / "config.yaml").read_text()
    # A changed setting that leaves the training itself alone (no view grids): the resumed state must still match.
    resumed = run(SIMCLR, tmp_path / "b", cifar10_tar, cache_dir, *common, "resume=auto", "logger.view_grid_every_n_epochs=0")
    assert resumed == first  # auto-resume continues in the run's own directory
    # The run keeps its config.yaml; the changed config goes beside it as config-resumed-<timestamp>.yaml.
    assert (first / "config.yaml").read_text() == config_before
    beside = list(first.glob("config-resumed-*.yaml"))
    assert len(beside) == 1 and re.fullmatch(r"config-resumed-\d{8}-\d{6}\.yaml", beside[0].name), beside
    assert "view_grid_every_n_epochs: 0" in beside[0].read_text() and "view_grid_every_n_epochs: 0" not in config_before
    assert not list(straight.glob("config-resumed-*.yaml"))
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * 3
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    assert a["optimizer_states"][0]["state"].keys() == b["optimizer_states"][0]["state"].keys()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, cifar10_tar, cache_dir, monkeypatch):
    original = SimCLR.training_loss

    def poisoned(self, batch, feats):
        loss = original(self, batch, feats)
        return loss * float("nan") if self.current_epoch == 1 and self.global_step >= 4 else loss

    monkeypatch.setattr(SimCLR, "training_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at global step 4.*last good checkpoint"):
        run(SIMCLR, tmp_path, cifar10_tar, cache_dir, "data.subset=20", "trainer.max_epochs=3",
            "trainer.check_val_every_n_epoch=5")
    last = next((tmp_path / "runs" / "test").iterdir()) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_wandb_offline_run_holds_history(tmp_path, cifar10_tar, cache_dir, monkeypatch):
    from wandb_records import wait_for_history

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = run(SIMCLR, tmp_path, cifar10_tar, cache_dir, "data.subset=20", "trainer.max_epochs=1",
                  "logger.kind=wandb", "logger.log_every_n_steps=1", "trainer.check_val_every_n_epoch=1")
    keys = ("train/loss", "train/lr", "online/fine_acc1", "online/coarse_acc1", "perf/images_per_sec")
    history = wait_for_history(run_dir, keys)  # wandb's service process may still be flushing after finish()
    for key in keys:
        assert key in history and all(isinstance(v, (int, float)) for v in history[key]), key
    assert history["augment/views/_type"] == ["images/separated"]  # the grid of views as an image


@pytest.fixture
def refused_port():
    """A port on 127.0.0.1 that refuses connections, held (bound, never listening) for the test: no one can take it."""
    with closed_local_port() as port:
        yield port


@pytest.mark.timeout(240)
def test_wandb_without_login_or_network_falls_back_to_offline_without_waiting(tmp_path, cifar10_tar, cache_dir,
                                                                               monkeypatch, refused_port):
    """README: with no W&B login or no network, the default logger logs offline and never waits. No WANDB_MODE, no API
    key, a HOME without a .netrc, and a W&B server that is a closed local port: anything online would fail or wait."""
    from lightning_modules.run import loggers
    from wandb_records import wait_for_history

    home = tmp_path / "home"
    home.mkdir()
    for variable in ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{refused_port}")
    # A login but no server to reach: offline as well, decided at once: one connection attempt, to the address as
    # given (no DNS), with a bounded timeout, refused; no retry and no wait. Asserted on what it did, not on seconds.
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    attempts, connect = [], socket.create_connection

    def recording_connect(address, *args, **kwargs):
        attempts.append([address, args[0] if args else kwargs.get("timeout"), None])
        try:
            return connect(address, *args, **kwargs)
        except OSError as err:
            attempts[-1][2] = type(err)
            raise

    with monkeypatch.context() as patch:
        patch.setattr(socket, "create_connection", recording_connect)
        assert loggers.wandb_mode("auto") == "offline"
    assert len(attempts) == 1 and attempts[0][0] == ("127.0.0.1", refused_port), attempts
    assert attempts[0][1] is not None and attempts[0][1] <= 5 and attempts[0][2] is ConnectionRefusedError, attempts
    monkeypatch.delenv("WANDB_API_KEY")
    assert loggers.wandb_mode("auto") == "offline"
    # The whole run, W&B the logger, nothing said about its mode.
    start = time.monotonic()
    run_dir = run(SIMCLR, tmp_path, cifar10_tar, cache_dir, "data.subset=20", "trainer.max_epochs=1",
                  "logger.kind=wandb", "logger.log_every_n_steps=1", "trainer.check_val_every_n_epoch=1")
    elapsed = time.monotonic() - start
    history = wait_for_history(run_dir, ["train/loss"])
    assert len(history["train/loss"]) == 200 // 64
    assert list(run_dir.glob("wandb/offline-run-*")) and not list(run_dir.glob("wandb/run-*"))
    print(f"offline fallback run: {elapsed:.1f} s")


@pytest.mark.parametrize("key", ["logger.log_every_n_steps", "trainer.log_every_n_steps"])
def test_either_log_every_n_steps_key_logs_the_losses_on_those_steps(key, tmp_path, cifar10_tar, cache_dir):
    """The method logs its losses on the steps Lightning writes (a step not written would read the host for nothing,
    a step written without the loss would leave a hole): with either key set to 1, every step has its loss."""
    run_dir = run(SIMCLR, tmp_path, cifar10_tar, cache_dir, "data.subset=20", "trainer.max_epochs=1", f"{key}=1",
                  "logger.view_grid_every_n_epochs=0")
    assert len(metrics(run_dir)["train/loss"]) == 200 // 64
