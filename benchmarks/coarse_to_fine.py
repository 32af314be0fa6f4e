"""Superclass -> fine-grained transfer: which pretraining, given only superclass labels, gives the best fine features?

    python benchmarks/coarse_to_fine.py [--data cifar10 | PATH to a cifar-100-python folder] [--budget 10]
        [--subset 300] [--eval-subset 200] [--backbone resnet10t] [--cifar-stem] [--batch-size 128] [--seed 0]
        [--rows coarse-ce,supcon-coarse,coins,coke-coarse,coke,fine-ce] [--out runs/coarse_to_fine]
        [--set key=value ...] [--eval-set key=value ...] [--threads N]

Every row pretrains through train.main from its own config (configs/pretrain/<config>.yaml), with the same
backbone, data subset, batch size, seed and epoch budget (``--set`` goes to every row). CoKe rows get one more
epoch: their clustering initialisation at lr 0 (no gradient step), so they take the same number of gradient
steps as the others. Then evaluate.main runs on each last.ckpt with frozen features (linear probe on fine and
coarse labels, kNN, leave-one-out retrieval) and one table is printed and written to <out>/coarse_to_fine.md:

- online coarse: the online linear probe on superclasses (detached features, trained during pretraining),
  measured on the eval subset of test at the end;
- fine linear: offline linear probe top-1 on the fine classes (lr and wd chosen on 10% of train);
- fine within superclass: the same probe's accuracy with its argmax restricted to the true superclass;
- kNN top-1: fine labels, k=20, cosine, exp(sim/0.07) weights, bank = the train subset;
- R@1: leave-one-out Recall@1 on the test subset, fine labels.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.run_options import add_override_options  # noqa: E402

# row -> (config, what it uses)
ROWS = {
    "coarse-ce": ("supervised_coarse_cifar10", "superclass labels"),
    "supcon-coarse": ("supcon_coarse_cifar10", "superclass labels"),
    "coins": ("coins_cifar10", "superclass labels"),
    "coke-coarse": ("coke_coarse_cifar10", "superclass labels"),
    "coke": ("coke_cifar10", "no labels (reference)"),
    "fine-ce": ("supervised_fine_cifar10", "fine labels (upper bound)"),
}
COLUMNS = ["row", "labels used", "online coarse", "fine linear", "fine within superclass", "kNN top-1", "R@1",
           "pretrain min"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cifar10", help="cifar10, or the path of a cifar-100-python folder")
    p.add_argument("--budget", type=int, default=10, help="pretraining epochs (gradient epochs)")
    p.add_argument("--subset", type=float, default=300, help="train images per class (0: all)")
    p.add_argument("--eval-subset", type=float, default=200, help="test images per class (0: all)")
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--cifar-stem", action="store_true", help="3x3 stride-1 stem (slower, better on 32 px)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--out", default="runs/coarse_to_fine")
    add_override_options(p)
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    return args


def data_overrides(data: str) -> list[str]:
    if data == "cifar10":
        return ["data.name=cifar10"]
    path = Path(data)
    if not path.exists():
        raise SystemExit(f"--data {data}: no such path (give cifar10 or a cifar-100-python folder)")
    return ["data.name=cifar100", f"data.path={path.resolve()}"]


def num_train(data_args: list[str], subset: float) -> tuple[int, int]:
    """(training images after the subset, superclasses): CoKe's K and CoIns' queue are scaled to them."""
    from configs.loader import load_config
    from datamodules import load_split
    from datamodules.datasets import per_class_rows

    train = load_split(load_config(None, data_args).data, "train")
    return len(per_class_rows(train.fine, subset, 0)), len(train.superclass_names)


def row_overrides(row: str, n: int, num_coarse: int, budget: int) -> list[str]:
    """What depends on the method and the data size: CoKe's clusters (bound r·N/K ≈ 40 and 20 instances,
    at least 2 per superclass) and +1 init epoch; MoCo's queue at most half the data (else stale self-keys)."""
    if row.startswith("coke"):
        ks = [max(2 * num_coarse, n // 100), max(4 * num_coarse, n // 50)]
        return [f"method.num_clusters=[{ks[0]},{ks[1]}]", f"trainer.max_epochs={budget + 1}",
                f"trainer.check_val_every_n_epoch={budget + 1}"]
    if row == "coins":
        return [f"method.queue_size={min(4096, max(256, n // 2))}"]
    return []


def last_metric(run_dir: Path, key: str) -> float | None:
    value = None
    with open(run_dir / "csv" / "metrics.csv") as f:
        for line in csv.DictReader(f):
            if line.get(key) not in ("", None):
                value = float(line[key])
    return value


def pick(report: dict, protocol: str, level: str, metric: str, **params) -> float | None:
    for r in report["results"]:
        if (r["protocol"], r["level"], r["metric"]) == (protocol, level, metric) and all(r["params"].get(k) == v for k, v in params.items()):
            return r["value"]
    return None


def run_row(row: str, args, common: list[str], eval_common: list[str], n: int, num_coarse: int) -> dict:
    import evaluate
    import train

    config, labels = ROWS[row]
    runs = Path(args.out) / "runs"
    start = time.perf_counter()
    argv = [str(REPO / "configs" / "pretrain" / f"{config}.yaml"), *common,
            *row_overrides(row, n, num_coarse, args.budget), f"run_dir={runs}", f"run_name={row}", *args.overrides]
    if train.main(argv) != 0:
        raise RuntimeError(f"train.py failed: {' '.join(argv)}")
    minutes = (time.perf_counter() - start) / 60
    run_dir = sorted((runs / row).iterdir())[-1]
    out_dir = Path(args.out) / "eval" / row
    if evaluate.main([str(run_dir / "checkpoints" / "last.ckpt"), *eval_common, f"out_dir={out_dir}", *args.eval_overrides]) != 0:
        raise RuntimeError(f"evaluate.py failed on {run_dir}")
    report = json.loads((out_dir / "report.json").read_text())
    return {
        "row": row, "labels used": labels, "online coarse": last_metric(run_dir, "online/coarse_acc1"),
        "fine linear": pick(report, "offline-linear", "fine", "top1"),
        "fine within superclass": pick(report, "offline-linear", "fine-within-superclass", "top1"),
        "kNN top-1": pick(report, "knn", "fine", "top1", k=20), "R@1": pick(report, "retrieval", "fine", "recall@1"),
        "pretrain min": minutes, "run_dir": str(run_dir),
    }


def cell(value, key: str) -> str:
    if value is None:
        return "-"
    if key == "pretrain min":
        return f"{value:.1f}"
    return f"{100 * value:.2f}" if isinstance(value, float) else str(value)


def markdown(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c), c) for c in COLUMNS) + " |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data_args = data_overrides(args.data)
    data_sets = [o for o in args.overrides if o.startswith("data.")]
    n, num_coarse = num_train(data_args + data_sets, args.subset)
    if not num_coarse:
        raise SystemExit(f"{args.data} has no superclasses: this benchmark needs a two-level hierarchy")
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    common = [
        *data_args, f"data.subset={args.subset}", f"data.eval_subset={args.eval_subset}", f"data.batch_size={args.batch_size}",
        f"model.backbone={args.backbone}", f"model.cifar_stem={args.cifar_stem}", f"seed={args.seed}", f"data.seed={args.seed}",
        f"trainer.max_epochs={args.budget}", f"trainer.check_val_every_n_epoch={args.budget}",
        f"trainer.accelerator={accelerator}", "trainer.enable_progress_bar=false", "logger.kind=csv",
        "logger.view_grid_every_n_epochs=0", f"checkpoint.every_n_epochs={args.budget + 1}",
        f"optim.warmup_epochs={args.budget // 10}",
    ]
    if accelerator == "cpu":
        common += ["trainer.precision=32", "data.num_workers=0", "data.pin_memory=false", "model.channels_last=false",
                   "allow_slow_cpu=true"]
    eval_common = [
        f"data.subset={args.subset}", f"data.eval_subset={args.eval_subset}", f"data.seed={args.seed}",
        "protocol=linear,knn,retrieval", "levels=fine,coarse", "logger.kind=none", "knn.ks=[20,200]",
        *[o for o in data_sets if o.startswith("data.cache_dir=")],
    ]
    print(f"coarse_to_fine: {args.data}, {n} train images, {num_coarse} superclasses, rows {args.rows}, "
          f"budget {args.budget} epochs, backbone {args.backbone}")

    results = []
    for row in args.rows:
        try:
            results.append(run_row(row, args, common, eval_common, n, num_coarse))
        except Exception:  # noqa: BLE001 - one failed row must not lose the others
            traceback.print_exc()
            results.append({"row": row, "labels used": f"FAILED ({ROWS[row][1]})"})
        print(markdown(results[-1:]))

    table = markdown(results)
    note = (f"\n\n{args.data}, {n} train images ({args.subset:g}/class), test {args.eval_subset:g}/class; backbone "
            f"{args.backbone}{' (CIFAR stem)' if args.cifar_stem else ''}; {args.budget} epochs (CoKe +1 init epoch at "
            f"lr 0), batch {args.batch_size}, seed {args.seed}; extra settings: {' '.join(args.overrides) or 'none'}.\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coarse_to_fine.md").write_text(table + note)
    (out / "coarse_to_fine.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + table + note)
    print(f"written: {out / 'coarse_to_fine.md'} and {out / 'coarse_to_fine.json'}")
    return 0 if all("run_dir" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
