"""ConFIG: Liu, Chen, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
Neural Networks", ICLR 2025 (arXiv 2408.11104); authors' code: github.com/tum-pbs/ConFIG
(package ``conflictfree``); also TorchJD's ``ConFIG`` aggregator.

The update (the paper's Eq. 2) has the same cosine with every task gradient, and its length
is the sum of the task gradients' projections on its direction:

    d = (Σ_t g_t·û) û,   û = U⁺1 / ||U⁺1||,

where U is the [T, P] matrix of the unit task gradients g_t/||g_t|| and U⁺ its
pseudo-inverse. When the task gradients are linearly independent (T ≤ P), U û = 1/||U⁺1||:
every unit gradient has the same positive inner product with û, so d conflicts with no task
and is equally aligned with each ("conflict-free").

Computed from the Gramian G = J Jᵀ: with S = diag(1/||g_t||) (0 for a zero gradient), the
unit gradients' Gramian is Ĝ = S G S, U⁺1 = Uᵀ Ĝ⁺1 = Jᵀ S Ĝ⁺1, so d = Σ_t w_t g_t with
b = S Ĝ⁺1, c = b / √(bᵀGb) and w = (1ᵀGc) c. The Jacobian is used once, for Jᵀw.

Hyperparameters: none (TorchJD's and the authors' default: equal weights 1 on the unit
gradients, the paper's 1 in U⁺1).

Weight scale: the recorded weights are w, on the raw gradients (unnormalised: the update's
length is Σ_t g_t·û, as in the paper).

Notes and deviations:
- The pseudo-inverse drops the eigen-directions of Ĝ whose eigenvalue is below
  λ_max·T·eps, with the eps of the Gramian's dtype (the float32 of training: below it an
  eigenvalue is rounding noise), as Aligned-MTL does here. TorchJD takes the pseudo-inverse
  of the [T, P] matrix U itself (``torch.linalg.pinv``: singular values below
  max(T, P)·eps·σ_max dropped), the authors' code a least-squares solve. All agree when the
  unit gradients are linearly independent and not nearly dependent, the paper's setting,
  and P·eps < 1: TorchJD's tolerance grows with P, and beyond 1/eps ≈ 8.4 million float32
  parameters (ResNet-18 has 11 million) it drops every singular value and returns zero.
- With every gradient zero (or ||U⁺1|| below 1e-12) the update is zero (TorchJD's
  ``normalize`` returns zero there too).
- The authors' other options (weight models, length models, momentum variant M-ConFIG) and
  TorchJD's preference vector are not offered.
"""
from __future__ import annotations

import torch
from torch import Tensor

from methods.base import GramianAggregator, Needs, StepContext
from methods.registry import register_method


def config_weights(gramian: Tensor) -> Tensor:
    """w [T] with Σ_t w_t g_t = ConFIG's update, from G = J Jᵀ (computed in float64, with
    the rank tolerance of the Gramian's own dtype)."""
    eps = torch.finfo(gramian.dtype).eps
    G = gramian.detach().to(torch.float64)
    T = G.shape[0]
    norms = G.diagonal().clamp_min(0).sqrt()
    inv = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), torch.zeros_like(norms))
    unit_gram = inv[:, None] * G * inv[None, :]
    eigenvalues, basis = torch.linalg.eigh(unit_gram)
    tol = eigenvalues.max().clamp_min(0) * T * eps
    kept = eigenvalues > tol
    inverse = torch.where(kept, 1.0 / torch.where(kept, eigenvalues, 1.0),
                          torch.zeros_like(eigenvalues))
    a = basis @ (inverse * (basis.T @ torch.ones(T, dtype=G.dtype, device=G.device)))
    b = inv * a                                                  # U⁺1 = Jᵀ b
    norm = (b @ G @ b).clamp_min(0).sqrt()
    tiny = norm <= 1e-12
    c = torch.where(tiny, torch.zeros_like(b), b / torch.where(tiny, 1.0, norm))  # û = Jᵀ c
    length = (G @ c).sum()                                       # Σ_t g_t·û
    return length * c


@register_method("config")
class ConFIG(GramianAggregator):
    description = ("ConFIG (Liu, Chen, Thuerey, ICLR 2025): the direction with equal cosine to "
                   "every task gradient, scaled by the sum of their projections on it")
    needs = Needs(jacobian=True)

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        return config_weights(gramian)
