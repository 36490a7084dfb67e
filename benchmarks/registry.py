"""The benchmark registry: ``@register_benchmark("name")`` on a Benchmark subclass."""
from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.base import Benchmark
from engine.errors import UserError
from engine.registry import Registry, defined_in

BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")
PROFILE_DIR = Path(__file__).parent / "profiles"


def register_benchmark(name: str):
    def decorator(cls: type[Benchmark]) -> type[Benchmark]:
        if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
            raise UserError(f"@register_benchmark({name!r}) needs a Benchmark subclass, got "
                            f"{cls!r}")
        missing = [what for what, absent in (("a one-line `description`", not cls.description),
                                             ("a `Config` dataclass", cls.Config is None))
                   if absent]
        if missing:
            raise UserError(f"benchmark {name!r} ({defined_in(cls)}) needs "
                            f"{' and '.join(missing)} (see docs/plugins.md)")
        if cls.profiles is not None and not isinstance(cls.profiles, (dict, str, Path)):
            raise UserError(f"benchmark {name!r}: `profiles` must be a dict of profiles or the "
                            f"path of a TOML file, got {type(cls.profiles).__name__}")
        cls.name = name
        return BENCHMARKS.register(name)(cls)
    return decorator


def profile_source(cls: type[Benchmark]) -> Path | dict:
    """Where a benchmark's profiles come from: its ``profiles`` (the tables, or a TOML file,
    relative to the file that defines the benchmark), else ``benchmarks/profiles/``."""
    if cls.profiles is None:
        return PROFILE_DIR
    if isinstance(cls.profiles, dict):
        return cls.profiles
    path = Path(cls.profiles)
    module_file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if not path.is_absolute() and module_file:
        path = Path(module_file).parent / path
    return path


def profile_origin(cls: type[Benchmark]) -> str:
    """Where a benchmark's profiles come from, in words, for errors in their values."""
    source = profile_source(cls)
    if isinstance(source, dict):
        return f"the `profiles` of {cls.__name__} in {defined_in(cls)}"
    path = source / f"{cls.name}.toml" if source.is_dir() else source
    return str(path) if cls.profiles is None else f"{path}, the `profiles` of {defined_in(cls)}"
