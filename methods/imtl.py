"""IMTL: Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task
Learning", ICLR 2021 (the hybrid balance, Sec. 3.3, Algorithm 1).

IMTL-L and IMTL-G together: the losses are scaled as e^{s_t} L_t with learnable s_t
(objective Σ_t e^{s_t} L_t - s_t for the heads and for s), and the shared parameters
receive the IMTL-G combination Σ_t α_t ĝ_t of the scaled gradients ĝ_t = e^{s_t} g_t, α
summing to 1 with equal projections of the update on every unit gradient.

Hyperparameters: none (s_t = 0 at the start).
Weight scale: the recorded weights are those applied to the raw shared-parameter
gradients, α_t e^{s_t} (their sum is 1 while s = 0); the heads receive e^{s_t} ∇L_t.
s lives in the state_dict (checkpoints).

Matches LibMTL's IMTL (which applies α to the scaled gradients and lets s and the heads
follow the scaled losses). Deviation: the paper computes the IMTL-G step on the gradients
w.r.t. the shared feature z; we use the shared-parameter Jacobian (as LibMTL does by
default). α comes from methods.imtl_g.imtl_g_weights.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from methods.base import Needs, StepContext, Weighted, Weighting
from methods.imtl_g import imtl_g_weights
from methods.imtl_l import imtl_l_objective
from methods.registry import register_method


def imtl_weights(gramian: Tensor, scales: Tensor) -> Tensor:
    """Weights on the raw gradients: α(diag(e^s) G diag(e^s)) ∘ e^s."""
    e = scales.detach().to(torch.float64).exp()
    scaled = gramian.detach().to(torch.float64) * (e[:, None] * e[None, :])
    return imtl_g_weights(scaled) * e


@register_method("imtl")
class IMTL(Weighting):
    description = ("IMTL (Liu et al. 2021): learnable loss scales (IMTL-L) plus IMTL-G on the "
                   "scaled shared-parameter gradients")
    needs = Needs(jacobian=True)

    def __init__(self, config, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.scales = nn.Parameter(torch.zeros(self.num_tasks))

    def weigh(self, ctx: StepContext) -> Weighted:
        J = ctx.jacobian()
        scales = self.scales.to(ctx.losses.dtype)
        weights = imtl_weights(J @ J.T, scales).to(ctx.losses.dtype)
        return Weighted(weights=weights, objective=imtl_l_objective(ctx.losses, scales))
