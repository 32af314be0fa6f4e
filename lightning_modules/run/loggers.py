"""Loggers: W&B (offline when there is no login or no network; never waits) plus a local CSV record."""
from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path

from pytorch_lightning.loggers import Logger

from lightning_modules.run.csv_history import HistoryCSVLogger
from lightning_modules.run.resume import read_run_record

log = logging.getLogger(__name__)
WANDB_HOST = "api.wandb.ai"
# Where W&B writes besides its run folder (its cache holds wandb-core's core-debug-*.log): under the run directory,
# unless the user set them. The config dir (settings, read only) is left alone.
WANDB_DIR_VARS = {"WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data", "WANDB_ARTIFACT_DIR": "artifacts"}
_USER_WANDB_DIRS = {key for key in WANDB_DIR_VARS if key in os.environ}


class LoggerUnavailableError(RuntimeError):
    """The logger asked for cannot work here; the message says which setting to use instead."""


def _has_wandb_login() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _server() -> tuple[str, int]:
    """The W&B server a run would talk to: ``WANDB_BASE_URL``'s host and port (a private server), else api.wandb.ai."""
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("WANDB_BASE_URL") or f"https://{WANDB_HOST}")
    return url.hostname or WANDB_HOST, url.port or (80 if url.scheme == "http" else 443)


def _reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(requested: str = "auto") -> str:
    """online | offline. ``WANDB_MODE`` wins; ``auto`` goes offline without a login or a reachable server."""
    env = os.environ.get("WANDB_MODE", "")
    if env in ("offline", "disabled", "dryrun"):
        return "offline"
    host, port = _server()
    if requested == "online" and not _reachable(host, port):
        raise LoggerUnavailableError(
            f"logger.mode=online but {host} is unreachable (no network?). Use logger.mode=auto (online when "
            "reachable, else offline) or logger.mode=offline and `wandb sync` the run later"
        )
    if requested in ("online", "offline"):
        return requested
    if not _has_wandb_login():
        log.info("W&B: no login found, logging offline (sync later with `wandb sync <run>/wandb/offline-run-*`)")
        return "offline"
    if not _reachable(host, port):
        log.warning("W&B: %s unreachable, logging offline (sync later with `wandb sync`)", host)
        return "offline"
    return "online"


def check_logger(cfg) -> None:
    """Before any work: a logger that cannot work here (``logger.mode=online`` with no network) ends the run."""
    if cfg.kind not in ("wandb", "csv", "none"):
        raise LoggerUnavailableError(f"unknown logger.kind `{cfg.kind}`; use wandb, csv or none")
    if cfg.kind == "wandb" and cfg.mode == "online":
        wandb_mode(cfg.mode)


def keep_wandb_files_in(run_dir: Path) -> None:
    for key, sub in WANDB_DIR_VARS.items():
        if key not in _USER_WANDB_DIRS:
            os.environ[key] = str(run_dir / "wandb" / sub)


def build_loggers(cfg, run_dir: Path, run_name: str, config: dict, resume_step: int | None = None) -> list[Logger]:
    """``resume_step``: a resumed run keeps the CSV rows logged before it (and continues the run's W&B id)."""
    loggers: list[Logger] = [HistoryCSVLogger(save_dir=str(run_dir), name="csv", version="", keep_before_step=resume_step)]
    if cfg.kind == "none":
        return []
    if cfg.kind == "wandb":
        try:
            from pytorch_lightning.loggers import WandbLogger
            import wandb  # noqa: F401
        except ImportError:
            log.warning("wandb is not installed; logging to CSV only (pip install wandb to get dashboards)")
            return loggers
        mode = wandb_mode(cfg.mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        keep_wandb_files_in(run_dir)
        wandb_logger = WandbLogger(
            project=cfg.project, entity=cfg.entity or None, name=run_name, save_dir=str(run_dir),
            offline=mode == "offline", config=config, settings=_wandb_settings(),
            id=read_run_record(run_dir).get("wandb_id"), resume="allow",
        )
        loggers.append(wandb_logger)
    elif cfg.kind != "csv":
        raise ValueError(f"unknown logger.kind `{cfg.kind}`; use wandb, csv or none")
    return loggers


def _wandb_settings():
    import wandb

    return wandb.Settings(init_timeout=30, console="off", x_disable_stats=True) if _settings_ok() else None


def _settings_ok() -> bool:
    import wandb

    try:
        wandb.Settings(init_timeout=30, console="off", x_disable_stats=True)
        return True
    except Exception:  # noqa: BLE001 - older wandb without these settings
        return False


def finish_loggers(loggers: list[Logger]) -> None:
    """Close W&B runs so their history is flushed to disk (and synced when online)."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()
