"""The benchmark registry: ``@register_benchmark("name")`` on a Benchmark subclass."""
from __future__ import annotations

from pathlib import Path

from benchmarks.base import Benchmark
from engine.registry import Registry

BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")
PROFILE_DIR = Path(__file__).parent / "profiles"


def register_benchmark(name: str):
    def decorator(cls: type[Benchmark]) -> type[Benchmark]:
        if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
            raise TypeError(f"@register_benchmark({name!r}) needs a Benchmark subclass")
        if not cls.description or cls.Config is None:
            raise TypeError(f"benchmark {name!r} needs a `description` and a `Config` dataclass")
        cls.name = name
        return BENCHMARKS.register(name)(cls)
    return decorator
