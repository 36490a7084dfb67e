"""Fixed task weights (linear scalarization): minimise Σ_t w_t L_t with constant w.

The baseline of Xin et al. ("Do Current Multi-Task Optimization Methods in Deep Learning
Even Help?", NeurIPS 2022): sweeping w over a grid traces the front of static weightings,
against which every adaptive method is compared. ``method.fixed.weights`` lists one
non-negative weight per task (not all zero); empty means 1 for every task, which is equal
weighting. The weights are applied as given (no normalisation), so [0.5, 0.5] is half of
equal weighting's objective: under Adam the two runs differ only through Adam's ε.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import ConfigError
from methods._weighting_utils import per_task_vector
from methods.base import MethodConfig, StepContext, Weighted, Weighting
from methods.registry import register_method


@dataclass
class FixedConfig(MethodConfig):
    weights: tuple[float, ...] = ()
    """One weight per task (≥ 0, not all 0); empty: 1 for every task."""

    def validate(self) -> None:
        # Checked when the run is resolved, before anything is written; the count needs the
        # benchmark's tasks and is checked when the method is built.
        _check_values(self.weights)


def _check_values(weights: tuple[float, ...]) -> None:
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ConfigError(f"method.fixed.weights={list(weights)!r} is out of range; every "
                          f"weight must be a finite number >= 0")
    if weights and not any(weights):
        raise ConfigError("method.fixed.weights are all 0; expected at least one positive "
                          "weight")


@register_method("fixed")
class FixedWeights(Weighting):
    description = "Fixed task weights w (linear scalarization; empty weights = equal weighting)"
    Config = FixedConfig

    def __init__(self, config: FixedConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        _check_values(config.weights)  # also for a config built without validate()
        weights = per_task_vector("method.fixed.weights", config.weights, self.num_tasks, 1.0)
        # float64: the weights as given, whatever precision the losses come in.
        self.register_buffer("weights", weights)

    def weigh(self, ctx: StepContext) -> Weighted:
        losses = ctx.losses.detach()
        return Weighted(weights=self.weights.to(device=losses.device, dtype=losses.dtype))
