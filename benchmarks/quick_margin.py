"""The README's quick command against what BatchNorm alone gives, on the full CIFAR-10.

    python benchmarks/quick_margin.py [--seeds 0 1 2 3] [--out runs/quick_margin]

Per seed: `train.py configs/pretrain/quick.yaml seed=S` as a user runs it, then evaluate.py on frozen features with
the full train set as kNN bank and probe set and the full test set (method_table.py's probe: `EVAL` there), against
the random-init backbone of the same seed, plain and with its BatchNorm statistics re-estimated on the 5,000
pretraining images (`method_table.random_bn`: a run at lr 0 keeps random weights but adapts these statistics, which
alone gains points). Prints kNN-200 / linear per seed and the margins; each seed's scores are cached in
<out>/s<S>/result.json, so a rerun only adds missing seeds. Set OMP_NUM_THREADS to time it alone.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import method_table  # noqa: E402

SUBSET = 500  # quick.yaml's data.subset: images per class


def seed_scores(seed: int, out: Path) -> dict:
    folder = out / f"s{seed}"
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = folder / "run"
    if not list(run_dir.glob("**/last.ckpt")):
        with open(folder / "train.log", "w") as log:
            subprocess.run([sys.executable, "train.py", "configs/pretrain/quick.yaml", f"seed={seed}",
                            f"run_dir={run_dir}"], cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    checkpoint = sorted(run_dir.glob("**/last.ckpt"))[-1]
    args = SimpleNamespace(out=str(folder), subset=SUBSET, eval_subset=0, eval_overrides=[], backbone="resnet10t")
    result = {"seed": seed, "quick": method_table.score(str(checkpoint), folder / "quick", args),
              "random": method_table.random_init(seed, args), "bn": method_table.random_bn(seed, args)}
    done.write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict]) -> str:
    lines = ["| seed | quick kNN-200 / linear | random init | BatchNorm re-estimated | over random | over BatchNorm |",
             "|---:|---|---|---|---|---|"]
    pair = lambda r, key: (r[key]["knn"], r[key]["linear"])  # noqa: E731
    for r in results:
        q, rnd, bn = pair(r, "quick"), pair(r, "random"), pair(r, "bn")
        lines.append(f"| {r['seed']} | {q[0]:.1f} / {q[1]:.1f} | {rnd[0]:.1f} / {rnd[1]:.1f} | {bn[0]:.1f} / {bn[1]:.1f}"
                     f" | +{q[0] - rnd[0]:.1f} / +{q[1] - rnd[1]:.1f} | +{q[0] - bn[0]:.1f} / +{q[1] - bn[1]:.1f} |")
    margins = [(r["quick"]["knn"] - r["bn"]["knn"], r["quick"]["linear"] - r["bn"]["linear"]) for r in results]
    lines.append(f"\nover BatchNorm alone: mean +{statistics.mean(m[0] for m in margins):.1f} / "
                 f"+{statistics.mean(m[1] for m in margins):.1f}, worst +{min(m[0] for m in margins):.1f} / "
                 f"+{min(m[1] for m in margins):.1f} (kNN-200 / linear)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--out", default=str(REPO / "runs" / "quick_margin"))
    args = p.parse_args(argv)
    out = Path(args.out)
    text = table([seed_scores(seed, out) for seed in args.seeds])
    (out / "quick_margin.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
