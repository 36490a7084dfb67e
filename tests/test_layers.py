"""The layers of the project, checked statically: every import of every module (top level or
inside a function) goes to its own layer or one below it.

Layers, lowest first:

1. ``shared``: ``engine.errors`` and ``engine.registry``, the only engine modules a plugin
   imports (docs/plugins.md);
2. ``plugins``: ``methods``, ``benchmarks``, ``datasets``; methods know nothing of benchmarks
   and datasets, and these nothing of methods;
3. ``core``: ``engine.core``, one training run;
4. ``analysis``: reads the files runs write; from the core only the modules that define those
   files (ANALYSIS_READS);
5. ``runs``: ``engine.runs``, the orchestration of many runs (it tabulates with analysis);
6. ``cli``: ``engine.cli``, ``analysis/cmd_report.py``, ``run_bench.py``, the scripts and
   ``mtl_harness``, the Python entry point.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("shared", "plugins", "core", "analysis", "runs", "cli")
SHARED = ("engine", "engine.errors", "engine.registry")
ANALYSIS_READS = {
    "engine.core.results": "the run folder's file names and their atomic readers and writers",
    "engine.core.identity": "the identity (config hash, seed, data) that a run folder records",
    "engine.core.checkpoint": "the report repairs metrics only from a checkpoint that passes "
                              "a resume's checks",
}
UPWARD = {
    ("analysis", "engine.runs.locks"): "repairing a run's metrics.jsonl takes the run's lock, "
                                       "as every writer of a run folder does",
}
APART = {"methods": ("benchmarks", "datasets"), "benchmarks": ("methods",),
         "datasets": ("methods",)}
"""Plugin packages that must not know each other (the house rules of DESIGN)."""


def layer_of(module: str) -> str | None:
    """The layer of a project module by its dotted name; None for a third-party one."""
    top = module.split(".")[0]
    if module in SHARED:
        return "shared"
    if top in ("methods", "benchmarks", "datasets"):
        return "cli" if module.startswith("benchmarks.scripts") else "plugins"
    if module == "analysis.cmd_report" or module == "run_bench" or top == "mtl_harness":
        return "cli"
    if top == "analysis":
        return "analysis"
    if top == "engine":
        sub = module.split(".")[1]
        return {"core": "core", "runs": "runs", "cli": "cli"}.get(sub, "unplaced")
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, known: set[str]) -> list[tuple[int, str]]:
    """Every (line, module) that ``tree`` imports; ``from p import m`` names ``p.m`` where
    that is a module of the project."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((node.lineno, full if full in known else node.module))
    return out


def sources() -> list[Path]:
    files = [ROOT / "run_bench.py"]
    for top in ("engine", "methods", "benchmarks", "datasets", "analysis", "mtl_harness"):
        files += sorted((ROOT / top).rglob("*.py"))
    return files


def violations(path: Path, source: str, known: set[str]) -> list[str]:
    here = module_name(path)
    own = layer_of(here)
    found = []
    for line, target in imported(ast.parse(source), known):
        theirs = layer_of(target)
        if theirs is None:
            continue
        where = f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({theirs})"
        if "unplaced" in (own, theirs):
            found.append(f"{where}: every engine module belongs to a layer")
        elif (own, target) in UPWARD:
            continue
        elif LAYERS.index(theirs) > LAYERS.index(own):
            found.append(f"{where}: a lower layer imports a higher one")
        elif own == "analysis" and theirs == "core" and target not in ANALYSIS_READS:
            found.append(f"{where}: analysis reads only the run folder's modules of the core")
        elif target.split(".")[0] in APART.get(here.split(".")[0], ()):
            found.append(f"{where}: {here.split('.')[0]} must not know {target.split('.')[0]}")
    return found


def test_no_module_imports_a_higher_layer():
    files = sources()
    known = {module_name(p) for p in files}
    found = [v for p in files for v in violations(p, p.read_text(), known)]
    assert not found, "\n".join(found)


def test_every_engine_module_has_a_layer():
    unplaced = [module_name(p) for p in sources() if layer_of(module_name(p)) == "unplaced"]
    assert not unplaced, unplaced


def test_declared_exceptions_are_still_used():
    """An exception that nothing needs any more is removed, not kept as a loophole."""
    files = sources()
    known = {module_name(p) for p in files}
    used = {(layer_of(module_name(p)), target) for p in files
            for _, target in imported(ast.parse(p.read_text()), known)}
    assert set(UPWARD) <= used
    assert {("analysis", m) for m in ANALYSIS_READS} <= used


@pytest.mark.parametrize("path, source, expected", [
    ("methods/x.py", "from engine.core.trainer import Trainer", "lower layer imports a higher"),
    ("methods/x.py", "def f():\n    import engine.runs.runner", "lower layer imports a higher"),
    ("benchmarks/x.py", "from methods.registry import METHODS", "must not know methods"),
    ("engine/core/x.py", "from engine.runs import runner", "lower layer imports a higher"),
    ("engine/core/x.py", "from analysis.table import t", "lower layer imports a higher"),
    ("analysis/x.py", "from engine.core.trainer import Trainer", "analysis reads only"),
    ("engine/runs/x.py", "from engine.cli import main", "lower layer imports a higher"),
    ("engine/cli/x.py", "import torch\nfrom engine.runs.runner import run_all", None),
    ("engine/runs/x.py", "from engine.core import results as R", None),
])
def test_the_check_catches_each_kind_of_violation(path, source, expected):
    known = {module_name(p) for p in sources()}
    found = violations(ROOT / path, source, known)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found
