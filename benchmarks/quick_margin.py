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
from configs.loader import load_config  # noqa: E402
from lightning_modules.registry import method_schemas  # noqa: E402

QUICK = REPO / "configs" / "pretrain" / "quick.yaml"


def seed_scores(seed: int, out: Path, quick) -> dict:
    """quick.yaml (its resolved config `quick`) at `seed`, and the two references, scored; cached per seed."""
    folder = out / f"s{seed}"
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = folder / "run"
    if not list(run_dir.glob("**/last.ckpt")):
        with open(folder / "train.log", "w") as log:
            subprocess.run([sys.executable, "train.py", str(QUICK), f"seed={seed}",
                            f"run_dir={run_dir}"], cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    checkpoint = sorted(run_dir.glob("**/last.ckpt"))[-1]
    # The references share quick.yaml's backbone and its pretraining images (data.subset per class).
    args = SimpleNamespace(out=str(folder), subset=int(quick.data.subset), eval_subset=0, eval_overrides=[],
                           backbone=quick.model.backbone)
    result = {"seed": seed, "quick": method_table.score(str(checkpoint), folder / "quick", args),
              "random": method_table.random_init(seed, args), "bn": method_table.random_bn(seed, args)}
    done.write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict]) -> str:
    lines = ["| seed | quick kNN-200 / linear | random init | BatchNorm re-estimated | over random | over BatchNorm |",
             "|---:|---|---|---|---|---|"]
    margins = []
    for r in results:
        (qk, ql), (rk, rl), (bk, bl) = ((r[key]["knn"], r[key]["linear"]) for key in ("quick", "random", "bn"))
        margins.append((qk - bk, ql - bl))
        lines.append(f"| {r['seed']} | {qk:.1f} / {ql:.1f} | {rk:.1f} / {rl:.1f} | {bk:.1f} / {bl:.1f} | "
                     f"{qk - rk:+.1f} / {ql - rl:+.1f} | {qk - bk:+.1f} / {ql - bl:+.1f} |")
    knn, linear = zip(*margins)
    lines.append(f"\nover BatchNorm alone: mean {statistics.mean(knn):+.1f} / {statistics.mean(linear):+.1f}, "
                 f"worst {min(knn):+.1f} / {min(linear):+.1f} (kNN-200 / linear)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--out", default=str(REPO / "runs" / "quick_margin"))
    args = p.parse_args(argv)
    out = Path(args.out)
    quick = load_config(QUICK, [], method_schemas())
    text = table([seed_scores(seed, out, quick) for seed in args.seeds])
    (out / "quick_margin.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
