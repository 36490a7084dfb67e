"""UW: uncertainty weighting with learnable homoscedastic log-variances.

Paper: A. Kendall, Y. Gal, R. Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR 2018.

What it does: learns one log-variance s_t per task and minimises
Σ_t L_t / (2·e^{s_t}) + s_t / 2 over the network and the s_t together.

Hyperparameters: ``init_log_var`` (default -0.5, LibMTL's initial value; the paper gives
none). The s_t are an ``nn.Parameter`` trained by the run's optimizer (same learning rate
and weight decay as the network, as in LibMTL).

Weight scale: the recorded weights are w_t = 1 / (2·e^{s_t}) (about 0.82 at the start); they
do not sum to a constant. The backpropagated objective also holds the s_t / 2 terms, which
only the s_t see.

Deviations: the paper weighs classification losses by 1/σ² and regression losses by 1/(2σ²);
LibMTL (and the authors of most later comparisons) use the regression form for every task,
as here, so that the method needs no per-task loss type. At the optimum of s_t,
e^{s_t} = L_t, i.e. each loss is weighted by 1/(2 L_t).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.errors import param
from methods.base import MethodConfig, StepContext, Weighted, Weighting
from methods.registry import register_method


@dataclass
class UWConfig(MethodConfig):
    init_log_var: float = param(-0.5, low=-30.0, high=30.0)
    """Initial log-variance s_t of every task (LibMTL: -0.5)."""


def uw_weights(log_var: Tensor) -> Tensor:
    """[T] loss weights 1 / (2·e^{s_t})."""
    return 0.5 * torch.exp(-log_var)


def uw_objective(losses: Tensor, log_var: Tensor) -> Tensor:
    """Σ_t L_t / (2·e^{s_t}) + s_t / 2."""
    return (uw_weights(log_var) * losses + 0.5 * log_var).sum()


@register_method("uw")
class UncertaintyWeighting(Weighting):
    description = "UW: learnable log-variances s_t, objective Σ L_t/(2e^s_t) + s_t/2"
    Config = UWConfig

    def __init__(self, config: UWConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.log_var = nn.Parameter(torch.full((self.num_tasks,), float(config.init_log_var)))

    def weigh(self, ctx: StepContext) -> Weighted:
        losses = ctx.losses
        log_var = self.log_var.to(losses.dtype)
        return Weighted(weights=uw_weights(log_var).detach(),
                        objective=uw_objective(losses, log_var))
