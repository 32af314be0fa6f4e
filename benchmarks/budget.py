"""Equal wall-clock comparison: every method pretrains for the same training time, then evaluate.py scores it.

    python benchmarks/budget.py [--minutes 4] [--rows coke,coke-paper,coke-twoview,secu,simclr,swav,mocov2,deepclusterv2]
        [--seeds 0] [--two-seed-rows coke,simclr] [--variant NAME=CONFIG:key=value,key=value ...]
        [--backbone resnet10t] [--batch-size 128] [--subset 0] [--device cpu|cuda] [--precision 32]
        [--out runs/budget] [--set key=value ...] [--eval-set key=value ...] [--threads N]

The one table a user reads to choose a method. Every row pretrains from its own config
(configs/pretrain/<config>.yaml) with the backbone, batch size, data, seed and **training-time budget** shared
(``--set`` goes to every row). On the CPU the budget is the process's CPU time (``time.process_time``), so rows
stay comparable on shared cores; run with ``--threads 1`` and it equals the wall time of an unshared run. On CUDA it
is wall time. The lr schedule is fitted to the budget as benchmarks/time_to_accuracy.py does:
after each full epoch the remaining budget is divided by the mean epoch time and the warm-up + cosine schedule is
stretched over the epochs that fit. CoKe's clustering-initialisation epoch (lr 0) counts against its budget.

Each row's checkpoint is then scored by evaluate.py on frozen backbone features, on the **full** test set of the
data set with the full train set as the kNN bank and the probe's training set: kNN top-1 (k=200, cosine, T=0.07)
and the linear probe (lr and weight decay chosen on 10% of train), on fine and coarse labels. A ``random`` row
(the same backbone at random init) is the reference every row is read against. The table is printed and written
to <out>/budget.md (and drawn in <out>/budget.png: linear against kNN, a point per seed), the per-row reports to
<out>/<row>-seed<S>/eval/.

``--variant`` adds a named row: ``coke-t05=coke_cifar10:method.temperature=0.05`` (ablations of one method).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate  # noqa: E402
from benchmarks.run_options import add_override_options, split_overrides  # noqa: E402
from benchmarks.time_to_accuracy import Budget  # noqa: E402
from configs.loader import ConfigError, load_config, to_plain  # noqa: E402
from datamodules import PretrainDataModule  # noqa: E402
from benchmarks.budget_plot import budget_plot  # noqa: E402
from lightning_modules.evaluation.registry import BY_ROW_NAME  # noqa: E402
from lightning_modules.registry import method_class, method_schemas  # noqa: E402

# row -> (config, overrides of that row)
ROWS = {
    "coke": ("coke_cifar10", []),
    "coke-paper": ("coke_cifar10_paper", []),
    "coke-twoview": ("coke_cifar10_twoview", []),
    "secu": ("secu_cifar10", []),
    "simclr": ("simclr_cifar10", []),
    "swav": ("swav_cifar10", []),
    "mocov2": ("mocov2_cifar10", []),
    "deepclusterv2": ("deepclusterv2_cifar10", []),
}
EVAL = ["protocol=linear,knn", "levels=fine,coarse", "knn.ks=[20,200]", "linear.epochs=50",
        "linear.lrs=[0.1,0.3]", "linear.weight_decays=[0.0,1.0e-4]", "logger.kind=none"]
COLUMNS = ["row", "seed", "kNN-200 fine", "linear fine", "kNN-200 coarse", "linear coarse", "train min", "epochs",
           "images/s"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=4.0, help="training-time budget of every row")
    p.add_argument("--rows", default="coke,coke-paper,coke-twoview,secu,simclr,swav,mocov2,deepclusterv2")
    p.add_argument("--variant", nargs="*", default=[], help="NAME=CONFIG:key=value,key=value (an extra row)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--two-seed-rows", default="", help="rows that also run at seed+1 (e.g. coke,simclr)")
    p.add_argument("--no-random", action="store_true", help="skip the random-init reference row")
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--cifar-stem", action="store_true")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--subset", type=float, default=0, help="pretraining images per class (0: all)")
    p.add_argument("--device", default="", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--precision", default="", help="default: the config's on CUDA, 32 on the CPU")
    p.add_argument("--out", default="runs/budget")
    add_override_options(p)
    p.add_argument("--csv", action="store_true", help="log every row to <out>/<row>-seed<S>/csv/metrics.csv (CoKe's "
                   "clustering dashboard: label churn, cluster sizes, fraction under the bound, duals, NMI)")
    args = p.parse_args(argv)
    rows = {name: ROWS[name] for name in (r.strip() for r in args.rows.split(",")) if name}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        config, _, extra = rest.partition(":")
        if not name or not config:
            p.error(f"--variant {spec!r}: expected NAME=CONFIG:key=value,key=value")
        rows[name] = (config, split_overrides(extra))
    unknown = [r for r, (config, _) in rows.items() if not (REPO / "configs" / "pretrain" / f"{config}.yaml").is_file()]
    if unknown:
        p.error(f"rows without a config: {unknown}; known rows: {', '.join(ROWS)}")
    args.row_specs = rows
    args.two_seed_rows = {r for r in args.two_seed_rows.split(",") if r}
    return args


def shared_overrides(args) -> list[str]:
    out = [f"model.backbone={args.backbone}", f"model.cifar_stem={str(args.cifar_stem).lower()}",
           f"data.batch_size={args.batch_size}", f"data.subset={args.subset}", "data.eval_subset=0",
           "logger.kind=none"]
    if args.device == "cpu":
        out += ["data.pin_memory=false", "data.num_workers=0"]  # channels-last: every config's own (all true)
    return out


def row_config(config: str, extra: list[str], seed: int, args):
    return load_config(REPO / "configs" / "pretrain" / f"{config}.yaml",
                       [*shared_overrides(args), *extra, *args.overrides, f"seed={seed}"], method_schemas())


def config_problems(args) -> list[str]:
    """Every row's config, and evaluate.py's, resolved before anything trains: a bad key must not surface hours in."""
    problems = []
    for row, (config, extra) in args.row_specs.items():
        try:
            row_config(config, extra, args.seeds[0], args)
        except ConfigError as error:
            problems.append(f"row {row}: {error}")
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        status = evaluate.main(["random", *EVAL, *args.eval_overrides, "--print-config"])
    if status != 0:
        problems.append(f"--eval-set: {errors.getvalue().strip().removeprefix('error: ')}")
    return problems


def pretrain(config: str, extra: list[str], seed: int, args, out: Path) -> dict:
    """Train one row for the budget; save its checkpoint; return its timing."""
    cfg = row_config(config, extra, seed, args)
    precision = args.precision or (str(cfg.trainer.get("precision", "bf16-mixed")) if args.device == "cuda" else "32")
    pl.seed_everything(seed)
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    model = method_class(cfg.method.name)(to_plain(cfg), asdict(datamodule.info))
    budget = TrainingClock(args.minutes, datamodule, precision, cpu_time=args.device == "cpu")
    logger = CSVLogger(out, name="csv", version="") if args.csv else False
    trainer = pl.Trainer(
        accelerator=args.device, devices=1, precision=precision, max_epochs=10**4, logger=logger, callbacks=[budget],
        log_every_n_steps=cfg.logger.log_every_n_steps,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
    )
    trainer.fit(model, datamodule=datamodule)
    ckpt = out / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    seconds = budget.train_seconds()
    return {"ckpt": ckpt, "train_min": seconds / 60, "epochs": trainer.current_epoch,
            "images_per_s": budget.images / max(seconds, 1e-9)}


class TrainingClock(Budget):
    """time_to_accuracy's budget and schedule fitting, without its in-training kNN evaluations."""

    def __init__(self, minutes: float, datamodule, precision: str, cpu_time: bool):
        super().__init__(minutes, float("inf"), True, datamodule, precision)
        if cpu_time:  # shared cores: count the compute this process got, not the wall clock
            self.clock = time.process_time

    def evaluate(self, trainer, pl_module, epoch=None) -> None:
        pass


def score(spec: str, out: Path, args, *extra: str) -> dict:
    """evaluate.py on frozen features; returns {(level, protocol): top-1 in %}."""
    eval_dir = out / "eval"
    argv = [spec, *EVAL, f"out_dir={eval_dir}", f"device={args.device}", *extra, *args.eval_overrides]
    if evaluate.main(argv) != 0:
        raise RuntimeError(f"evaluate.py failed on {spec}")
    report = json.loads((eval_dir / "report.json").read_text())
    values = {}
    for r in report["results"]:
        if r["metric"] == "top1" and r["level"] in ("fine", "coarse"):
            key = f"{BY_ROW_NAME[r['protocol']].name}{r['params'].get('k', '') if r['protocol'] == 'knn' else ''}"
            values[(r["level"], key)] = 100 * r["value"]
    return values


def knn200(values: dict, level: str) -> float:
    hits = [v for (lvl, key), v in values.items() if lvl == level and key.startswith("knn") and key.endswith("200")]
    hits = hits or [v for (lvl, key), v in values.items() if lvl == level and key.startswith("knn")]
    return hits[-1] if hits else float("nan")


def table_row(row: str, seed, values: dict, timing: dict | None) -> dict:
    return {
        "row": row, "seed": seed, "kNN-200 fine": knn200(values, "fine"),
        "linear fine": values.get(("fine", "linear"), float("nan")),
        "kNN-200 coarse": knn200(values, "coarse"), "linear coarse": values.get(("coarse", "linear"), float("nan")),
        "train min": timing["train_min"] if timing else 0.0, "epochs": timing["epochs"] if timing else 0,
        "images/s": timing["images_per_s"] if timing else float("nan"),
    }


def markdown(rows: list[dict]) -> str:
    def cell(v):
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["row"], []).append(r)
    multi = {k: v for k, v in groups.items() if len(v) > 1}
    if multi:
        lines += ["", "| row (mean of seeds) | kNN-200 fine | linear fine |", "|---|---:|---:|"]
        lines += [f"| {k} ({len(v)} seeds) | {statistics.mean(r['kNN-200 fine'] for r in v):.1f} | "
                  f"{statistics.mean(r['linear fine'] for r in v):.1f} |" for k, v in multi.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    problems = config_problems(args)
    if problems:
        print("\n".join(problems) + "\nNothing was trained. `--set` goes to every row, so a key of one method only "
              "belongs in that row's `--variant NAME=CONFIG:key=value`; `--eval-set` goes to evaluate.py.",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    failed: list[str] = []
    if not args.no_random:
        for seed in args.seeds:
            row_out = out / f"random-seed{seed}"
            values = score("random", row_out, args, f"model.backbone={args.backbone}",
                           f"model.cifar_stem={str(args.cifar_stem).lower()}", f"seed={seed}")
            results.append(table_row("random init", seed, values, None))
            print(markdown(results[-1:]), flush=True)
    for row, (config, extra) in args.row_specs.items():
        seeds = list(args.seeds) + ([max(args.seeds) + 1] if row in args.two_seed_rows else [])
        for seed in seeds:
            row_out = out / f"{row}-seed{seed}"
            started = time.perf_counter()
            try:
                timing = pretrain(config, extra, seed, args, row_out)
                values = score(str(timing["ckpt"]), row_out, args)
            except Exception:  # one failed row must not lose the others
                traceback.print_exc()
                print(f"row {row} seed {seed} failed", file=sys.stderr)
                failed.append(f"{row} (seed {seed})")
                continue
            results.append(table_row(row, seed, values, timing))
            print(markdown(results[-1:]) + f"\n({(time.perf_counter() - started) / 60:.1f} min with evaluation)",
                  flush=True)
            (out / "budget.json").write_text(json.dumps(results, indent=1))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    header = (f"{args.minutes} training min per row, {args.backbone}{' (CIFAR stem)' if args.cifar_stem else ''}, "
              f"batch {args.batch_size}, pretraining subset {args.subset or 'all'} per class, {device}")
    text = header + "\n\n" + markdown(results)
    (out / "budget.md").write_text(text + "\n")
    print("\n" + text)
    if budget_plot(results, out / "budget.png", header):
        print(f"plot: {out / 'budget.png'}")
    if failed:  # the table above holds the rows that finished; the exit code says it is incomplete
        print(f"\n{len(failed)} row(s) failed, tracebacks above: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
