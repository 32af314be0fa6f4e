"""evaluate.py's report as a W&B run of job type ``eval``: its table, figures and files, each number also a summary
key. Offline without a login or a network, as the training loggers."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning_modules.evaluation.report import TABLE_COLUMNS, table_rows
from lightning_modules.run.loggers import keep_wandb_files_in, wandb_mode

log = logging.getLogger(__name__)


def log_to_wandb(report: dict, logger_cfg: Any, out_dir: str | Path) -> None:
    """The table (and the two files) as a W&B run of job type ``eval``; offline without login or network."""
    if logger_cfg.kind != "wandb":
        return
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed; the report is only on disk (pip install wandb to log it)")
        return
    keep_wandb_files_in(Path(out_dir))
    run = wandb.init(
        project=logger_cfg.project, entity=logger_cfg.entity or None, job_type="eval", dir=str(out_dir),
        mode=wandb_mode(logger_cfg.mode), config={"checkpoint": report["checkpoint"], "data": report["data"]},
    )
    try:
        run.log({"eval/report": wandb.Table(columns=TABLE_COLUMNS, data=table_rows(report))})
        for name, file in report.get("figures", {}).items():
            run.log({f"eval/{name}": wandb.Image(str(Path(out_dir) / file))})
        for row in report["results"]:
            key = "/".join(["eval", row["protocol"], row["level"], row["metric"]] + [f"{k}={v}" for k, v in _key_params(row)])
            run.summary[key] = row["value"]
        run.save(str(Path(out_dir) / "report.*"), base_path=str(out_dir), policy="now")
        for file in report.get("figures", {}).values():
            run.save(str(Path(out_dir) / file), base_path=str(out_dir), policy="now")
    finally:
        run.finish()


def _key_params(row: dict) -> list[tuple[str, Any]]:
    """The parameters that tell apart rows of the same protocol, level and metric."""
    return [(k, row["params"][k]) for k in ("k", "head", "source", "shots") if k in row["params"] and row["protocol"] != "retrieval"]
