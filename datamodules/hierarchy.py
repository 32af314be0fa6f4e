"""Two-level label hierarchies: fine class -> superclass."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from datamodules.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The vehicles/animals split used by coarse-to-fine papers on CIFAR-10.
CIFAR10_SUPERCLASSES = {
    "airplane": "vehicles", "automobile": "vehicles", "ship": "vehicles", "truck": "vehicles",
    "bird": "animals", "cat": "animals", "deer": "animals", "dog": "animals", "frog": "animals", "horse": "animals",
}


HIERARCHY_FORM = 'a JSON object from fine class name to superclass name, e.g. {"cat": "animals", "ship": "vehicles"}'


def _line_of(text: str, key: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` ``"key"`` in ``text`` (the last one found when there are fewer)."""
    at = -1
    for _ in range(nth):
        found = text.find(json.dumps(key), at + 1)
        if found < 0:
            break
        at = found
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def _no_duplicates(path: Path, text: str):
    def pairs(items):
        seen = set()
        for key, _ in items:
            if key in seen:
                raise DataError(f"hierarchy file {path}, line {_line_of(text, key, 2)}: the class `{key}` appears "
                                "twice in one object. Keep one entry per class (data.hierarchy)")
            seen.add(key)
        return dict(items)
    return pairs


def read_hierarchy_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"hierarchy file {path} is not UTF-8 text (byte {err.start}): data.hierarchy must name "
                        f"{HIERARCHY_FORM}") from None
    except OSError as err:
        raise DataError(f"cannot read hierarchy file {path} (data.hierarchy): {err.strerror or err}. Point "
                        f"data.hierarchy at {HIERARCHY_FORM}") from None


def load_hierarchy_json(path: str | Path) -> dict[str, str]:
    """Read ``{fine class: superclass}``; also accepts ``{"fine_to_coarse_names": {...}}`` or
    ``{superclass: [fine, ...]}`` forms. A file that is not one of them is a DataError naming the file and line."""
    path = Path(path)
    text = read_hierarchy_text(path)
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates(path, text))
    except json.JSONDecodeError as err:
        lines = text.splitlines()
        shown = lines[err.lineno - 1].strip()[:80] if 0 < err.lineno <= len(lines) else ""
        raise DataError(f"hierarchy file {path} is not valid JSON: {err.msg} at line {err.lineno}, column "
                        f"{err.colno}{f' (`{shown}`)' if shown else ''}. Fix that line: the file must hold "
                        f"{HIERARCHY_FORM}") from None
    if isinstance(raw, dict) and "fine_to_coarse_names" in raw:
        raw = raw["fine_to_coarse_names"]
    if isinstance(raw, dict) and "superclass_to_fine" in raw:
        raw = raw["superclass_to_fine"]
    if isinstance(raw, dict) and raw and all(isinstance(v, list) for v in raw.values()):
        bad = next((c for c, fines in raw.items() if not all(isinstance(f, str) for f in fines)), None)
        if bad is None:
            return {fine: coarse for coarse, fines in raw.items() for fine in fines}
        raise DataError(f"hierarchy file {path}, line {_line_of(text, bad)}: the superclass `{bad}` lists a member "
                        f"that is not a class name (a string). The file must hold {HIERARCHY_FORM}, or superclass "
                        "names to lists of fine class names")
    if isinstance(raw, dict) and raw and all(isinstance(v, str) for v in raw.values()):
        return dict(raw)
    if isinstance(raw, dict) and raw:
        odd = [k for k, v in raw.items() if not isinstance(v, (str, list))]
        if not odd:  # names and lists mixed
            lists = [k for k, v in raw.items() if isinstance(v, list)]
            names = [k for k, v in raw.items() if isinstance(v, str)]
            odd = names if len(names) <= len(lists) else lists
        bad = odd[0]
        raise DataError(f"hierarchy file {path}, line {_line_of(text, bad)}: `{bad}` maps to "
                        f"{json.dumps(raw[bad])[:60]}, not a superclass name. The file must hold {HIERARCHY_FORM}")
    raise DataError(f"hierarchy file {path} holds {'an empty object' if raw == {} else type(raw).__name__}: it must "
                    f"hold {HIERARCHY_FORM}")


def coarse_labels(
    fine: np.ndarray, class_names: Sequence[str], fine_to_coarse: Mapping[str, str]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Map fine labels to superclass ids. Returns (coarse labels, superclass names, fine->coarse id table)."""
    missing = [c for c in class_names if c not in fine_to_coarse]
    if missing:
        raise DataError(
            f"the hierarchy has no superclass for {len(missing)} classes, e.g. {missing[:5]}; "
            "add them to the JSON given as data.hierarchy"
        )
    superclasses = sorted({fine_to_coarse[c] for c in class_names})
    table = np.array([superclasses.index(fine_to_coarse[c]) for c in class_names], dtype=np.int64)
    return table[fine], superclasses, table
