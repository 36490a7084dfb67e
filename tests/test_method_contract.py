"""The contract every registered method keeps (installed plugins too, and any plugin loaded
before collection): finite output on zero, tiny and huge inputs; relabelling the tasks
relabels the output where the method promises it (``Method.permutation_equivariant``); its
state survives a checkpoint; each hyperparameter that its config validates refuses an
out-of-range value by its key.

The hooks are driven directly (``weigh``, ``aggregate``, ``penalty``) on hand-made float64
tensors, over a schedule of a few epochs, so that methods that change behaviour after a
warm-up (STCH, IGBv2, DWA) are checked in every phase."""
from __future__ import annotations

import dataclasses
import io
import math
import typing

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from benchmarks.digits_tasks import DigitsTasksConfig
from benchmarks.registry import PROFILE_DIR
from engine.core.config import EngineConfig, RunConfig, TrainConfig, resolve
from engine.core.user_loop import method_config
from engine.errors import ConfigError, Domain, check_config, domain_of
from engine.registry import load_entry_point_plugins
from methods.base import Aggregator, Method, Regularizer, Weighting
from methods.registry import METHODS

load_entry_point_plugins()  # installed plugins get the same checks as the built-in methods

D = torch.float64
NAMES = ("a", "b", "c")
BATCH, WIDTH = 4, 3
"""The shared representation Z is [BATCH, WIDTH]; its gradients flatten to 12 columns, as
do the Jacobians (shared parameters in two blocks of 5 and 7)."""
SIZES = [5, 7]
EPOCHS, STEPS = 6, 2
SCALES = {"zero": 0.0, "tiny": 1e-20, "huge": 1e20}

ZERO_INPUTS_UNDEFINED = {
    "dwa": "its weights are ratios of epoch-mean losses",
    "gls": "its weights are the losses' geometric mean over each loss",
    "gradnorm": "it compares each loss with its first value (L_t / L_t(0))",
    "igbv2": "its weights are a_t / L_t and its reward divides by the base losses",
    "stch": "it works on log-losses (log(L_t / nadir_t)) and weighs by 1 / L_t in warm-up",
}
"""Methods whose mathematics is undefined at zero losses (never reached in training: a loss
of exactly zero on every sample ends learning); they are still checked at tiny and huge
scales."""
KNOWN_FAILURES: dict[tuple[str, str], str] = {}
"""Contract breaches that are known and not yet fixed (each fails strictly: a fix shows)."""


def names() -> list[str]:
    # Leaves out the doubles that other test modules register, some of which break the
    # contract on purpose (a method that explodes, one that records its batches).
    return sorted(n for n in METHODS.names()
                  if not METHODS.get(n).__module__.startswith("tests."))


def make(name: str, **overrides) -> Method:
    cls = METHODS.get(name)
    return cls(cls.Config(**overrides), NAMES)


def inputs(seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses [T] (positive) and a Jacobian [T, 12] with a common component (some pairs of
    tasks conflict, some agree) and unequal norms, both multiplied by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    jac = torch.randn(3, BATCH * WIDTH, generator=g, dtype=D) + 0.4 * torch.randn(
        BATCH * WIDTH, generator=g, dtype=D)
    jac = jac * torch.tensor([0.5, 1.5, 3.0], dtype=D)[:, None]
    losses = torch.rand(3, generator=g, dtype=D) + 0.5
    return losses * scale, jac * scale


class Context:
    """The StepContext of methods/base.py on hand-made tensors: the losses and the Jacobian
    are given; the representation gradients are the Jacobian's rows as [BATCH, WIDTH]
    (with a graph to Z, for regularizers that differentiate them); task gradients of any
    parameters are the Jacobian."""

    def __init__(self, losses: torch.Tensor, jac: torch.Tensor, *, step: int = 0,
                 epoch: int = 0, seed: int = 0):
        self.task_names = NAMES
        self.losses = losses.clone().requires_grad_()
        self.raw_losses = self.losses
        self._jac = jac
        self.step, self.epoch = step, epoch
        self.generator = torch.Generator().manual_seed(seed + step)
        self.shared_sizes = SIZES
        self.world_size = 1
        self.z = torch.ones(BATCH, WIDTH, dtype=D, requires_grad=True)
        self.logged: dict[str, torch.Tensor] = {}

    def jacobian(self) -> torch.Tensor:
        return self._jac

    def rep_grads(self, create_graph: bool = False, raw: bool = False) -> list[torch.Tensor]:
        return [row.view(BATCH, WIDTH) * self.z for row in self._jac]

    def reps(self) -> list[torch.Tensor]:
        return [self.z] * len(self.task_names)

    def last_shared_params(self) -> list[torch.Tensor]:
        return [self.z]

    def task_grads(self, params, create_graph: bool = False) -> torch.Tensor:
        return self._jac

    def extra_jacobian(self, index: int) -> torch.Tensor:
        """Another batch's Jacobian: each row changed by itself alone (so relabelling the
        tasks relabels it), differently for each extra batch."""
        k = index + 1
        return self._jac * (1 + 0.25 * k) + 0.3 * k * self._jac.flip(1)

    def extra_losses(self, index: int) -> torch.Tensor:
        return self.losses.detach() * (1 + 0.1 * (index + 1))

    learning_rate = 0.01

    def model_parameters(self) -> list[torch.Tensor]:
        """The lookahead's model: one [T, P] parameter, equal to the Jacobian, whose rows
        follow the tasks when they are relabelled."""
        if not hasattr(self, "_params"):
            self._params = [self._jac.detach().clone().requires_grad_()]
        return self._params

    def losses_at(self, values, batch: int | None = None) -> torch.Tensor:
        """The losses, each moving linearly with every row of the parameter (task t along
        its own gradient); another value on each extra batch."""
        base = self.losses.detach() * (1 if batch is None else 1 + 0.1 * (batch + 1))
        w = self.model_parameters()[0] if values is None else values[0]
        return base * (1 + ((w - self._jac).sum(dim=0) * self._jac).sum(dim=1) / self._jac.shape[1])

    def virtual_step(self, grads, lr: float | None = None) -> list[torch.Tensor]:
        alpha = self.learning_rate if lr is None else lr
        return [p.detach() - alpha * (g if g is not None else torch.zeros_like(p))
                for p, g in zip(self.model_parameters(), grads)]

    def gather_samples(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return tensor

    def log(self, name: str, value: torch.Tensor) -> None:
        self.logged[name] = value

    def recompute_losses(self) -> torch.Tensor:
        return self.losses.detach() * 0.9


def outputs(method: Method, ctx: Context) -> list[torch.Tensor]:
    """Every tensor the method's hook returns for ``ctx``, in a fixed order."""
    if isinstance(method, Weighting):
        out = method.weigh(ctx)
        found = [out.weights] + ([out.objective] if out.objective is not None else [])
    elif isinstance(method, Aggregator):
        out = method.aggregate(ctx.jacobian(), ctx)
        found = [out.direction] + [t for t in (out.weights, out.head_scales) if t is not None]
    else:
        assert isinstance(method, Regularizer)
        penalty = method.penalty(ctx)
        found = [] if penalty is None else [penalty]
    if method.needs.after_step:
        method.after_step(ctx)
    return [t.detach() for t in found]


def schedule(method: Method, scale: float, seed: int = 0, perm=None):
    """The method's outputs over EPOCHS epochs of STEPS steps (tasks in the order ``perm``)."""
    perm = list(range(3)) if perm is None else list(perm)
    step = 0
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            losses, jac = inputs(seed + step, scale)
            yield outputs(method, Context(losses[perm], jac[perm], step=step, epoch=epoch,
                                          seed=seed))
            step += 1
        method.on_epoch_end(epoch, inputs(seed + step, scale)[0][perm])


def _finite_cases():
    for name in names():
        for scale in SCALES:
            known = KNOWN_FAILURES.get((name, scale))
            marks = pytest.mark.xfail(strict=True, reason=known) if known else ()
            yield pytest.param(name, scale, marks=marks, id=f"{name}-{scale}")


@pytest.mark.parametrize("name, scale", _finite_cases())
def test_finite_on_zero_tiny_and_huge_inputs(name, scale):
    if scale == "zero" and name in ZERO_INPUTS_UNDEFINED:
        pytest.skip(ZERO_INPUTS_UNDEFINED[name])
    method = make(name).double()
    for step, found in enumerate(schedule(method, SCALES[scale])):
        for value in found:
            assert torch.isfinite(value).all(), f"{name}, {scale} inputs, step {step}: {value}"


@pytest.mark.parametrize("name", [n for n in names() if METHODS.get(n).permutation_equivariant])
def test_relabelling_the_tasks_relabels_the_output(name):
    """Weights and head scales follow the tasks; a direction or a penalty does not move."""
    perm = [2, 0, 1]
    plain = list(schedule(make(name).double(), 1.0))
    permuted = list(schedule(make(name).double(), 1.0, perm=perm))
    for step, (ours, theirs) in enumerate(zip(plain, permuted)):
        for a, b in zip(ours, theirs):
            expected = a[perm] if a.dim() == 1 and a.shape[0] == 3 else a
            torch.testing.assert_close(b, expected, rtol=1e-5, atol=1e-8,
                                       msg=f"{name}, step {step}")


def _round_trip(method: Method, fresh: Method) -> Method:
    """``method``'s state into ``fresh``, through the bytes a checkpoint holds."""
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


@pytest.mark.parametrize("name", names())
def test_state_survives_a_checkpoint(name):
    """A method restored from its state_dict after some steps continues exactly as the
    original does."""
    original = make(name).double()
    steps = schedule(original, 1.0)
    for _ in range(EPOCHS * STEPS - 2):
        next(steps)
    restored = _round_trip(original, make(name).double())
    losses, jac = inputs(99, 1.0)
    ctx = dict(step=EPOCHS * STEPS, epoch=EPOCHS - 1, seed=5)
    ours = outputs(original, Context(losses, jac, **ctx))
    theirs = outputs(restored, Context(losses, jac, **ctx))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def _bad_values(tp) -> list:
    """Values outside any sensible domain of a field of type ``tp``."""
    if tp in (int, "int"):
        return [-1, 0, -10**9]
    if tp in (float, "float"):
        return [-1.0, 0.0, -1e9, 1e9, math.nan]
    if tp in (str, "str"):
        return ["no-such-choice"]
    return []


def _fields(name: str) -> list[tuple[str, list]]:
    cls = METHODS.get(name).Config
    hints = typing.get_type_hints(cls)
    return [(f.name, _bad_values(hints[f.name])) for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("name, field", [(n, f) for n in names() for f, bad in _fields(n)
                                         if bad])
def test_each_validated_hyperparameter_refuses_an_out_of_range_value(name, field):
    """Some value out of the field's domain is refused when the method is built, and the
    error names the field by the key a user types (``method.<name>.<field>``)."""
    refused = []
    for value in dict(_fields(name))[field]:
        try:
            make(name, **{field: value})
        except ConfigError as exc:
            refused.append(str(exc))
    assert refused, f"method.{name}.{field} accepts every one of {dict(_fields(name))[field]}"
    assert all(f"method.{name}.{field}" in message for message in refused), refused


@pytest.mark.parametrize("name", names())
def test_defaults_are_valid(name):
    check_config(METHODS.get(name).Config(), f"method.{name}")


# --------------------------------------------------------------------------- declared domains

def _domains(name: str) -> list[tuple[str, Domain]]:
    """(field, domain) of every field of the method's config that declares one (``param``)."""
    return [(f.name, domain_of(f)) for f in dataclasses.fields(METHODS.get(name).Config)
            if domain_of(f) is not None]


def _just_outside(domain: Domain, tp) -> list:
    """Values a step outside ``domain`` for a field of type ``tp``: below a closed low bound
    (the next float down, or one less for an integer), at an open one, and the same at the
    high end; for choices, a near miss of the first and a string that is none of them (or
    the integers either side of integer codes)."""
    if domain.choices is not None:
        if all(isinstance(c, str) for c in domain.choices):
            return [domain.choices[0] + "_", domain.choices[0].upper(), "no-such-choice"]
        return [min(domain.choices) - 1, max(domain.choices) + 1]
    values = []
    for bound, is_open, away in ((domain.low, domain.low_open, -1),
                                 (domain.high, domain.high_open, 1)):
        if bound is None:
            continue
        if tp is int:
            values.append(int(bound) if is_open else int(bound) + away)
        else:
            values.append(float(bound) if is_open else math.nextafter(float(bound), away * math.inf))
    return values


def _domain_cases():
    return [pytest.param(n, f, id=f"{n}.{f}") for n in names() for f, _ in _domains(n)]


@pytest.mark.parametrize("name, field", _domain_cases())
def test_a_declared_domain_refuses_values_just_outside_it(name, field):
    """A value a step outside a field's declared domain is refused, in one line naming the
    key ``method.<name>.<field>`` and the valid range or choices, wherever a config is
    checked: when the method is built, when the run's config is resolved (``--set``) and in
    a plain training loop's settings; the default lies inside."""
    domain = dict(_domains(name))[field]
    tp = typing.get_type_hints(METHODS.get(name).Config)[field]
    default = getattr(METHODS.get(name).Config(), field)
    assert default in domain, f"method.{name}.{field}: the default {default!r} is outside"
    key = f"method.{name}.{field}"
    outside = _just_outside(domain, tp)
    assert outside
    for value in outside:
        assert value not in domain, (key, value)
        literal = f'"{value}"' if isinstance(value, str) else repr(value)
        refusals = (lambda: make(name, **{field: value}),
                    lambda: method_config(name, {field: value}),
                    lambda: resolve("digits_tasks", name, 0, "quick", [f"{key}={literal}"],
                                    DigitsTasksConfig, {name: METHODS.get(name).Config()},
                                    PROFILE_DIR))
        for refuse in refusals:
            with pytest.raises(ConfigError) as info:
                refuse()
            message = str(info.value)
            assert f"{key}={value!r}" in message or f"{key}='{value}'" in message, message
            assert "expected" in message and "\n" not in message, message


NO_DOMAIN = {
    ("cr_mogm", "base"): "a registered Gramian aggregator's name: the registry (plugins "
                         "included) holds its choices, checked by validate()",
    ("cr_mogm", "initial_weights"): "one weight per task (or none), each finite: checked by "
                                    "validate() and, for the count, when the method is built",
    ("famo", "min_losses"): "one bound per task (or none): its length needs the benchmark's "
                            "tasks, checked when the method is built",
    ("fixed", "weights"): "one weight per task (or none), each >= 0 and not all 0: checked by "
                          "validate() and, for the count, when the method is built",
    ("mtadam", "ranks"): "one rank per task (or none): its length needs the benchmark's tasks, "
                         "checked when the method is built",
    ("metabalance", "main_task"): "a task's name: the benchmark's tasks are its choices, "
                                  "checked when the method is built",
}
"""Hyperparameters of the built-in methods that declare no domain, with the reason."""


def _numeric_or_text(tp) -> bool:
    if tp in (int, float, str):
        return True
    return typing.get_origin(tp) in (tuple, list) and all(
        arg in (int, float, Ellipsis) for arg in typing.get_args(tp))


@pytest.mark.parametrize("name", [n for n in names() if METHODS.get(n).__module__.startswith("methods.")])
def test_every_hyperparameter_of_a_built_in_method_declares_its_domain(name):
    """Every number (and every string option) of a built-in method's config declares its
    domain, or is listed in NO_DOMAIN with the reason it has none; a listed field really
    has none."""
    cls = METHODS.get(name).Config
    hints = typing.get_type_hints(cls)
    lacking = sorted(f.name for f in dataclasses.fields(cls)
                     if domain_of(f) is None and _numeric_or_text(hints[f.name])
                     and (name, f.name) not in NO_DOMAIN)
    assert not lacking, f"{name}: no domain declared for {lacking} (engine.errors.param)"
    for (method, field), _reason in NO_DOMAIN.items():
        if method == name:
            (f,) = [f for f in dataclasses.fields(cls) if f.name == field]
            assert domain_of(f) is None, f"{name}.{field} is listed in NO_DOMAIN but has one"


DEFAULT_HASHES = {
    "aligned_mtl": "e831cb3d", "aligned_mtl_ub": "c15db976", "cagrad": "b0b5ab7d",
    "config": "42d21e46", "dbmtl": "d9369542", "dualproj": "912d0f3b", "dwa": "1c9f1b90",
    "ew": "889888e2", "excessmtl": "d40f6d18", "fairgrad": "a1c1bdde", "famo": "d1c88e97",
    "fixed": "8d1d3ac2", "gls": "2f3e9554", "graddrop": "b0b2dabe", "gradnorm": "04b35553",
    "gradvac": "b7700b2f", "igbv2": "1c1522fb", "imtl": "04e1bae6", "imtl_g": "ebb150a7",
    "imtl_l": "b5dca1d8", "krum": "dfbd7d9f", "mean": "d9e81089", "metabalance": "683af86e",
    "mgda": "3cedae59", "mgda_ub": "588cf1d7", "moco": "4de772c1", "modo": "b39cb357",
    "mtadam": "9f1cd390", "nashmtl": "bdcc2b9a", "pcgrad": "98fc501f", "repmtl": "a3e4d876",
    "repmtl_csa": "645051ef", "repmtl_tsr": "e4604441", "rlw": "ffa480b7",
    "sdmgrad": "20275343", "stch": "46b81ec6", "stl": "bfe7672c", "trimmed_mean": "fa6fcb2c",
    "upgrad": "e4355bab", "uw": "421f0645",
    "cr_mogm": "4a01d917", "pcd": "d00f8ddf", "autol": "23bda5de", "moml": "c87171b9",
    "forum": "e1a2703e",
}
"""The config hash of each built-in method at its defaults (default train and engine
sections, a one-field data section): run folders are named by it, so a change to how
hyperparameters are declared must leave it as it is."""


@dataclasses.dataclass
class _OneFieldData:
    size: int = 1


@pytest.mark.parametrize("name", sorted(DEFAULT_HASHES))
def test_default_config_hash_is_unchanged(name):
    config = RunConfig(benchmark="b", method=name, seed=0, profile="quick", train=TrainConfig(),
                       engine=EngineConfig(), data=_OneFieldData(),
                       methods={name: METHODS.get(name).Config()})
    assert config.hash() == DEFAULT_HASHES[name]


def test_every_built_in_method_has_its_default_hash():
    built_in = {n for n in names() if METHODS.get(n).__module__.startswith("methods.")}
    assert built_in == set(DEFAULT_HASHES)
