"""STCH: smooth Tchebycheff scalarization.

Paper: X. Lin, X. Zhang, Z. Yang, F. Liu, Z. Wang, Q. Zhang, "Smooth Tchebycheff
Scalarization for Multi-Objective Optimization", ICML 2024 (official code: Xi-L/STCH,
``STCH_MTL/LibMTL/weighting/STCH.py``, since merged into LibMTL).

What it does: minimises the smooth maximum μ·log Σ_t exp(f_t / μ) of the normalised
log-losses f_t = log(L_t / n_t), times T; as μ → 0 it approaches the Tchebycheff
scalarization max_t f_t, so the worst-off task (relative to its nadir n_t) drives the update.

Schedule, as in the authors' code:
- epochs 0 .. W−1 (warm-up): minimise Σ_t log L_t (equal weighting of the log-losses);
- epoch W: the same objective, while the batch losses are summed;
- from epoch W+1: the nadir n_t is the mean batch loss of epoch W, and STCH is minimised.
The ideal point z* is 0 in the normalised log space (the code's choice: f_t is measured from
L_t = n_t) and the preference vector is λ_t = 1 for every task.

Hyperparameters (the authors' defaults): ``mu`` 1.0 (the smoothing μ), ``warmup_epochs`` 4
(W). With ``train.epochs`` ≤ W + 1 the run never leaves the warm-up.

Weight scale: the weights recorded (and applied) are the gradient weights of the objective
with respect to the raw losses: during warm-up 1/L_t; afterwards T·p_t / L_t with
p = softmax(f / μ) (so Σ_t w_t L_t = T). Backpropagating Σ_t w_t L_t gives exactly the
gradient of the authors' objective.

Deviations: none in the update. The authors' 1e-20 inside the logarithms is kept; the
max-subtraction they use for numerical stability is implicit in the softmax. The nadir
accumulator and the nadir are saved in the state dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.errors import param
from methods.base import MethodConfig, StepContext, Weighted, Weighting
from methods.registry import register_method

TINY = 1e-20


@dataclass
class STCHConfig(MethodConfig):
    mu: float = param(1.0, low=0.0, low_open=True)
    """Smoothing parameter μ > 0 (the authors' default: 1)."""
    warmup_epochs: int = param(4, low=0)
    """W: epochs of log-loss equal weighting; the nadir is the mean loss of epoch W."""


def stch_objective(losses: Tensor, nadir: Tensor, mu: float) -> Tensor:
    """T·μ·log Σ_t exp(log(L_t/n_t + 1e-20) / μ)."""
    f = torch.log(losses / nadir + TINY)
    return losses.shape[0] * mu * torch.logsumexp(f / mu, dim=0)


def stch_weights(losses: Tensor, nadir: Tensor, mu: float) -> Tensor:
    """[T] gradient weights of ``stch_objective``: T·p_t / (L_t + 1e-20·n_t),
    p = softmax(log(L/n + 1e-20) / μ)."""
    p = torch.softmax(torch.log(losses / nadir + TINY) / mu, dim=0)
    return losses.shape[0] * p / (losses + TINY * nadir)


def log_loss_weights(losses: Tensor) -> Tensor:
    """[T] gradient weights of the warm-up objective Σ_t log(L_t + 1e-20)."""
    return 1.0 / (losses + TINY)


@register_method("stch")
class SmoothTchebycheff(Weighting):
    description = "STCH: smooth Tchebycheff (log-sum-exp) of nadir-normalised log-losses after a warm-up"
    Config = STCHConfig

    def __init__(self, config: STCHConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.register_buffer("loss_sum", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("nadir", torch.ones(self.num_tasks, dtype=torch.float64))
        self.loss_count = 0
        self.has_nadir = False

    def weigh(self, ctx: StepContext) -> Weighted:
        losses = ctx.losses.detach()
        warmup = self.config.warmup_epochs
        if ctx.epoch <= warmup:
            if ctx.epoch == warmup:
                self.loss_sum += losses.to(self.loss_sum.dtype)
                self.loss_count += 1
            return Weighted(weights=log_loss_weights(losses))
        if not self.has_nadir:
            if self.loss_count == 0:
                raise RuntimeError(f"STCH reached epoch {ctx.epoch} without a loss recorded in "
                                   f"its nadir epoch {warmup}")
            self.nadir.copy_(self.loss_sum / self.loss_count)
            self.has_nadir = True
        weights = stch_weights(losses, self.nadir.to(losses.dtype), self.config.mu)
        return Weighted(weights=weights)

    def get_extra_state(self) -> Any:
        return {"loss_count": self.loss_count, "has_nadir": self.has_nadir}

    def set_extra_state(self, state: Any) -> None:
        self.loss_count = int(state["loss_count"])
        self.has_nadir = bool(state["has_nadir"])
