"""GLS: the geometric loss strategy (geometric mean of the task losses).

Paper: S. Chennupati, G. Sistu, S. Yogamani, S. Rawashdeh, "MultiNet++: Multi-Stream
Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops
2019.

What it does: minimises (Π_t L_t)^(1/T), the geometric mean of the T task losses, which
makes the update invariant to rescaling any one loss (up to the overall step size).

Hyperparameters: none.

Weight scale: the weights recorded (and applied) are the gradient weights of the objective,
w_t = ∂G/∂L_t = G / (T·L_t) with G the geometric mean, so Σ_t w_t L_t = G. They do not sum
to a constant; w_t·L_t = G/T is the same for every task.

Deviations: none in the gradient. G is computed in log space, exp(mean log L), which is the
same value as LibMTL's prod(L)^(1/T) but does not overflow or underflow when the product of
many losses leaves the floating-point range. LibMTL records L_t/(T·Π L) as the "weights",
which is not the weight its gradient applies; here the applied weights are recorded.
Every loss must be positive (the geometric mean of a zero loss has no gradient).
"""
from __future__ import annotations

import torch
from torch import Tensor

from methods.base import StepContext, Weighted, Weighting
from methods.registry import register_method


def gls_objective(losses: Tensor) -> Tensor:
    """The geometric mean of the positive losses [T]."""
    return torch.exp(torch.log(losses).mean())


def gls_weights(losses: Tensor) -> Tensor:
    """[T] gradient weights of the geometric mean: G / (T·L_t)."""
    return gls_objective(losses) / (losses.shape[0] * losses)


@register_method("gls")
class GeometricLossStrategy(Weighting):
    description = "GLS: minimise the geometric mean of the task losses (scale-invariant)"

    def weigh(self, ctx: StepContext) -> Weighted:
        return Weighted(weights=gls_weights(ctx.losses.detach()))
