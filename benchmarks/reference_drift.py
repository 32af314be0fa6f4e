"""How far CoKe's numeric reference moves on this machine: record every case of tests/coke_reference.py here and
print the largest difference from tests/fixtures/coke_reference.json (the numbers RESULTS.md §8 reports).

    python benchmarks/reference_drift.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/reference_drift.py

The environment variables force other CPU kernels (AVX2, or scalar with ATEN_CPU_CAPABILITY=default
MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41), which stands in for another machine of the same kind.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def relative(got: float, want: float, scale: float | None = None) -> float:
    return abs(got - want) / max(abs(want) if scale is None else scale, 1e-30)


def drift(got: dict, want: dict) -> dict[str, float]:
    worst = {"label steps differing": 0.0, "loss": 0.0, "gradient norm": 0.0, "gradient projections": 0.0,
             "clustering checksum": 0.0}
    for case, recorded in want.items():
        for g, w in zip(got[case]["steps"], recorded["steps"]):
            worst["label steps differing"] += g["labels"] != w["labels"]
            worst["loss"] = max(worst["loss"], relative(g["loss"], w["loss"]) if w["loss"] else abs(g["loss"]))
            if "grad_norm" in w:
                scale = max(w["grad_norm"], 1e-6)
                worst["gradient norm"] = max(worst["gradient norm"], relative(g["grad_norm"], w["grad_norm"], scale))
                worst["gradient projections"] = max(worst["gradient projections"], *(
                    relative(x, y, scale) for x, y in zip(g["grad_projections"], w["grad_projections"])))
        worst["clustering checksum"] = max(worst["clustering checksum"], *(
            abs(x - y) / max(abs(y), 1e-6) for x, y in zip(got[case]["checksum"], recorded["checksum"])))
    return worst


def main() -> int:
    logging.disable(logging.WARNING)
    from coke_reference import CASES, CHECKPOINTS, FIXTURE, checkpoint_path, record
    from configs.schema import default_data_root

    tar = Path(default_data_root()) / "cifar10-jpeg.tar.gz"
    got = {case: record(case, tar) for case in CASES}
    got.update({name: record(name, tar, resume=checkpoint_path(name)) for name in CHECKPOINTS})
    worst = drift(got, json.loads(FIXTURE.read_text()))
    forced = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                                        "ONEDNN_MAX_CPU_ISA") if k in os.environ) or "native"
    print(f"| kernels | {' | '.join(worst)} |")
    print("|---|" + "---:|" * len(worst))
    print(f"| {forced} | {int(worst['label steps differing'])} | "
          + " | ".join(f"{v:.1e}" for k, v in worst.items() if k != "label steps differing") + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
