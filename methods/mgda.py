"""MGDA: Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.

The shared parameters follow the min-norm point of the convex hull of the task gradients,
d = Σ_t α_t g_t with α = argmin_{α ∈ simplex} ||Σ_t α_t ĝ_t||², where ĝ_t = g_t / n_t are
the gradients normalised as chosen (the authors' ``normalization_type``); d is a common
descent direction of every task (d·g_t ≥ 0) unless it is zero (a Pareto-stationary point).

Hyperparameters (``method.mgda.*``):
- ``normalization`` = none | l2 | loss | loss+ : n_t = 1, ||g_t||, L_t, L_t·||g_t|| (the
  authors' code and LibMTL offer the same four; default none, LibMTL's default, the
  paper's algorithm).
- ``max_iter`` = 250 and ``tol`` = 1e-5: the solver's budget (the authors' MAX_ITER) and
  its stopping tolerance on the Frank-Wolfe duality gap relative to max_t ||ĝ_t||².

Weight scale: α sums to 1 (the paper's convention); the recorded weights are α, and the
update is Σ_t α_t g_t on the raw gradients.

Solver: methods/_min_norm.py (analytic for two tasks; Frank-Wolfe from the best pair, with
away steps, for more), on the T×T Gramian only. For T = 2 the minimiser is exact; for
T ≥ 3 it is exact only to ``tol`` (the solve stops once the duality gap is below it). A solve that does not reach its tolerance
is counted and logged (``solver_failures``) and reported in summary.json; its iterate,
a point of the simplex, is still used.

Deviations and choices:
- The authors' code multiplies the raw losses by α (``Σ α_t L_t`` backpropagated), so the
  normalisation only steers the solver; LibMTL, with parameter gradients, instead applies
  α to the normalised gradients (Σ α_t g_t / n_t). We follow the authors' code.
- The authors' two-task solver returns 0.999 / 0.001 instead of 1 / 0 when one gradient
  dominates; we return the exact minimiser (T = 2).
- Task-specific heads receive the gradient of their own loss (this engine's rule); in the
  authors' code they receive α_t times it.
- A zero-norm gradient is left at zero by the l2 / loss+ normalisations (the authors'
  code divides by zero there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import param
from methods._min_norm import MinNormResult, min_norm_element
from methods._solver import SolverAccounting
from methods.base import GramianAggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def gradient_normalizers(gramian: Tensor, losses: Tensor, normalization: str) -> Tensor:
    """n_t of the authors' ``gradient_normalizers``, from the Gramian and the loss values."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    if normalization == "none":
        return torch.ones_like(norms)
    if normalization == "l2":
        return norms
    if normalization == "loss":
        return losses.to(norms.dtype)
    if normalization == "loss+":
        return losses.to(norms.dtype) * norms
    raise ValueError(f"unknown MGDA normalization {normalization!r}")


def mgda_weights(gramian: Tensor, losses: Tensor | None = None, normalization: str = "none",
                 max_iter: int = 250, tol: float = 1e-5) -> MinNormResult:
    """α on the simplex: the min-norm point of the hull of the normalised gradients."""
    G = gramian.detach().to(device="cpu", dtype=torch.float64)
    if normalization != "none":
        if losses is None and normalization in ("loss", "loss+"):
            raise ValueError(f"normalization {normalization!r} needs the loss values")
        n = gradient_normalizers(G, None if losses is None else
                                 losses.detach().to(device="cpu", dtype=torch.float64),
                                 normalization)
        n = torch.where(n == 0, torch.ones_like(n), n)
        G = G / (n[:, None] * n[None, :])
    return min_norm_element(G, max_iter=max_iter, tol=tol)


class _MinNormAggregator(SolverAccounting, GramianAggregator):
    """MGDA on the rows of whatever matrix the engine hands over (parameters or Z)."""

    @dataclass
    class Config(MethodConfig):
        normalization: str = param("none", choices=NORMALIZATIONS)
        """Gradient normalisation before the solve: none | l2 | loss | loss+."""
        max_iter: int = param(250, low=1)
        tol: float = param(1e-5, low=0, low_open=True)

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        result = mgda_weights(gramian, ctx.losses, self.config.normalization,
                              self.config.max_iter, self.config.tol)
        self.record_solve(ctx, result.converged,
                          f"duality gap {result.gap:.2e} after {result.iterations} iterations")
        return result.weights


@register_method("mgda")
class MGDA(_MinNormAggregator):
    description = ("MGDA (Sener & Koltun 2018): min-norm point of the convex hull of the "
                   "task gradients of the shared parameters (weights sum to 1)")
    needs = Needs(jacobian=True)
