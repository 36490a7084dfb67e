"""Aligned-MTL: Senushkin, Patakin, Kuznetsov, Konushin, "Independent Component Alignment
for Multi-Task Learning", CVPR 2023 (arXiv 2305.19000); authors' code: github.com/
SamsungLabs/MTL (code/optim/aligned/solver.py ProcrustesSolver, balancer.py
AlignedMTLBalancer).

The task gradients are replaced by the closest orthogonal system, rescaled, so that the
linear system of gradients has condition number one: with the gradient matrix G = UΣVᵀ
(tasks as columns), the aligned gradients are Ĝ = σ U Vᵀ = G V Σ⁻¹ Vᵀ σ, and the update is
their sum. From the T×T Gramian GᵀG = V Λ Vᵀ (Λ = Σ²) this is the direction Σ_t w_t g_t with

    w = V diag(√λ_scale / √λ_k) Vᵀ · 1,

where the eigenvalues below λ_max · T · eps are dropped (rank truncation, as the authors'
code does) and λ_scale is the smallest kept eigenvalue (``scale_mode="min"``, the paper's
choice), their median (``"median"``) or their mean (``"rmse"``), the authors' three modes.
The condition number of the gradient system, √(λ_max / λ_min) over the kept eigenvalues, is
logged as ``condition_number`` (the quantity the paper tracks).

Hyperparameters: ``scale_mode`` = "min" (paper and code default).

Weight scale: the weights w are recorded as applied (unnormalised; for orthonormal gradients
they are all 1, the sum of the gradients).

Notes and deviations:
- The authors use ``torch.finfo().eps`` (the default dtype's, float32) in the rank
  tolerance; here the eps of the Gramian's dtype is used (the same in float32 training).
- Dropped eigen-directions are masked rather than sliced, so the computation stays on the
  device without a host sync; with no eigenvalue above the tolerance (all gradients zero)
  the direction is zero (the authors' code fails on the empty slice).
- The authors' median mode uses ``torch.median`` (the lower median for an even count);
  so does this module.
- Task heads receive the gradient of their own loss, as in the authors' code with its
  default ``scale_decoder_grad=False``. LibMTL's Aligned_MTL computes the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import param
from methods.base import GramianAggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method

SCALE_MODES = ("min", "median", "rmse")


def alignment_matrix(gram: Tensor, scale_mode: str = "min") -> tuple[Tensor, Tensor]:
    """B = V diag(√λ_scale / √λ_k) Vᵀ [T, T] (zero on the dropped eigen-directions), such
    that the aligned gradients are the rows of B·J, and the condition number of the gradient
    system (over the kept eigenvalues)."""
    eigenvalues, basis = torch.linalg.eigh(gram)
    tol = eigenvalues.max() * gram.shape[-1] * torch.finfo(gram.dtype).eps
    kept = eigenvalues > tol
    smallest = torch.where(kept, eigenvalues, torch.full_like(eigenvalues, float("inf"))).min()
    if scale_mode == "min":
        scale = smallest
    elif scale_mode == "median":
        nan = torch.full_like(eigenvalues, float("nan"))
        scale = torch.where(kept, eigenvalues, nan).nanmedian()
    else:
        scale = (eigenvalues * kept).sum() / kept.sum().clamp(min=1)
    factors = torch.where(kept, scale.sqrt() / eigenvalues.clamp(min=tol).sqrt(),
                          torch.zeros_like(eigenvalues))
    condition = (eigenvalues.max() / smallest).sqrt()
    return (basis * factors) @ basis.T, condition


def aligned_weights(gram: Tensor, scale_mode: str = "min") -> tuple[Tensor, Tensor]:
    """Weights w = B·1 [T]: Σ_t w_t g_t is the sum of the aligned gradients; and the
    condition number."""
    matrix, condition = alignment_matrix(gram, scale_mode)
    return matrix.sum(1), condition


@dataclass
class AlignedMTLConfig(MethodConfig):
    scale_mode: str = param("min", choices=SCALE_MODES)


@register_method("aligned_mtl")
class AlignedMTL(GramianAggregator):
    description = "Aligned-MTL: sum of the task gradients aligned to condition number one"
    needs = Needs(jacobian=True)
    Config = AlignedMTLConfig

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        weights, condition = aligned_weights(gramian, self.config.scale_mode)
        ctx.log("condition_number", condition)
        return weights

    def combine(self, weights: Tensor, grads: Tensor) -> Tensor:
        return grads.T @ weights  # Jᵀw as a matrix-vector product (w @ J may round differently)
