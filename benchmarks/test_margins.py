"""Measure the values that the learning-threshold tests assert, over several seeds, to set their margins.

    python benchmarks/test_margins.py [--seeds 0 1 2 3 4] [TEST_NODE ...]

Every listed test prints ``MEASURED name=value ...`` lines; this runs each test once per seed (the tests read
``COKE_TEST_SEED``) and prints, per measured quantity, every seed's value and the worst. A threshold is then set
below the worst with a margin, so that a CI run cannot fail on it by luck.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THRESHOLD_TESTS = [
    "tests/test_training.py::test_simclr_fit_learns_and_probe_beats_chance",
    "tests/test_coarse_methods.py::test_short_fit_on_cifar10_learns",
    "tests/test_coke_learning.py",
    "tests/test_baseline_learning.py",
    "tests/test_baselines.py::test_swav_small_batch_loss_leaves_ln_k_and_prototypes_stay_frozen",
]
MEASURED = re.compile(r"(\w+)=(-?[0-9.]+)")


def run_seed(tests: list[str], seed: int) -> dict[str, float]:
    env = {**os.environ, "COKE_TEST_SEED": str(seed), "WANDB_MODE": "offline"}
    # No -x and no assertion filter: a seed that fails a threshold is exactly what this must see.
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *tests],
                         cwd=REPO, env=env, capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        if "MEASURED" in line:
            values.update({k: float(v) for k, v in MEASURED.findall(line.split("MEASURED", 1)[1])})
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", nargs="*", default=THRESHOLD_TESTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    table: dict[str, dict[int, float]] = defaultdict(dict)
    for seed in args.seeds:
        for name, value in run_seed(args.tests, seed).items():
            table[name][seed] = value
        print(f"seed {seed} done", file=sys.stderr, flush=True)
    print("| measured | " + " | ".join(f"seed {s}" for s in args.seeds) + " | worst |")
    print("|---|" + "---:|" * (len(args.seeds) + 1))
    for name, by_seed in sorted(table.items()):
        cells = [f"{by_seed[s]:.4f}" if s in by_seed else "-" for s in args.seeds]
        print(f"| {name} | " + " | ".join(cells) + f" | {min(by_seed.values()):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
