"""IMTL-G: Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task
Learning", ICLR 2021 (the gradient balance, Sec. 3.1).

The update d = Σ_t α_t g_t, Σ_t α_t = 1, has equal projections on every unit task gradient:
d·u_t is the same for all t (u_t = g_t / ||g_t||). The paper's closed form is
α_{2..T} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 - Σ α_{2..T}, with rows D_t = g_1 - g_t and
U_t = u_1 - u_t. Written with the Gramian G = J Jᵀ the same condition reads G α = c·n
(n_t = ||g_t||), so α = G⁻¹n / 1ᵀG⁻¹n: that is what we compute, with the pseudo-inverse so
that linearly dependent gradients are handled (TorchJD's generalisation; identical to the
paper's formula whenever G is invertible). If 1ᵀG⁺n = 0 no direction with equal positive
projections exists (e.g. two opposite gradients) and the update is zero.

Hyperparameters: none. Weight scale: α sums to 1 (the paper's constraint); α is recorded
and may have negative entries.

Deviation: the paper (Algorithm 1) takes the gradients w.r.t. the shared feature z for
speed; we use the shared-parameter Jacobian (TorchJD's aggregator, LibMTL's default
parameter-gradient mode), which is the quantity the balance is defined on.
"""
from __future__ import annotations

import torch
from torch import Tensor

from methods.base import GramianAggregator, Needs, StepContext
from methods.registry import register_method


def imtl_g_weights(gramian: Tensor) -> Tensor:
    """α (sums to 1, or all 0 in the degenerate case) from G = J Jᵀ, in float64."""
    G = gramian.detach().to(torch.float64)
    norms = G.diagonal().clamp_min(0).sqrt()
    v = torch.linalg.pinv(G, hermitian=True) @ norms
    total = v.sum()
    # 1e-12 relative to the scale of v: below it the sum is rounding noise
    degenerate = total.abs() <= 1e-12 * v.abs().sum().clamp_min(1e-300)
    return torch.where(degenerate, torch.zeros_like(v), v / torch.where(degenerate, 1.0, total))


@register_method("imtl_g")
class IMTLG(GramianAggregator):
    description = ("IMTL-G (Liu et al. 2021): weights summing to 1 so that the update has equal "
                   "projections on every unit task gradient")
    needs = Needs(jacobian=True)

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        return imtl_g_weights(gramian)
