"""A name -> object registry, shared by methods and benchmarks, and plugin loading.

Plugins add entries without editing the project, either as a file or module named on the
command line (``--plugin PATH_OR_MODULE``) or as an installed package declaring an entry
point in the group ``mtl_harness.plugins`` (see docs/plugins.md).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Generic, TypeVar

from engine.errors import UserError, closest

T = TypeVar("T")

ENTRY_POINT_GROUP = "mtl_harness.plugins"


class Registry(Generic[T]):
    """Named entries of one kind ("method", "benchmark"), filled by a decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if not name or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"{self.kind} name {name!r} must be letters, digits, '_' or '-'")
            if name in self._entries and self._entries[name] is not obj:
                raise UserError(f"{self.kind} {name!r} is registered twice "
                                f"({_where(self._entries[name])} and {_where(obj)})")
            self._entries[name] = obj
            return obj
        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            hint = "" if _loaded_plugins else (
                f"; no plugin is loaded: a {self.kind} of a plugin needs --plugin PATH_OR_MODULE "
                f"(or `plugins = [...]` in a sweep file)")
            raise UserError(f"unknown {self.kind} {name!r}; {closest(name, self._entries)} "
                            f"(`python run_bench.py list {self.kind}s` lists them){hint}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def defined_in(obj: object) -> str:
    """The file that defines a class (a plugin file's own path), else its module's name."""
    module = sys.modules.get(getattr(obj, "__module__", ""))
    return getattr(module, "__file__", None) or getattr(obj, "__module__", "?")


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def import_submodules(package_name: str) -> None:
    """Import every module of a package, so that its decorators register the built-ins."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")


_loaded_plugins: set[str] = set()


def load_plugin(spec: str) -> None:
    """Import a plugin given as a path to a .py file or as a dotted module name."""
    if spec in _loaded_plugins:
        return
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise UserError(f"plugin file {spec!r} does not exist")
        module_name = f"mtl_plugin_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise UserError(f"plugin {spec!r} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(module_name, None)
            _raise_import_failure(spec, exc)
    else:
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name and spec.startswith(exc.name):  # the plugin itself is not found
                raise UserError(f"plugin {spec!r} is neither a .py file nor an importable "
                                f"module ({exc})") from None
            _raise_import_failure(spec, exc)
        except BaseException as exc:
            _raise_import_failure(spec, exc)
    _loaded_plugins.add(spec)


def _raise_import_failure(spec: str, exc: BaseException) -> None:
    """A plugin that fails while being imported: one line naming it and where it failed."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, UserError)):
        raise exc
    if isinstance(exc, SyntaxError):
        raise UserError(f"plugin {spec!r} has a syntax error: {exc.msg} ({exc.filename}, "
                        f"line {exc.lineno})") from None
    tb = exc.__traceback__
    where = ""
    while tb is not None:  # the innermost frame: where the plugin's code raised
        where = f" ({tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno})"
        tb = tb.tb_next
    raise UserError(f"plugin {spec!r} failed while being imported: "
                    f"{type(exc).__name__}: {exc}{where}") from None


def load_entry_point_plugins() -> None:
    """Import every installed plugin that declares the ``mtl_harness.plugins`` entry point."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in _loaded_plugins:
            continue
        try:
            ep.load()
        except BaseException as exc:
            _raise_import_failure(ep.value, exc)
        _loaded_plugins.add(ep.value)
