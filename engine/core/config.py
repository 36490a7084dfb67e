"""Run configuration: dataclass defaults <- profile TOML <- ``--set key=value``.

Keys are dotted paths into four sections:

- ``train.*``  optimisation (epochs, batch size, optimizer, learning-rate schedule)
- ``engine.*`` how gradients are computed (Jacobian path, chunk size, NaN checks,
  mixed precision, memory format, compilation)
- ``data.*``   the benchmark's own options (its ``Config`` dataclass)
- ``model.*``  the multi-task architecture (hard parameter sharing by default; mixture of
  experts, cross-stitch, MTAN, learning to branch: docs/architectures.md)
- ``method.<component>.*`` each method's hyperparameters (``method.cagrad.c=0.4``); the
  component may be left out when only one component of the composition has that field
  (``method.c=0.4``).

Every value is checked against its field's type; an unknown key is refused with the
closest valid names. The resolved config is hashed (seed, device and paths excluded) to
name the run's folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, check_choice, check_config, check_range, closest

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine")
AMP_MODES = ("none", "bf16", "fp16")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    """sgd | adam | adamw"""
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    """SGD only."""
    scheduler: str = "none"
    """none | step (multiply the lr by gamma every step_size epochs) | cosine"""
    step_size: int = 100
    gamma: float = 0.5
    max_steps_per_epoch: int = 0
    """0 = whole epochs; N > 0 cuts every epoch to N steps (smoke tests)."""
    eval_batch_size: int = 0
    """0 = the training batch size."""

    def validate(self) -> None:
        check_range("train.epochs", self.epochs, 1)
        check_range("train.batch_size", self.batch_size, 1)
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        check_range("train.lr", self.lr, 0, low_open=True)
        check_range("train.weight_decay", self.weight_decay, 0)
        check_range("train.momentum", self.momentum, 0, 1)
        check_choice("train.scheduler", self.scheduler, SCHEDULERS)
        check_range("train.step_size", self.step_size, 1)
        check_range("train.gamma", self.gamma, 0, low_open=True)
        check_range("train.max_steps_per_epoch", self.max_steps_per_epoch, 0)
        check_range("train.eval_batch_size", self.eval_batch_size, 0)


@dataclass
class EngineConfig:
    jacobian: str = "auto"
    """How per-task gradients of the shared parameters are computed: loop (T backward
    passes), batched (one vmapped backward, chunked), auto (loop on the CPU, batched on
    accelerators)."""
    chunk_size: int = 0
    """Tasks per batched backward; 0 = all at once."""
    multi_input_forward: str = "per_task"
    """Multi-input benchmarks: per_task (one encoder forward per task, the reference
    protocol) or stacked (one forward of all tasks' batches; changes BatchNorm statistics)."""
    nan_check_every: int = 10
    """Check the losses for NaN/inf every N steps and at the end of every epoch (each check
    waits for the device). The first non-finite step is recorded exactly either way."""
    deterministic: bool = True
    """Ask torch for deterministic algorithms (identical metrics for a config and seed)."""
    curve_every: int = 10
    """Record the mean training losses every N steps in curve.jsonl (0 = off)."""
    conflict_every: int = 0
    """Record pairwise cosines and norms of the task gradients every N steps in
    conflict.jsonl (0 = off; each record costs T extra backward passes)."""
    conflict_space: str = "param"
    """Gradients for conflict statistics: param (shared parameters) or rep (w.r.t. Z)."""
    amp: str = "none"
    """Mixed precision: none | bf16 | fp16. Autocast around the forward (the device type
    is the run's). fp16 adds dynamic loss scaling: every backward pass of the engine runs
    on scaled losses, methods see unscaled Jacobians, representation gradients and losses,
    and a step whose gradients overflow is skipped (docs/performance.md)."""
    channels_last: bool = False
    """Model and 4-D inputs in channels_last memory format (convolutional nets on GPUs)."""
    compile: bool = False
    """torch.compile the shared encoder(s) (not the heads, whose double backward Rep-MTL
    needs and torch.compile does not support)."""
    compile_backend: str = "inductor"
    """torch.compile backend when engine.compile is on: inductor | aot_eager | eager."""
    cpu_malloc: str = "reuse"
    """CPU runs: reuse keeps freed memory in the process for the next step instead of
    returning it to the kernel (engine/core/cpu_malloc.py; glibc only, process-wide); system
    leaves the C library's default."""
    head_convs: str = "second_order"
    """For methods that differentiate through the heads' backward (Rep-MTL): second_order
    switches the heads' Conv2d layers to engine/core/second_order.py (same values, a cheaper
    double backward); builtin keeps torch's. No effect on other methods."""
    saliency_every: int = 0
    """Log task-saliency statistics of the shared representation every N training steps
    (0 = off): the per-position task entropy, L_tsr, L_csa and each task's saliency norm,
    averaged per epoch under the train record's ``method`` as ``saliency.*``. Costs T
    backward passes through the heads per logged step; never changes the update
    (engine/core/saliency_log.py, docs/saliency.md)."""
    cpu_threads: int = 1
    """Torch threads of a run on the CPU (0 = leave the process's setting). Floating-point
    sums depend on the thread count, so every CPU run of the harness uses one count by
    default (the leaderboard's), and a documented table reproduces from its command; the
    count is recorded in env.json. More threads speed up a single large run."""

    def validate(self) -> None:
        check_choice("engine.jacobian", self.jacobian, ("auto", "loop", "batched"))
        check_range("engine.chunk_size", self.chunk_size, 0)
        check_choice("engine.multi_input_forward", self.multi_input_forward, ("per_task", "stacked"))
        check_range("engine.nan_check_every", self.nan_check_every, 1)
        check_range("engine.curve_every", self.curve_every, 0)
        check_range("engine.conflict_every", self.conflict_every, 0)
        check_choice("engine.conflict_space", self.conflict_space, ("param", "rep"))
        check_choice("engine.amp", self.amp, AMP_MODES)
        check_choice("engine.compile_backend", self.compile_backend, COMPILE_BACKENDS)
        check_choice("engine.head_convs", self.head_convs, ("second_order", "builtin"))
        check_choice("engine.cpu_malloc", self.cpu_malloc, ("reuse", "system"))
        check_range("engine.saliency_every", self.saliency_every, 0)
        check_range("engine.cpu_threads", self.cpu_threads, 0)
        if self.compile and self.jacobian == "batched" and self.compile_backend == "inductor":
            raise ConfigError("engine.compile=true cannot combine with engine.jacobian=batched "
                              "under the inductor backend: the compiled encoder's backward has "
                              "no batching rule (is_grads_batched fails); use engine.jacobian="
                              "loop or auto (auto takes the loop when compiling)")


ARCHS = ("hps", "mmoe", "cgc", "ple", "dselect_k", "cross_stitch", "mtan", "ltb")


@dataclass
class ModelConfig:
    """The multi-task architecture built around the benchmark's encoder and heads
    (engine/core/architectures.py, docs/architectures.md). The whole section enters the
    config hash only when it differs from these defaults, so runs of hard parameter sharing
    keep the folders they had before the section existed."""

    arch: str = "hps"
    """hps (hard parameter sharing) | mmoe | cgc | ple | dselect_k | cross_stitch | mtan | ltb"""
    num_experts: int = 4
    """mmoe, dselect_k: experts (each a copy of the benchmark's encoder); cgc, ple: the
    shared experts (of every level)."""
    task_experts: int = 1
    """cgc, ple: each task's own experts (of every level)."""
    levels: int = 0
    """ple: extraction levels; 0 = one per block of the encoder (LibMTL's PLE); N groups
    the blocks into N consecutive levels."""
    num_nonzeros: int = 2
    """dselect_k: k, the number of experts each task's gate selects."""
    gamma: float = 1.0
    """dselect_k: the width of the smooth-step function."""
    stitch_self: float = 0.9
    """cross_stitch: initial weight of a column's own features in each stitch unit; the
    rest, 1 - stitch_self, is spread evenly over the other columns (Misra et al.: 0.9/0.1)."""
    branch_warmup: float = 0.01
    """ltb: the warm-up, as a fraction of train.epochs: in epochs e < branch_warmup · epochs
    every block reads the sum of all its parents (LibMTL's 1/100: only the first epoch in
    runs of up to 100 epochs)."""
    branch_tau: float = 0.05
    """ltb: the Gumbel-softmax temperature of epoch e after the warm-up is
    branch_tau · epochs / √(e + 1) (LibMTL's epochs / 20 / √(e + 1))."""

    def validate(self) -> None:
        check_choice("model.arch", self.arch, ARCHS)
        check_range("model.num_experts", self.num_experts, 1)
        check_range("model.task_experts", self.task_experts, 0)
        check_range("model.levels", self.levels, 0)
        check_range("model.num_nonzeros", self.num_nonzeros, 1)
        check_range("model.gamma", self.gamma, 0, low_open=True)
        check_range("model.stitch_self", self.stitch_self, 0, 1)
        check_range("model.branch_warmup", self.branch_warmup, 0, 1)
        check_range("model.branch_tau", self.branch_tau, 0, low_open=True)
        if self.arch == "dselect_k" and self.num_nonzeros > self.num_experts:
            raise ConfigError(f"model.num_nonzeros={self.num_nonzeros} exceeds "
                              f"model.num_experts={self.num_experts}: DSelect-k selects k of "
                              f"the experts")
        if self.arch == "dselect_k" and self.num_experts < 2:
            raise ConfigError("model.arch=dselect_k needs model.num_experts >= 2 (its selectors "
                              "choose among experts by binary codes)")


@dataclass
class RunConfig:
    """Everything that defines one run. ``seed``, ``device`` and paths are not hashed."""

    benchmark: str
    method: str
    seed: int
    profile: str
    train: TrainConfig
    engine: EngineConfig
    data: Any
    methods: dict[str, Any]
    device: str = "auto"
    data_root: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict:
        return {
            "benchmark": self.benchmark, "method": self.method, "seed": self.seed,
            "profile": self.profile, "device": self.device, "data_root": self.data_root,
            "train": dataclasses.asdict(self.train), "engine": dataclasses.asdict(self.engine),
            "data": dataclasses.asdict(self.data),
            "methods": {k: dataclasses.asdict(v) for k, v in self.methods.items()},
            "model": dataclasses.asdict(self.model),
        }

    def hash(self) -> str:
        payload = self.to_dict()
        for key in ("seed", "device", "data_root"):
            payload.pop(key)
        # Keys added after runs were on disk enter only when set away from their default,
        # so that the folders (and resumption) of earlier runs stay valid.
        for key, default in LATE_ENGINE_KEYS.items():
            if payload["engine"].get(key) == default:
                payload["engine"].pop(key)
        # The model section came later too: at its defaults (hard parameter sharing) it is
        # left out whole; any other value puts every field of it in, but for the fields added
        # later still (LATE_MODEL_KEYS) at their defaults.
        model_defaults = dataclasses.asdict(ModelConfig())
        if payload["model"] == model_defaults:
            payload.pop("model")
        else:
            for key in LATE_MODEL_KEYS:
                if payload["model"][key] == model_defaults[key]:
                    payload["model"].pop(key)
        # The same for the fields a benchmark's or a method's config lists in its
        # ``late_fields``.
        for key, default in late_field_defaults(self.data).items():
            if payload["data"].get(key) == default:
                payload["data"].pop(key)
        for component, cfg in self.methods.items():
            for key, default in late_field_defaults(cfg).items():
                if payload["methods"][component].get(key) == default:
                    payload["methods"][component].pop(key)
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:8]


LATE_ENGINE_KEYS = {"cpu_malloc": "reuse", "head_convs": "second_order", "saliency_every": 0,
                    "cpu_threads": 1}

LATE_MODEL_KEYS = ("branch_warmup", "branch_tau")
"""Fields of the model section added after runs of other architectures were on disk: they
enter the hash only when set away from their defaults."""


def late_field_defaults(section_config: Any) -> dict[str, Any]:
    """The defaults of the fields that a method's or a benchmark's config added after runs
    were on disk (its ``late_fields``): they enter the hash only when set away from these."""
    late = getattr(type(section_config), "late_fields", ())
    defaults = {}
    for f in dataclasses.fields(section_config):
        if f.name in late:
            defaults[f.name] = (f.default_factory() if f.default is dataclasses.MISSING
                                else f.default)
    return defaults


# --------------------------------------------------------------------------- values

def parse_value(text: str) -> Any:
    """A --set value: a TOML literal (1e-3, true, [1, 100], "x") or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; return it converted where lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: unsupported value {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [parse_value(v.strip()) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list, e.g. [1, 2]")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}={value!r}: expected a finite number")
            return float(value)
        raise ConfigError(f"{key}={value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r}: expected a string")
    raise ConfigError(f"{key}: field type {_type_name(tp)} is not supported in configs")


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def apply_values(obj: Any, values: dict[str, Any], prefix: str) -> Any:
    """A copy of dataclass ``obj`` with ``values`` (field -> value) checked and applied."""
    types_ = field_types(type(obj))
    changes = {}
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if name not in types_:
            raise ConfigError(f"unknown key {key!r}; "
                              f"{closest(name, types_).replace('did you mean ', f'did you mean {prefix}.')}")
        changes[name] = coerce(key, value, types_[name])
    return dataclasses.replace(obj, **changes)


# --------------------------------------------------------------------------- profiles

def load_profile(source: Path | dict, benchmark: str, profile: str) -> dict[str, dict[str, Any]]:
    """The ``[<profile>.<section>]`` tables of a benchmark. ``source``: a folder holding
    ``<benchmark>.toml`` (the built-ins), a TOML file, or the tables themselves (a plugin
    benchmark's ``profiles``). Without any, ``quick`` means the defaults."""
    if isinstance(source, dict):
        profiles, where = source, f"the `profiles` of benchmark {benchmark!r}"
    else:
        path = source / f"{benchmark}.toml" if source.is_dir() else source
        if not path.exists():
            if profile == "quick" and source.is_dir():
                return {}
            raise ConfigError(f"benchmark {benchmark!r} has no profile file {path}")
        try:
            profiles = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        where = str(path)
    if profile not in profiles:
        if profile == "quick":  # the default profile: a source may leave it out
            return {}
        raise ConfigError(f"benchmark {benchmark!r} has no profile {profile!r}; "
                          f"available: {', '.join(sorted(profiles)) or 'none'}")
    tables = profiles[profile]
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise ConfigError(f"{where}: profile {profile!r} must map sections (train, engine, data, "
                          f"method) to tables of values")
    return tables


def group_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """Parse ``KEY=VALUE`` strings into (key, value) pairs."""
    out = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ConfigError(f"--set {pair!r} is malformed; expected SECTION.KEY=VALUE, "
                              f"e.g. train.lr=1e-3 or method.cagrad.c=0.4")
        out.append((key, parse_value(text.strip())))
    # A repeated key: the last value wins (so that a script can append to a base list of
    # overrides), but never silently when the values differ.
    seen: dict[str, Any] = {}
    for key, value in out:
        if key in seen and seen[key] != value and (key, seen[key], value) not in _warned:
            _warned.add((key, seen[key], value))
            log.warning("--set %s is given more than once (%r, then %r); the last value, "
                        "%r, is used", key, seen[key], value, value)
        seen[key] = value
    return out


_warned: set = set()


@dataclass
class Sections:
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    data: Any = None
    methods: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)

    def apply(self, key: str, value: Any, source: str, lenient_methods: bool = False) -> bool:
        """Apply one key; returns False when ``lenient_methods`` let a method key that
        concerns none of this run's components pass (one --set serves several methods)."""
        section, _, rest = key.partition(".")
        if section in ("train", "engine", "data", "model"):
            if "." in rest:
                raise ConfigError(f"{source}: unknown key {key!r}")
            setattr(self, section, _named(source, apply_values, getattr(self, section),
                                          {rest: value}, section))
            return True
        if section != "method":
            raise ConfigError(f"{source}: unknown section in {key!r}; expected train., engine., "
                              f"data., model. or method.")
        component, _, name = rest.rpartition(".")
        if not component:
            owners = [c for c, cfg in self.methods.items() if name in field_types(type(cfg))]
            if not owners and lenient_methods:
                return False
            if len(owners) != 1:
                valid = [f"method.{c}.{f}" for c, cfg in self.methods.items()
                         for f in field_types(type(cfg))]
                what = "is ambiguous" if owners else "is unknown"
                hint = f"valid: {', '.join(valid)}" if valid else "the method has no hyperparameters"
                raise ConfigError(f"{source}: key {key!r} {what}; {hint}")
            component = owners[0]
        if component not in self.methods:
            if lenient_methods:
                return False
            raise ConfigError(f"{source}: {key!r} names {component!r}, which is not part of "
                              f"the method; components: {', '.join(self.methods) or 'none'}")
        self.methods[component] = _named(source, apply_values, self.methods[component],
                                         {name: value}, f"method.{component}")
        return True


def _named(source: str, apply, *args):
    """``apply(*args)``, its errors prefixed with where the value came from (a plugin's
    profile, --set), as the other errors of ``Sections.apply`` are."""
    try:
        return apply(*args)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def flatten_profile(tables: dict[str, Any]) -> list[tuple[str, Any]]:
    """Profile tables -> (dotted key, value); ``[quick.method.cagrad]`` nests one level more."""
    out = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out.append((prefix, value))

    walk("", tables)
    return out


def resolve(benchmark: str, method: str, seed: int, profile: str, overrides: list[str],
            data_config_cls: type, method_configs: dict[str, Any], profile_dir: Path | dict,
            device: str = "auto", data_root: str | None = None,
            unused: set[str] | None = None, profile_origin: str = "") -> RunConfig:
    """Build the fully resolved RunConfig, validating every section. ``profile_origin``
    says where the profiles come from (a plugin's file), for the errors of their values.

    With ``unused`` given, a ``method.*`` override that concerns none of this run's
    components is not an error but is added to ``unused``: the caller checks that every
    override served at least one of its runs."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed {seed!r} is invalid; expected a non-negative integer")
    sections = Sections(data=data_config_cls(), methods=dict(method_configs))
    for key, value in flatten_profile(load_profile(profile_dir, benchmark, profile)):
        if key.startswith("method.") and key.split(".")[1] not in sections.methods:
            continue  # a profile may tune methods that this run does not use
        sections.apply(key, value, f"profile {profile!r} of {benchmark}"
                       + (f" ({profile_origin})" if profile_origin else ""))
    for key, value in group_overrides(overrides):
        if not sections.apply(key, value, "--set", lenient_methods=unused is not None):
            unused.add(key)
    sections.train.validate()
    sections.engine.validate()
    sections.model.validate()
    if hasattr(sections.data, "validate"):
        sections.data.validate()
    for component, cfg in sections.methods.items():
        check_config(cfg, f"method.{component}")  # the fields' domains, then validate()
        check_training = getattr(cfg, "check_training", None)  # a method's own limits
        if check_training is not None:
            check_training(sections.train)
    return RunConfig(benchmark=benchmark, method=method, seed=seed, profile=profile,
                     train=sections.train, engine=sections.engine, data=sections.data,
                     methods=sections.methods, device=device, data_root=data_root,
                     model=sections.model)
