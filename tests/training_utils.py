"""Train through the real entry point (train.main) on a tiny real CIFAR-10 subset."""
from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytorch_lightning as pl

import train

TINY = [
    "model.backbone=test_resnet", "model.cifar_stem=false", "model.proj_hidden_dim=128", "model.pred_hidden_dim=128",
    "data.batch_size=64", "data.num_workers=0", "data.pin_memory=false", "data.eval_subset=50",
    "logger.kind=csv", "trainer.precision=32", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
    "optim.name=sgd", "optim.warmup_epochs=0",
    "allow_slow_cpu=true",  # a loaded machine must not stop a test run on its CPU-time estimate
]
# The same run at lr 0, the reference a learning test must beat besides random init: its weights stay at random init
# but its BatchNorm statistics adapt to the images, which alone beats random init. They settle within an epoch
# (momentum 0.1), so 2 epochs do.
LR0_CONTROL = ("optim.lr=0.0", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2")
# The seed of every test run. Learning thresholds were set from the worst of >= 5 seeds
# (benchmarks/test_margins.py runs the threshold tests under COKE_TEST_SEED=0..4).
SEED = int(os.environ.get("COKE_TEST_SEED", "0"))


def run(config: str, tmp_path: Path, cifar10_tar: Path, cache_dir: Path, *overrides: str) -> Path:
    """Train; return the run directory (the newest one under tmp_path/runs)."""
    args = [config, *TINY, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", f"run_dir={tmp_path / 'runs'}",
            "run_name=test", f"seed={SEED}", *overrides]
    assert train.main(args) == 0
    return sorted((tmp_path / "runs" / "test").iterdir())[-1]


def majority_share(run_dir: Path, level: str = "coarse") -> float:
    """What always answering the commonest class scores on the labels the run's online probe is scored on (its
    validation split, else its test split), from the run's own config.yaml: the baseline a probe must beat."""
    import torch

    from configs.loader import load_config
    from datamodules import PretrainDataModule
    from lightning_modules.registry import method_schemas

    cfg = load_config(str(run_dir / "config.yaml"), [], method_schemas())
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    labels = torch.as_tensor(getattr((datamodule.val_set or datamodule.test_set).data, level))
    labels = labels[labels >= 0]
    return labels.bincount().max().item() / len(labels)


def make_trainer(max_epochs: int, *callbacks: pl.Callback, **kwargs) -> pl.Trainer:
    """A bare CPU Trainer for fitting a module directly: no logger, checkpoints, bar, summary or sanity check."""
    kwargs = {"check_val_every_n_epoch": max_epochs, "log_every_n_steps": 1, **kwargs}  # the methods log on its steps
    return pl.Trainer(
        accelerator="cpu", max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks), **kwargs,
    )


def metrics(run_dir: Path) -> dict[str, list[float]]:
    """Column -> logged values (in order) from the run's CSV log."""
    out: dict[str, list[float]] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value not in ("", None):
                    out.setdefault(key, []).append(float(value))
    return out


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
