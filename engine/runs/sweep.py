"""Sweep files: many runs from one TOML file, checked completely before any run starts.

A sweep names benchmarks, methods (compositions included), seeds and a profile, fixed
overrides (``[set]``) and grids of overrides (``[grid]``); every combination becomes one run
(``runner.RunRequest``), in its own folder under the results root. Example::

    benchmarks = ["nyuv2"]
    methods = ["ew", "repmtl", "pcgrad+repmtl"]
    seeds = [0, 1, 2]
    profile = "paper"
    data_root = "/data/nyuv2"            # or a table: {nyuv2 = "/data/nyuv2", ...}

    [set]
    "train.epochs" = 200

    [grid]
    method.repmtl.lambda_tsr = [0.7, 0.9, 1.1, 1.3, 1.5]

    [slurm]                              # used by --executor slurm
    partition = "gpu"
    time_min = 1440

Keys of ``[set]`` and ``[grid]`` are the config keys of ``--set`` (``train.*``, ``engine.*``,
``data.*``, ``method.<component>.<field>``), quoted or as TOML dotted keys. A ``method.*``
key applies only to the methods that contain that component: the λ grid above multiplies
the runs of ``repmtl`` and ``pcgrad+repmtl`` and leaves ``ew`` at one run per seed. In a
sweep file the component must be spelled out (``method.repmtl.lambda_tsr``, not
``method.lambda_tsr``), so that the file means the same whatever methods it lists.

Every error (unknown key, empty grid, unknown method or benchmark, a value of the wrong
type) names the file, the line and the key.
"""
from __future__ import annotations

import itertools
import math
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.registry import BENCHMARKS
from engine.core.config import parse_value
from engine.errors import ConfigError, UserError, closest
from engine.registry import load_plugin
from engine.runs.runner import RunRequest, build_requests
from methods.registry import parse_method

EXECUTORS = ("local", "processes", "slurm")
TOP_KEYS = ("description", "plugins", "benchmarks", "methods", "seeds", "profile", "device",
            "data_root", "executor", "jobs", "set", "grid", "slurm")
REQUIRED = ("benchmarks", "methods", "seeds")
SLURM_KEYS = {
    "partition": str, "time_min": int, "gpus_per_node": int, "cpus_per_task": int,
    "mem_gb": (int, float), "array_parallelism": int, "account": str, "qos": str,
    "constraint": str, "setup": list, "additional": dict, "max_num_timeout": int,
    "ddp": int,
}
SLURM_NUMBERS = ("time_min", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism",
                 "max_num_timeout", "ddp")
SECTIONS = ("train", "engine", "data", "model", "method")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep as plain data: what a worker process or a cluster job needs to
    rebuild the run (configs are rebuilt there, never pickled; plugins are reloaded)."""

    benchmark: str
    method: str
    seed: int
    profile: str
    overrides: tuple[str, ...]
    device: str
    data_root: str | None
    config_hash: str
    run_dir: str
    plugins: tuple[str, ...] = ()
    variant: str = ""
    """The grid values of this run (``lambda_tsr=0.7``), for listings."""

    @property
    def label(self) -> str:
        return f"{self.benchmark}/{self.method}/seed{self.seed}-{self.config_hash}"


@dataclass
class Sweep:
    path: Path
    text: str
    benchmarks: list[str]
    methods: list[str]
    seeds: list[int]
    profile: str = "quick"
    device: str = "auto"
    data_root: dict[str, str | None] = field(default_factory=dict)
    fixed: list[tuple[str, Any]] = field(default_factory=list)
    grid: list[tuple[str, list[Any]]] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)
    executor: str = "local"
    plugins: tuple[str, ...] = ()
    """The file's ``plugins``, files as absolute paths (loaded by ``load_sweep``)."""
    jobs: int = 1
    description: str = ""

    @property
    def name(self) -> str:
        return self.path.stem

    def error(self, key: str, message: str, value: Any = None) -> ConfigError:
        return ConfigError(f"{self.path}:{find_line(self.text, key, value) or '?'}: {key}: {message}")


# --------------------------------------------------------------------------- lines

def _normalise_key(text: str) -> str:
    return re.sub(r"""["'\s]""", "", text)


def find_line(text: str, key: str, value: Any = None) -> int | None:
    """The 1-based line of dotted ``key`` (``grid.method.repmtl.lambda_tsr``) in TOML
    ``text``, however it is spelled (dotted, quoted, inside ``[grid.method]``); with
    ``value`` a string, the line of that string inside the key's value when it spans lines."""
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\s*([^\[\]]+?)\s*\]\s*(#.*)?", stripped)
        if header:
            table = _normalise_key(header.group(1))
            continue
        lhs, eq, _ = stripped.partition("=")
        if not eq:
            continue
        full = _normalise_key(lhs) if not table else f"{table}.{_normalise_key(lhs)}"
        if full != key:
            continue
        if isinstance(value, str):
            for offset, later in enumerate(text.splitlines()[number - 1:]):
                if f'"{value}"' in later or f"'{value}'" in later:
                    return number + offset
                if offset and ("=" in later.split('"')[0] or later.strip().startswith("[")):
                    break
        return number
    return None


# --------------------------------------------------------------------------- parsing

def flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.extend(flatten(value, dotted))
        else:
            out.append((dotted, value))
    return out


def toml_literal(value: Any) -> str:
    """A value as the text of a ``--set KEY=VALUE``, so that parse_value gives it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value)
                                                         else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    raise ValueError(f"a {type(value).__name__} cannot be a config value")


def _string_list(sweep: Sweep, raw: dict, key: str) -> list[str]:
    value = raw[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise sweep.error(key, f"expected a list of names, e.g. {key} = [\"a\", \"b\"]")
    if not value:
        raise sweep.error(key, "is empty")
    if len(set(value)) != len(value):
        raise sweep.error(key, "lists a name twice")
    return value


def _check_type(sweep: Sweep, key: str, value: Any, expected: type | tuple) -> None:
    if isinstance(value, bool) or not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple)
                                                 else (expected,)))
        raise sweep.error(key, f"{value!r} is not a {names}")


def plugin_specs(sweep_path: Path, names: list[str]) -> tuple[str, ...]:
    """A sweep file's plugins: .py files relative to the file's folder (made absolute, as
    workers may start elsewhere), other names as modules."""
    return tuple(str((sweep_path.parent / name).resolve()) if name.endswith(".py") else name
                 for name in names)


def import_plugins(path: Path, specs: tuple[str, ...]) -> None:
    """Import a sweep file's plugins, naming each first: the file chooses code that runs
    here, so whoever runs it sees what (docs/sweeps.md: a sweep file is trusted like a
    script)."""
    for spec in specs:
        kind = "file" if spec.endswith(".py") else "module"
        print(f"{path}: importing plugin {kind} {spec}", file=sys.stderr)
        load_plugin(spec)


def read_plugins(path: Path) -> tuple[str, ...]:
    """Only the ``plugins`` of a sweep file (``list --sweep``), without checking the rest."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    if "plugins" not in raw:
        return ()
    return plugin_specs(path, _string_list(Sweep(path, path.read_text(), [], [], []), raw,
                                           "plugins"))


def load_sweep(path: Path) -> Sweep:
    """Parse and check a sweep file (names against the registries, values against the
    config types happen in ``expand``)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    sweep = Sweep(path, text, [], [], [])
    for key in raw:
        if key not in TOP_KEYS:
            raise sweep.error(key, f"unknown key; {closest(key, TOP_KEYS)}")
    for key in REQUIRED:
        if key not in raw:
            raise ConfigError(f"{path}: the sweep needs `{key} = [...]`")
    if "plugins" in raw:
        # Loaded first: the names below may be the plugins' own.
        sweep.plugins = plugin_specs(path, _string_list(sweep, raw, "plugins"))
        import_plugins(path, sweep.plugins)
    sweep.benchmarks = _string_list(sweep, raw, "benchmarks")
    for name in sweep.benchmarks:
        if name not in BENCHMARKS:
            raise ConfigError(f"{path}:{find_line(text, 'benchmarks', name) or '?'}: benchmarks: "
                              f"unknown benchmark {name!r}; {closest(name, BENCHMARKS.names())}")
    sweep.methods = _string_list(sweep, raw, "methods")
    for spec in sweep.methods:
        try:
            parse_method(spec)
        except UserError as exc:
            raise ConfigError(f"{path}:{find_line(text, 'methods', spec) or '?'}: methods: "
                              f"{exc}") from None
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise sweep.error("seeds", "expected a non-empty list of integers, e.g. seeds = [0, 1, 2]")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise sweep.error("seeds", f"{seed!r} is not a non-negative integer")
    if len(set(seeds)) != len(seeds):
        raise sweep.error("seeds", "lists a seed twice")
    sweep.seeds = seeds
    for key in ("description", "profile", "device", "executor"):
        if key in raw:
            _check_type(sweep, key, raw[key], str)
            setattr(sweep, key, raw[key])
    if sweep.executor not in EXECUTORS:
        raise sweep.error("executor", f"{sweep.executor!r}; expected one of {', '.join(EXECUTORS)}")
    if "jobs" in raw:
        _check_type(sweep, "jobs", raw["jobs"], int)
        if raw["jobs"] < 1:
            raise sweep.error("jobs", f"{raw['jobs']} is not >= 1")
        sweep.jobs = raw["jobs"]
    sweep.data_root = _data_roots(sweep, raw.get("data_root"))
    sweep.fixed = _overrides(sweep, raw.get("set", {}), "set", grid=False)
    sweep.grid = _overrides(sweep, raw.get("grid", {}), "grid", grid=True)
    sweep.slurm = _slurm(sweep, raw.get("slurm", {}))
    return sweep


def _data_roots(sweep: Sweep, value: Any) -> dict[str, str | None]:
    if value is None:
        return {b: None for b in sweep.benchmarks}
    if isinstance(value, str):
        return {b: value for b in sweep.benchmarks}
    if not isinstance(value, dict):
        raise sweep.error("data_root", "expected a folder, or a table {benchmark = folder}")
    for bench, root in value.items():
        if bench not in sweep.benchmarks:
            raise sweep.error(f"data_root.{bench}", f"{bench!r} is not one of the sweep's "
                                                   f"benchmarks ({', '.join(sweep.benchmarks)})")
        _check_type(sweep, f"data_root.{bench}", root, str)
    return {b: value.get(b) for b in sweep.benchmarks}


def _overrides(sweep: Sweep, table: Any, where: str, grid: bool) -> list[tuple[str, Any]]:
    if not isinstance(table, dict):
        raise sweep.error(where, "expected a table of config keys")
    components = {c for spec in sweep.methods for c in parse_method(spec).components}
    out = []
    for key, value in flatten(table):
        located = f"{where}.{key}"
        section = key.split(".")[0]
        if section not in SECTIONS or key.count(".") < 1:
            raise sweep.error(located, "unknown key; config keys start with train., engine., "
                                       "data., model. or method.<component>.")
        if section == "method":
            parts = key.split(".")
            if len(parts) != 3:
                raise sweep.error(located, "spell method keys as method.<component>.<field>, "
                                           "e.g. method.repmtl.lambda_tsr")
            if parts[1] not in components:
                raise sweep.error(located, f"no method of the sweep has the component "
                                           f"{parts[1]!r}; components: {', '.join(sorted(components))}")
        if grid:
            if not isinstance(value, list):
                raise sweep.error(located, f"a grid takes a list of values, e.g. {key} = [1, 2]")
            if not value:
                raise sweep.error(located, "the grid is empty")
            for item in value:
                _check_literal(sweep, located, item)
            if len({toml_literal(v) for v in value}) != len(value):
                raise sweep.error(located, "the grid lists a value twice")
        else:
            _check_literal(sweep, located, value)
        out.append((key, value))
    return out


def _check_literal(sweep: Sweep, key: str, value: Any) -> None:
    try:
        text = toml_literal(value)
    except ValueError as exc:
        raise sweep.error(key, str(exc)) from None
    back = parse_value(text)
    if not (back == value or (isinstance(value, float) and math.isnan(value))):
        raise sweep.error(key, f"{value!r} cannot be passed as a config value")


def _slurm(sweep: Sweep, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise sweep.error("slurm", "expected a table")
    for key, value in table.items():
        if key not in SLURM_KEYS:
            raise sweep.error(f"slurm.{key}", f"unknown key; {closest(key, SLURM_KEYS)}")
        _check_type(sweep, f"slurm.{key}", value, SLURM_KEYS[key])
        low = 0 if key == "gpus_per_node" else 1
        if key in SLURM_NUMBERS and not value >= low:
            raise sweep.error(f"slurm.{key}", f"{value} is out of range; expected a value >= {low}")
    return dict(table)


# --------------------------------------------------------------------------- expansion

def _applies(key: str, components: tuple[str, ...]) -> bool:
    return not key.startswith("method.") or key.split(".")[1] in components


def expand(sweep: Sweep, out: Path, device: str | None = None, data_root: str | None = None,
           plugins: tuple[str, ...] = (), check_data: bool = True
           ) -> list[tuple[RunSpec, RunRequest]]:
    """Every run of the sweep, each config resolved and checked. ``device`` and
    ``data_root`` (from the command line) replace the file's. ``check_data`` also checks
    that the data folders of benchmarks read from disk exist (a dry run does not)."""
    runs = []
    device = device or sweep.device
    for bench in sweep.benchmarks:
        root, origin = _data_root(sweep, bench, data_root)
        if not BENCHMARKS.get(bench).needs_data_root:
            root = None  # a data folder concerns only the benchmarks read from disk
        if check_data:
            _check_data_root(sweep, bench, root, origin)
        for spec in sweep.methods:
            components = parse_method(spec).components
            fixed = [(k, v) for k, v in sweep.fixed if _applies(k, components)]
            axes = [(k, vs) for k, vs in sweep.grid if _applies(k, components)]
            for combo in itertools.product(*(vs for _, vs in axes)):
                pairs = fixed + [(k, v) for (k, _), v in zip(axes, combo)]
                overrides = [f"{k}={toml_literal(v)}" for k, v in pairs]
                try:
                    requests = build_requests(bench, [spec], sweep.seeds, sweep.profile,
                                              overrides, device, root, check_data=check_data,
                                              out=out)
                except UserError as exc:
                    raise _locate(sweep, str(exc), pairs, bench, spec) from None
                variant = " ".join(f"{k.rsplit('.', 1)[-1]}={toml_literal(v)}"
                                   for (k, _), v in zip(axes, combo))
                for request in requests:
                    run = RunSpec(bench, request.method_name, request.config.seed, sweep.profile,
                                  tuple(overrides), device, root, request.config.hash(),
                                  str(request.dir(out)), tuple(plugins), variant)
                    runs.append((run, request))
    dirs = [run.run_dir for run, _ in runs]
    if len(set(dirs)) != len(dirs):
        twice = sorted({d for d in dirs if dirs.count(d) > 1})
        raise ConfigError(f"{sweep.path}: two combinations give the same config ({twice[0]}); "
                          f"remove one of them")
    return runs


def missing_data(sweep: Sweep, data_root: str | None = None) -> list[str]:
    """What the real sweep would refuse about its data folders, one message per benchmark
    (a dry run lists the runs anyway: it may plan a sweep for another machine)."""
    problems = []
    for bench in sweep.benchmarks:
        try:
            _check_data_root(sweep, bench, *_data_root(sweep, bench, data_root))
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _data_root(sweep: Sweep, bench: str, data_root: str | None) -> tuple[str | None, str]:
    """A benchmark's data folder and where it was named: "option" (--data-root), "file"
    (the sweep file's data_root) or "default" (the benchmark's own default folder)."""
    if data_root:
        return data_root, "option"
    if sweep.data_root.get(bench):
        return sweep.data_root[bench], "file"
    return BENCHMARKS.get(bench).default_data_root, "default"


def _check_data_root(sweep: Sweep, bench: str, root: str | None, origin: str) -> None:
    """A benchmark read from disk needs its folder; refused now rather than in every run."""
    cls = BENCHMARKS.get(bench)
    if not cls.needs_data_root:
        return
    if root is None:
        raise ConfigError(f"{sweep.path}: benchmark {bench} reads its data from disk; set "
                          f"data_root in the sweep file or pass --data-root DIR")
    if not Path(root).is_dir():
        if origin == "option":
            raise ConfigError(f"--data-root: the data folder of {bench}, {root}, does not exist")
        if origin == "default":
            # No line of the file to blame: the folder is the benchmark's own default.
            raise ConfigError(f"{sweep.path}: benchmark {bench}: no data folder {root} (its "
                              f"default); {cls.data_hint}, or set data_root in the sweep file")
        line = find_line(sweep.text, f"data_root.{bench}") or find_line(sweep.text, "data_root")
        raise ConfigError(f"{sweep.path}:{line or '?'}: data_root: the data folder of {bench}, "
                          f"{root}, does not exist")


def _locate(sweep: Sweep, message: str, pairs: list[tuple[str, Any]], bench: str,
            spec: str) -> ConfigError:
    message = message.removeprefix("--set: ")
    for key, _ in sorted(pairs, key=lambda kv: -len(kv[0])):
        if key in message:
            where = "grid" if key in dict(sweep.grid) else "set"
            return sweep.error(f"{where}.{key}", f"{message} (benchmark {bench}, method {spec})")
    if spec in message:
        return ConfigError(f"{sweep.path}:{find_line(sweep.text, 'methods', spec) or '?'}: "
                           f"methods: {message}")
    return ConfigError(f"{sweep.path}: {message} (benchmark {bench}, method {spec}, "
                       f"profile {sweep.profile})")
