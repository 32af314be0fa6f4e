"""Command-line options that the benchmark scripts share: config overrides for pretraining and for evaluate.py,
torch threads, and the `--variant` rows' override lists."""
from __future__ import annotations

import argparse
import re

# A comma starts a new override only before "key=": "[50,100]" stays whole.
_NEXT_OVERRIDE = re.compile(r",(?=[A-Za-z_][\w.]*=)")


def split_overrides(text: str) -> list[str]:
    """"a=1,b.c=[2,3]" -> ["a=1", "b.c=[2,3]"]."""
    return [kv for kv in _NEXT_OVERRIDE.split(text) if kv]


def add_override_options(parser: argparse.ArgumentParser, threads: int = 0) -> None:
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="key=value for every pretraining run")
    parser.add_argument("--eval-set", nargs="*", default=[], dest="eval_overrides", help="key=value for evaluate.py")
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads (0: torch's default)")
