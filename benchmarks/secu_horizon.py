"""SeCu on its own horizon: frozen-feature kNN-200 and linear against pretraining epochs, on the CPU.

    python benchmarks/secu_horizon.py [--epochs 8 16 32 64] [--seeds 0] [--subset 250] [--batch-size 128]
        [--backbone test_resnet] [--variant NAME=key=value,key=value ...] [--no-official] [--threads 1]
        [--out runs/secu_horizon] [--set key=value ...] [--eval-set key=value ...]

Every row runs `configs/pretrain/secu_cifar10.yaml` as shipped with only the backbone (the tests' tiny timm
`test_resnet`, no CIFAR stem), the pretraining subset (images per class), the batch and the epochs changed, so the
frozen phase and the warm-up keep their official length in images (`method.schedule_epoch_images`): at batch 128 on
2,500 images the network stays at lr 0 for 390 steps (20.5 epochs of 19) and warms up over the next 3,900. ``--variant``
adds a departure row (its overrides on top). Each (row, seed) also runs its lr-0 control (the same run at
``optim.lr=0`` for 2 epochs: random weights, BatchNorm statistics adapted to the images), and each seed a random-init
backbone: SeCu learns at a point only where it clears its control.

Scoring is evaluate.py on frozen backbone features, as tests/test_baseline_learning.py: linear probe and kNN bank on
500 training images per class, 300 test images per class scored (one standard error about 0.9 points), kNN-200 and
kNN-20 (cosine, T 0.07). The dashboard is the run's own CSV log at its last epoch: label churn (`secu/changed`), the
first head's (K = 10) NMI with the classes, the smallest cluster over the mean size (first head; smallest over the
heads), the mean raw centre norm, and the network's lr at its last logged step (how far into the warm-up: the peak
is 0.2 at batch 128).
The table goes to stdout and <out>/secu_horizon.md, the rows to <out>/secu_horizon.json, and the curve (each seed's
gain over its control against epochs, with the +2-point line) to <out>/secu_horizon.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate  # noqa: E402
import train  # noqa: E402
from benchmarks.horizon_plot import horizon_plot  # noqa: E402
from benchmarks.run_options import add_override_options, split_overrides  # noqa: E402

CONFIG = REPO / "configs" / "pretrain" / "secu_cifar10.yaml"
CPU_RUN = ["data.num_workers=0", "data.pin_memory=false", "data.eval_subset=50", "logger.kind=csv",
           "logger.diagnostics_every_n_epochs=0", "logger.view_grid_every_n_epochs=0", "trainer.precision=32",
           "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "checkpoint.every_n_epochs=100000",
           "allow_slow_cpu=true"]
LR0_CONTROL = ["optim.lr=0.0", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2"]
PROBE = ["protocol=linear,knn", "levels=fine", "data.subset=500", "data.eval_subset=300", "linear.epochs=30",
         "linear.lrs=[0.1]", "linear.weight_decays=[0.0]", "knn.ks=[20,200]", "feature_cache=false",
         "data.num_workers=0", "logger.kind=none"]
COLUMNS = ["row", "seed", "epochs", "kNN-200", "linear", "kNN-20", "Δ kNN-200", "Δ linear", "churn", "NMI h0",
           "min/mean h0", "min/mean all", "centre norm", "net lr", "train CPU min"]
FINE = {"churn", "NMI h0", "min/mean h0", "min/mean all", "net lr"}  # printed to 3 decimals, the others to 1


class RunFailed(RuntimeError):
    """train.py or evaluate.py returned non-zero; it has already printed why."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--subset", type=float, default=250, help="pretraining images per class")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--backbone", default="test_resnet")
    p.add_argument("--variant", nargs="*", default=[], help="NAME=key=value,key=value: a departure row")
    p.add_argument("--no-official", action="store_true", help="only the --variant rows")
    p.add_argument("--no-random", action="store_true", help="skip the random-init reference")
    p.add_argument("--out", default="runs/secu_horizon")
    add_override_options(p, threads=1)
    args = p.parse_args(argv)
    args.rows = {} if args.no_official else {"official": []}
    for spec in args.variant:
        name, _, extra = spec.partition("=")
        if not name or not extra:
            p.error(f"--variant {spec!r}: expected NAME=key=value,key=value")
        args.rows[name] = split_overrides(extra)
    return args


def pretrain(args, out: Path, seed: int, *overrides: str) -> tuple[Path, float]:
    """train.main on the shrunk config; returns the run directory and its training CPU minutes."""
    argv = [str(CONFIG), f"model.backbone={args.backbone}", "model.cifar_stem=false", f"data.subset={args.subset}",
            f"data.batch_size={args.batch_size}", *CPU_RUN, f"run_dir={out}", "run_name=run", f"seed={seed}",
            *args.overrides, *overrides]
    started = time.process_time()
    if train.main(argv) != 0:
        raise RunFailed(f"train.py stopped on the run {out.name}")
    return sorted((out / "run").iterdir())[-1], (time.process_time() - started) / 60


def score(spec: str, out: Path, args, *extra: str) -> dict[str, float]:
    """evaluate.py on frozen features: {'kNN-200', 'kNN-20', 'linear'} top-1 in %."""
    if evaluate.main([spec, *PROBE, f"out_dir={out}", *extra, *args.eval_overrides]) != 0:
        raise RunFailed(f"evaluate.py stopped on {spec}")
    values = {}
    for r in json.loads((out / "report.json").read_text())["results"]:
        if r["level"] == "fine" and r["metric"] == "top1":
            name = f"kNN-{r['params']['k']}" if r["protocol"] == "knn" else "linear"
            values[name] = 100 * r["value"]
    return values


def dashboard(run_dir: Path) -> dict[str, float]:
    """The last logged value of each column of the run's CSV log."""
    last: dict[str, float] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            last.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    sizes = [v for k, v in last.items() if re.fullmatch(r"secu/h\d+_min_over_mean_size", k)]
    lr = next((v for k, v in last.items() if k.startswith("lr-") and k.endswith("/decay")), float("nan"))
    return {"churn": last.get("secu/changed", float("nan")), "NMI h0": last.get("secu/h0_nmi_fine", float("nan")),
            "min/mean h0": last.get("secu/h0_min_over_mean_size", float("nan")),
            "min/mean all": min(sizes) if sizes else float("nan"),
            "centre norm": last.get("secu/center_norm", float("nan")),
            "net lr": lr}


def markdown(rows: list[dict]) -> str:
    def cell(column, v):
        return (f"{v:.3f}" if column in FINE else f"{v:.1f}") if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    return "\n".join(lines + ["| " + " | ".join(cell(c, r.get(c, "")) for c in COLUMNS) + " |" for r in rows])


def measure(args, out: Path, report) -> None:
    """Every seed's random init, and each row's lr-0 control and epochs, handed to `report` as they finish."""
    for seed in args.seeds:
        if not args.no_random:
            values = score("random", out / f"random-seed{seed}", args, f"model.backbone={args.backbone}",
                           "model.cifar_stem=false", f"seed={seed}")
            report({"row": "random init", "seed": seed, "epochs": 0, **values})
        for name, extra in args.rows.items():
            run_dir, minutes = pretrain(args, out / f"{name}-lr0-seed{seed}", seed, *extra, *LR0_CONTROL)
            control = score(str(run_dir / "checkpoints" / "last.ckpt"), run_dir / "eval", args)
            report({"row": f"{name} lr-0 control", "seed": seed, "epochs": 2, **control, **dashboard(run_dir),
                    "train CPU min": minutes})
            for epochs in args.epochs:
                run_dir, minutes = pretrain(args, out / f"{name}-e{epochs}-seed{seed}", seed, *extra,
                                            f"trainer.max_epochs={epochs}",
                                            f"trainer.check_val_every_n_epoch={epochs}")
                values = score(str(run_dir / "checkpoints" / "last.ckpt"), run_dir / "eval", args)
                report({"row": name, "seed": seed, "epochs": epochs, **values,
                        "Δ kNN-200": values["kNN-200"] - control["kNN-200"],
                        "Δ linear": values["linear"] - control["linear"], **dashboard(run_dir),
                        "train CPU min": minutes})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def report(row: dict) -> None:
        rows.append(row)
        print(markdown([row]), flush=True)
        (out / "secu_horizon.json").write_text(json.dumps(rows, indent=1))

    failure = None
    try:
        measure(args, out, report)
    except RunFailed as stopped:  # the rows that finished are still tabled and drawn
        failure = stopped
    header = (f"secu_cifar10.yaml, {args.backbone} (no CIFAR stem), {args.subset:g} images per class, batch "
              f"{args.batch_size}, CPU {torch.get_num_threads()} thread(s); Δ: over the row's lr-0 control")
    text = header + "\n\n" + markdown(rows)
    (out / "secu_horizon.md").write_text(text + "\n")
    print("\n" + text)
    figure = horizon_plot(rows, out / "secu_horizon.png", header)
    if figure is not None:
        print(f"plot: {figure}")
    if failure is not None:
        print(f"secu_horizon: {failure}, which said why above; the {len(rows)} row(s) before it are in "
              f"{out / 'secu_horizon.md'}. Nothing after it ran.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
