"""The import graph of fastlt stands in layers, without cycles (issue 21, "the house").

Every ``fastlt`` import of every module counts, at module level or inside a function: an import moved into a
function to dodge a cycle is still the cycle. Only explicit imports are edges (importing ``fastlt.data.store``
also runs ``fastlt/data/__init__.py``, but that is Python's doing, not a dependency of the importer).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastlt"

# Tiers, top first: a unit (a subpackage of fastlt, a module at its root, or "fastlt" for its __init__) may import
# units of lower tiers only, never one of its own tier. The root modules sit where what they import puts them.
TIERS: list[set[str]] = [
    {"__main__"},  # `python -m fastlt`
    {"cli"},
    {"reproduce", "bench"},  # published tables (a sweep of their presets) and `fastlt bench`
    {"sweep"},  # many runs, each pretrained then evaluated, on a node's devices or as Slurm jobs
    {"train", "evaluate"},  # siblings: neither stands on the other
    {"methods", "measure", "wandb_log"},  # measure: features, kNN and accuracy shared by the training monitor and
    # evaluate; wandb_log: the run's W&B run, which training logs to and evaluate adds its reports to
    {"recipe"},  # methods read their recipe; the recipe names views (augment) and store lists (data)
    {"objectives", "models", "augment"},
    {"data"},
    {"checkpoint", "hardware"},  # the run's checkpoint format; device, precision, memory format, compile choices
    {"files"},
    {"errors", "notices", "progress", "choices", "shipped", "fastlt"},  # import no fastlt module
]

def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (a package by its __init__)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fastlt modules ``name`` imports anywhere in its file (``from pkg import submodule`` is the submodule)."""

    def known(target: str) -> str:
        while target not in modules:
            target = target.rpartition(".")[0]
        return target

    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {known(alias.name) for alias in node.names if alias.name.split(".")[0] == "fastlt"}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            if source.split(".")[0] != "fastlt":
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                found.add(target if target in modules else known(source))
    found.discard(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def unit(module: str) -> str:
    """The tier table's name for a module: its subpackage of fastlt, its own name at the root, or "fastlt"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fastlt"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def tier_of(name: str) -> int:
    return next(index for index, tier in enumerate(TIERS) if name in tier)


def test_every_unit_has_a_tier() -> None:
    units = {unit(module) for module in import_graph()}
    placed = set().union(*TIERS)
    assert units <= placed, f"give these a tier in TIERS: {sorted(units - placed)}"


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_run_down_the_tiers() -> None:
    upward = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            here, there = unit(module), unit(target)
            if here != there and tier_of(there) <= tier_of(here):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports not running down the tiers:\n" + "\n".join(upward)


def test_train_and_evaluate_stand_apart() -> None:
    sideways = {(module, target) for module, targets in import_graph().items() for target in targets
                if {unit(module), unit(target)} == {"train", "evaluate"}}
    assert not sideways, f"train and evaluate import each other: {sorted(sideways)}"