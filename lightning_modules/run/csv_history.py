"""A CSV logger that keeps the history of a resumed run.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, so a resumed run (same directory,
same version) would lose every epoch before the resume. This one keeps the rows logged before the resumed
global step (the rows after it, from an interrupted epoch, are logged again by the resumed run) and appends.
"""
from __future__ import annotations

import csv
import os
from typing import Optional

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


def _logged_before(row: dict, step: int) -> bool:
    try:
        return float(row.get("step") or 0) < step
    except ValueError:
        return True


class HistoryKeepingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before_step: Optional[int]):
        self.keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self.keep_before_step is None or not os.path.isfile(self.metrics_file_path):
            return super()._check_log_dir_exists()  # a new run: Lightning's behaviour
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if _logged_before(row, self.keep_before_step)]
            keys = list(reader.fieldnames or [])
        tmp = f"{self.metrics_file_path}.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)
        self.metrics_keys = keys  # new rows append under this header; a new key rewrites the file with all rows


class HistoryCSVLogger(CSVLogger):
    """``keep_before_step``: None for a new run; for a resumed run, the global step it resumes from."""

    def __init__(self, *args, keep_before_step: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_before_step = keep_before_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = HistoryKeepingWriter(self.log_dir, self.keep_before_step)
        return self._experiment
