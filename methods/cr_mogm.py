"""CR-MOGM: Zhou, Zhang, Jiang, Zhong, Gu, Zhu, "On the Convergence of Stochastic
Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022; TorchJD's
``CRMOGMWeighting``.

Gradient manipulation methods (MGDA, PCGrad, CAGrad, ...) update along d = Σ_t λ_t g_t with
weights λ computed from the current stochastic gradients alone; the paper shows that this
can keep them from converging to a Pareto optimum, and fixes it by averaging the weights
over the steps. CR-MOGM wraps a Gramian aggregator (the base) and smooths the weights λ̂_k
it computes at step k with an exponential moving average,

    λ_k = α λ_{k−1} + (1 − α) λ̂_k,   λ_0 = λ̂_1 (or the given initial weights),

then updates along d = Σ_t λ_k,t g_t with this step's gradients. Without initial weights
the first update is the base's own, whatever α.

Hyperparameters (``method.cr_mogm.*``):
- ``base`` = mgda: the wrapped method, any registered Gramian aggregator of the shared
  parameters' gradients (those whose needs are the Jacobian alone: aligned_mtl, cagrad,
  config, dualproj, imtl_g, krum, mgda, pcd, pcgrad, upgrad, and a plugin's); others are refused
  when the run is built, in one line naming the allowed ones. The paper's abstract names
  PCGrad, MGDA and CAGrad as instances of the framework; TorchJD has no default (the
  wrapped weighting is required); MGDA, one of the three, is the default here (its
  weights lie on the simplex, so their average does too);
- ``alpha`` α = 0.9, in [0, 1]: TorchJD's default (the usual EMA constant, like Adam's β₁).
  α = 0 is the base itself, α = 1 keeps λ_0 for ever. TorchJD's documentation cites the
  paper's Corollary 1 for an α_k that grows towards 1 as the learning rate decays
  (suggesting α = 1 − lr/lr₀); only a constant α is offered;
- ``base_options`` = [] : the base's own hyperparameters, as KEY=VALUE strings
  (``--set 'method.cr_mogm.base_options=["normalization=l2", "max_iter=500"]'``, or
  ``normalization=l2,max_iter=500``). Each value is a TOML literal checked against the
  base's field type and declared domain, and a mistake is refused naming
  ``method.cr_mogm.base_options``. They are options of this method rather than
  ``method.<base>.*`` keys because a run's configuration holds one section per component
  of its method spec, and the base is not a component;
- ``initial_weights`` = [] : λ_0, one finite value per task; empty: λ_0 = λ̂_1 (TorchJD's
  ``initial_weights``).

State: λ_{k−1}, the step count and the base's own state (solver counters, ...) are buffers
of the method, so a resumed run continues exactly.

Relabelling the tasks relabels λ wherever it does so for the base: the default MGDA and most
bases; not PCGrad (random orders per position) nor PCD (the first task is primary).

Weight scale: the base's convention (λ is a convex combination of the base's weights of
all steps so far, and of λ_0: weights that sum to 1, as MGDA's, keep summing to 1); the
recorded weights are λ_k, on the raw gradients. The base's logged statistics and its run
report (``solver_failures``) are the method's.

Deviations: none from TorchJD's ``CRMOGMWeighting`` given the same base weights (equal
over several steps on float64 tests, wrapping UPGrad, and MGDA on two tasks where TorchJD's
Frank-Wolfe solver is exact). The base's ``combine`` and ``head_scales`` hooks are applied
to the smoothed weights. Representation-space bases (``mgda_ub``, ``aligned_mtl_ub``) are
not offered: a method's needs and space are fixed per class, and CR-MOGM's are those of
the shared parameters' Jacobian.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.errors import ConfigError, check_config, param
from methods._weighting_utils import per_task_vector
from methods.base import GramianAggregator, MethodConfig, Needs, StepContext
from methods.registry import METHODS, register_method

KEY = "method.cr_mogm"
NEEDS = Needs(jacobian=True)


def base_names() -> list[str]:
    """The registered methods CR-MOGM can wrap: Gramian aggregators that need the Jacobian
    of the shared parameters and nothing else (CR-MOGM itself excepted)."""
    return [name for name in METHODS.names()
            if issubclass(cls := METHODS.get(name), GramianAggregator)
            and not issubclass(cls, CRMOGM) and cls.needs == NEEDS]


def _option_value(key: str, text: str, tp: Any) -> Any:
    """A base option's value: a TOML literal (else a bare string), checked against the
    field's type; an integer is accepted for a float field."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    expected = {bool: "true or false", int: "an integer", float: "a number",
                str: "a string"}.get(tp)
    if expected is None:
        raise ConfigError(f"{KEY}.base_options: {key} ({getattr(tp, '__name__', tp)}) cannot "
                          f"be set here; only numbers, strings and booleans can")
    raise ConfigError(f"{KEY}.base_options: {key}={value!r}: expected {expected}")


@dataclass
class CRMOGMConfig(MethodConfig):
    base: str = "mgda"
    """The wrapped Gramian aggregator (``base_names()``); its choices are the registry's,
    plugins included, so they are checked by ``validate`` rather than a declared domain."""
    alpha: float = param(0.9, low=0.0, high=1.0)
    """EMA coefficient α on the previous weights (TorchJD: 0.9)."""
    base_options: tuple[str, ...] = ()
    """The base's hyperparameters as KEY=VALUE strings; empty: the base's defaults."""
    initial_weights: tuple[float, ...] = ()
    """λ_0, one finite value per task; empty: the base's first weights."""

    def validate(self) -> None:
        allowed = base_names()
        if self.base not in allowed:
            raise ConfigError(f"{KEY}.base={self.base!r} is not valid; expected one of "
                              f"{', '.join(allowed)} (a Gramian aggregator of the shared "
                              f"parameters' gradients)")
        self.base_config()
        if not all(math.isfinite(w) for w in self.initial_weights):
            raise ConfigError(f"{KEY}.initial_weights={list(self.initial_weights)!r}: expected "
                              f"finite numbers")

    def check_training(self, train) -> None:
        self.base_config().check_training(train)

    def base_config(self) -> MethodConfig:
        """The base's config with ``base_options`` applied and checked."""
        cls = METHODS.get(self.base)
        types = typing.get_type_hints(cls.Config)
        names = [f.name for f in dataclasses.fields(cls.Config)]
        values = {}
        for entry in self.base_options:
            name, sep, text = entry.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ConfigError(f"{KEY}.base_options: {entry!r} is not KEY=VALUE (e.g. "
                                  f"\"normalization=l2\")")
            if name not in names:
                known = ", ".join(names) if names else "none"
                raise ConfigError(f"{KEY}.base_options: {self.base} has no option {name!r}; "
                                  f"its options: {known}")
            values[name] = _option_value(f"{self.base}.{name}", text.strip(), types[name])
        config = dataclasses.replace(cls.Config(), **values)
        try:
            check_config(config, self.base)
        except ConfigError as exc:
            raise ConfigError(f"{KEY}.base_options: {exc}") from None
        return config


@register_method("cr_mogm")
class CRMOGM(GramianAggregator):
    description = ("CR-MOGM (Zhou et al., NeurIPS 2022): a Gramian aggregator's weights "
                   "(default MGDA's) smoothed by an exponential moving average over the steps")
    needs = NEEDS
    Config = CRMOGMConfig

    def __init__(self, config: CRMOGMConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        try:
            self.wrapped = METHODS.get(config.base)(config.base_config(), task_names)
        except ConfigError as exc:
            raise ConfigError(f"{KEY}.base={config.base}: {exc}") from None
        if self.wrapped.needs != NEEDS:
            raise ConfigError(f"{KEY}.base={config.base}: under its options it needs "
                              f"{self.wrapped.needs.describe()}; CR-MOGM takes a base that "
                              f"needs the shared parameters' Jacobian only")
        initial = per_task_vector(f"{KEY}.initial_weights", config.initial_weights,
                                  self.num_tasks, 0.0)
        # derived from the config: not part of the saved state
        self.register_buffer("initial", initial, persistent=False)
        self.has_initial = bool(config.initial_weights)
        # float64: the average accumulates over the whole run
        self.register_buffer("lambd", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def gramian(self, grads: Tensor, ctx: StepContext) -> Tensor:
        return self.wrapped.gramian(grads, ctx)

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        current = self.wrapped.weights(gramian, ctx).detach().to(self.lambd)
        start = self.initial.to(self.lambd) if self.has_initial else current
        # without a host sync: the previous weights, or λ_0 at the first step
        previous = torch.where(self.steps > 0, self.lambd, start)
        alpha = self.config.alpha
        smoothed = alpha * previous + (1.0 - alpha) * current
        self.lambd.copy_(smoothed)
        self.steps += 1
        return smoothed

    def combine(self, weights: Tensor, grads: Tensor) -> Tensor:
        return self.wrapped.combine(weights, grads)

    def head_scales(self, weights: Tensor, ctx: StepContext) -> Tensor | None:
        return self.wrapped.head_scales(weights, ctx)

    def on_epoch_end(self, epoch: int, mean_train_losses: Tensor) -> None:
        self.wrapped.on_epoch_end(epoch, mean_train_losses)

    def run_report(self) -> dict:
        return self.wrapped.run_report()
