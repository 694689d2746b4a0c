"""The package's folders are its layers (docs/architecture.md): imports point down, never up, and never in
a circle. Read from the source with ``ast`` (lazy imports inside functions count too): nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import clip_aesthetics

SRC = Path(clip_aesthetics.__file__).parent

# lowest first; a module may import its own folder and any folder of a lower layer
LAYERS: list[set[str]] = [
    {"constants", "progress", "fileio", "metrics"},  # shared leaves at the package root
    {"encoders"},  # backbones, weights, towers, prompts
    {"pipeline"},  # decoding and batching images
    {"datasets", "scorers"},  # labelled records; heads on an encoder
    {"features", "finetune", "culling"},  # products on heads and the pipeline
    {"runs"},  # scoring and evaluating many images
    {"shards", "app", "study"},  # web-scale scoring, the review app, the paper's study
    {"cli", "__main__"},  # the command line
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """``clip_aesthetics.runs.score`` -> ``runs``; the package itself (``__version__``, the public names) is
    ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[tuple[str, int]]:
    """The package modules ``path`` imports, with line numbers."""
    package = list(path.relative_to(SRC.parent).with_suffix("").parts)[:-1]  # a module's or __init__'s folder
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if not target.startswith("clip_aesthetics"):
                continue
            found.append((target, node.lineno))
            for alias in node.names:  # from .runs import score: the module runs.score
                found.append((f"{target}.{alias.name}", node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("clip_aesthetics")]
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_folder_and_root_module_has_a_layer() -> None:
    units = {p.stem for p in SRC.glob("*.py")} | {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert units - {"__init__"} == set(RANK)


def test_the_package_root_holds_at_most_six_modules() -> None:
    assert len(list(SRC.glob("*.py"))) <= 6


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = []
    for path in SRC.rglob("*.py"):
        own = unit_of(module_name(path))
        if own == "__init__":
            continue  # the lazy public API imports what it re-exports
        for target, line in imports(path):
            other = unit_of(target)
            if other in RANK and RANK[other] > RANK[own]:
                upward.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert upward == []


def test_no_import_cycle_between_modules() -> None:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {
        # a module importing its own package's __init__ (which re-exports it) is not a cycle
        name: {t for t, _ in imports(path) if t in modules and t != name and not name.startswith(t + ".")}
        for name, path in modules.items()
    }
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
