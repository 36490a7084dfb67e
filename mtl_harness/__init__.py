"""The harness from Python: scripts, notebooks and your own training loop.

    import mtl_harness as mh

    table = mh.compare("digits_tasks", ["ew", "pcgrad", "repmtl"], seeds=[0, 1, 2])
    step = mh.MethodStep("pcgrad+repmtl", encoder.parameters(), {"a": head_a.parameters(), ...})

``compare`` trains (or reuses) the runs of a comparison and returns its table as a
DataFrame; ``MethodStep`` puts any registered method into a plain PyTorch loop
(docs/library.md). Importable from any folder once the harness is installed in editable
mode (``pip install -e .``, the README's install): only this package is installed; the
harness's own packages (``engine``, ``methods``, ``benchmarks``, ``datasets``,
``analysis``) are served from the checkout by a finder for exactly those names, so nothing
generic lands in site-packages and nothing else of the checkout becomes importable.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The checkout the harness runs from."""
PACKAGES = ("engine", "methods", "benchmarks", "datasets", "analysis")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds the harness's top-level packages (and only those) in the checkout."""

    def find_spec(self, name, path=None, target=None):
        if name not in PACKAGES:
            return None  # submodules are found through their package's __path__
        return importlib.machinery.PathFinder.find_spec(name, [str(ROOT)])


def _install_finder() -> None:
    if not (ROOT / "engine" / "__init__.py").is_file():
        raise ImportError(f"mtl_harness runs from its checkout, but {ROOT} holds none; "
                          f"install it with `pip install -e .` from the checkout")
    loaded = sys.modules.get("datasets")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(ROOT)):
        raise ImportError("mtl_harness serves its own `datasets` package, but another one "
                          f"({getattr(loaded, '__file__', loaded)}) is already imported; "
                          "use the harness in a process without it")
    if not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutFinder())


_install_finder()

from engine.core.user_loop import MethodStep, StepOutcome  # noqa: E402
from engine.errors import ConfigError, UserError  # noqa: E402

_LAZY = {"compare", "method_names"}
"""Imported on first use: the runs and the analysis (pandas, matplotlib) are not needed in
a training loop."""


def __getattr__(name: str):
    if name in _LAZY:
        from mtl_harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'mtl_harness' has no attribute {name!r}")


__all__ = ["MethodStep", "StepOutcome", "compare", "method_names", "UserError", "ConfigError",
           "ROOT"]
