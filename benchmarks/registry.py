"""The benchmark registry: ``@register_benchmark("name")`` on a Benchmark subclass."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from torch import nn

from benchmarks.base import SPLITS, Benchmark, MetricSpec, TaskSpec, TensorBenchmark, TensorSplit
from engine.errors import UserError
from engine.registry import Registry, defined_in

BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")
PROFILE_DIR = Path(__file__).parent / "profiles"


def register_benchmark(name: str):
    def decorator(cls: type[Benchmark]) -> type[Benchmark]:
        if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
            raise UserError(f"@register_benchmark({name!r}) needs a Benchmark subclass, got "
                            f"{cls!r}")
        missing = [what for what, absent in (
            ("a one-line `description`", not cls.description),
            ("a `Config` dataclass", not (isinstance(cls.Config, type)
                                          and dataclasses.is_dataclass(cls.Config))),
            ("`make_encoder()`", _inherited(cls, "make_encoder")),
            ("`make_head(task)`", _inherited(cls, "make_head")))
                   if absent]
        data = [f"`{m}()`" for m in DATA_METHODS if _inherited(cls, m)]
        if data:
            missing.append(f"{', '.join(data[:-1])}{' and ' if len(data) > 1 else ''}{data[-1]} "
                           f"(or subclass TensorBenchmark and set self.splits)")
        if missing:
            raise UserError(f"benchmark {name!r} ({defined_in(cls)}) needs "
                            f"{' and '.join(missing)} (see docs/plugins.md)")
        if cls.profiles is not None and not isinstance(cls.profiles, (dict, str, Path)):
            raise UserError(f"benchmark {name!r}: `profiles` must be a dict of profiles or the "
                            f"path of a TOML file, got {type(cls.profiles).__name__}")
        cls.name = name
        return BENCHMARKS.register(name)(cls)
    return decorator


DATA_METHODS = ("split_size", "batches_per_epoch", "batches")
"""What a benchmark implements to serve its data, unless a helper base (TensorBenchmark,
MultiInputTensorBenchmark) does."""


def _inherited(cls: type[Benchmark], method: str) -> bool:
    """Whether ``cls`` leaves ``method`` to Benchmark, which only raises NotImplementedError."""
    return getattr(cls, method) is getattr(Benchmark, method)


def check_built(benchmark: Benchmark) -> None:
    """Refuse, in one line, a constructed benchmark whose ``__init__`` left out what every
    run needs: its tasks (and, for a TensorBenchmark, its splits)."""
    cls = type(benchmark)
    where = f"benchmark {cls.name!r} ({defined_in(cls)})"
    tasks = getattr(benchmark, "tasks", None)
    if (not isinstance(tasks, (tuple, list)) or not tasks
            or not all(isinstance(t, TaskSpec) for t in tasks)):
        raise UserError(f"{where}: __init__ must set self.tasks to a non-empty tuple of "
                        f"TaskSpec, got {_shown(tasks)} (see docs/plugins.md)")
    names = [t.name for t in tasks]
    for name in names:
        # The heads live in an nn.ModuleDict keyed by task name.
        if not isinstance(name, str) or not name or "." in name or hasattr(nn.ModuleDict, name):
            raise UserError(f"{where}: task name {name!r} cannot name a head; use a non-empty "
                            f"name without '.' that is not an attribute of torch.nn.ModuleDict")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{where}: task names must differ; {', '.join(twice)} is used twice")
    for task in tasks:
        if (not isinstance(task.metrics, (tuple, list)) or not task.metrics
                or not all(isinstance(m, MetricSpec) for m in task.metrics)):
            raise UserError(f"{where}: task {task.name!r} needs a non-empty tuple of MetricSpec "
                            f"as its metrics, got {_shown(task.metrics)}")
    if isinstance(benchmark, TensorBenchmark):
        splits = getattr(benchmark, "splits", None)
        if not isinstance(splits, dict) or any(not isinstance(splits.get(s), TensorSplit)
                                               for s in SPLITS):
            have = ", ".join(map(str, splits)) if isinstance(splits, dict) else _shown(splits)
            raise UserError(f"{where}: a TensorBenchmark's __init__ must set self.splits to "
                            f"{{'train', 'val', 'test'}} -> TensorSplit, got {have or 'none'} "
                            f"(see docs/plugins.md)")
        for split in SPLITS:
            absent = [n for n in names if n not in splits[split].targets]
            if absent:
                raise UserError(f"{where}: the {split} split has no targets for task(s) "
                                f"{', '.join(absent)} (TensorSplit.targets maps each task "
                                f"name to its targets)")


def check_metric_names(benchmark: Benchmark, metrics: dict[str, dict]) -> None:
    """Refuse, in one line, a task whose meter computed other metrics than the MetricSpecs
    its TaskSpec declares (the direction of each reported number comes from them)."""
    for task in benchmark.tasks:
        declared = [m.name for m in task.metrics]
        got = list(metrics.get(task.name, {}))
        if sorted(got) != sorted(declared):
            raise UserError(f"benchmark {benchmark.name!r} ({defined_in(type(benchmark))}): "
                            f"the meter of task {task.name!r} computed "
                            f"{', '.join(got) or 'nothing'} but its TaskSpec declares the "
                            f"metrics {', '.join(declared)}; they must be the same names "
                            f"(see docs/plugins.md)")


def _shown(value: object) -> str:
    """What a wrong value is, in a few words: nothing, an empty tuple, a list of str."""
    if value is None:
        return "nothing"
    if isinstance(value, (tuple, list, dict)):
        if not value:
            return f"an empty {type(value).__name__}"
        kinds = sorted({type(v).__name__ for v in value})
        return f"a {type(value).__name__} of {', '.join(kinds)}"
    return f"a {type(value).__name__}"


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
