"""Wall time of ``evaluate.py CHECKPOINT protocol=all``: feature extraction, then each protocol.

    python benchmarks/evaluate_time.py [CHECKPOINT|random] [--backbone resnet18] [--cifar-stem]
        [--protocol all] [--set key=value ...]

Runs the real entry point with the feature cache off (so extraction is timed), reads the stage timings
that evaluate.py writes into report.json, and prints them as a table. With ``random`` the backbone is
``--backbone`` at random init, which costs the same as a trained one. Extra evaluate.py overrides go in
``--set`` (e.g. ``--set data.subset=500 linear.epochs=30`` for a CPU smoke run). ``--protocol
all,sea,fewshot,diagnostics`` times the opt-in protocols too.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate  # noqa: E402

STAGES = ["features", "linear", "knn", "retrieval", "clustering", "sea", "fewshot", "diagnostics"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default="random")
    parser.add_argument("--backbone", default="resnet18", help="for `random` only")
    parser.add_argument("--cifar-stem", action="store_true", help="for `random` only")
    parser.add_argument("--protocol", default="all", help="evaluate.py protocol list (default: all)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra evaluate.py overrides")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        overrides = [f"protocol={args.protocol}", "feature_cache=false", "logger.kind=none", f"out_dir={out}", *args.set]
        if args.checkpoint == "random":
            overrides += [f"model.backbone={args.backbone}", f"model.cifar_stem={args.cifar_stem}"]
        if evaluate.main([args.checkpoint, *overrides]) != 0:
            return 1
        report = json.loads((Path(out) / "report.json").read_text())

    timings, splits = report["timings_s"], report["data"]["splits"]
    total = sum(timings.get(stage, 0.0) for stage in STAGES)
    print(f"\nevaluate.py {args.checkpoint} protocol={args.protocol} {' '.join(args.set)}")
    print(f"backbone {report['checkpoint']['backbone']} (cifar_stem={report['checkpoint']['cifar_stem']}), "
          f"train {splits['train']['images']} / test {splits['test']['images']} images")
    print(f"{'stage':<12}{'seconds':>10}{'share':>8}")
    for stage in STAGES:
        if stage in timings:
            print(f"{stage:<12}{timings[stage]:>10.1f}{timings[stage] / total:>8.0%}")
    print(f"{'total':<12}{total:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
