"""The rooms of the house import one way: no circle between rooms, ``ops`` below ``lightning_modules``, no circle
inside ``evaluation/``, and the checkpoint room on the ground floor. Read from the source files with ``ast``
(nothing is imported), counting every import, also those inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lightning_modules", "ops", "datamodules", "configs")
ROOMS = ("lightning_modules.run", "lightning_modules.evaluation", "lightning_modules.checkpoints",
         "lightning_modules.coke", "ops", "datamodules", "configs")
GROUND_FLOOR = "lightning_modules.checkpoints"  # imports no other room of lightning_modules
THIN_ENTRY_LINES = 120  # evaluate.py: parse, build, call, report


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from a import b`` counts as ``a.b`` where that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def room_of(module: str) -> str | None:
    return next((room for room in ROOMS if module == room or module.startswith(room + ".")), None)


def room_arrows(graph: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    """(room, room) -> one import chain that makes the arrow. Modules outside every room (the method files at the
    top of ``lightning_modules``) are walked through, so an arrow through them counts too."""
    arrows = {}
    for start, start_room in ((m, room_of(m)) for m in graph):
        if start_room is None:
            continue
        seen, stack = {start}, [(start, [start])]
        while stack:
            module, chain = stack.pop()
            for target in sorted(graph[module]):
                if target in seen:
                    continue
                seen.add(target)
                target_room = room_of(target)
                if target_room is None:
                    stack.append((target, chain + [target]))
                elif target_room != start_room:
                    arrows.setdefault((start_room, target_room), " -> ".join(chain + [target]))
    return arrows


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of the directed graph, as its nodes in order (first repeated at the end), or []."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node, [node])):
            return found
    return []


def test_every_room_exists():
    files = module_files()
    assert all(room in files for room in ROOMS), [room for room in ROOMS if room not in files]


def test_no_circle_between_rooms():
    arrows = room_arrows(import_graph())
    edges: dict[str, set[str]] = {}
    for source, target in arrows:
        edges.setdefault(source, set()).add(target)
    cycle = find_cycle(edges)
    assert not cycle, "rooms import each other: " + "; ".join(
        arrows[(a, b)] for a, b in zip(cycle, cycle[1:]))


def test_ops_imports_nothing_from_lightning_modules():
    graph = import_graph()
    reach_ins = {m: sorted(t for t in targets if t.split(".")[0] == "lightning_modules")
                 for m, targets in graph.items() if room_of(m) == "ops"}
    assert not {m: t for m, t in reach_ins.items() if t}


def test_the_checkpoint_room_is_the_ground_floor():
    arrows = room_arrows(import_graph())
    up = {target: chain for (source, target), chain in arrows.items()
          if source == GROUND_FLOOR and target.startswith("lightning_modules.")}
    assert not up, up


def test_no_circle_inside_evaluation():
    graph = import_graph()
    inside = {m: {t for t in targets if room_of(t) == "lightning_modules.evaluation"}
              for m, targets in graph.items() if room_of(m) == "lightning_modules.evaluation"}
    cycle = find_cycle(inside)
    assert not cycle, " -> ".join(cycle)


def test_evaluate_py_is_a_thin_entry_point():
    lines = (ROOT / "evaluate.py").read_text().splitlines()
    assert len(lines) <= THIN_ENTRY_LINES, len(lines)
    assert "coke" not in (ROOT / "evaluate.py").read_text().lower()  # method-specific inputs live in evaluation/
