"""UPGrad: Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
(arXiv 2406.16232), as implemented in TorchJD.

Each task gradient, scaled by 1/T, is projected onto the dual cone of the task gradients,
{x : g_t·x ≥ 0 for all t}, and the projections are summed. The update therefore never
conflicts with any task (d·g_t ≥ 0) and equals the mean gradient when no pair conflicts.

By the paper's Proposition 1 the projection of Jᵀu is Jᵀv with
v = argmin_{v ≥ u} vᵀGv (G = J Jᵀ); the weights are Σ_t v^(t) with u = e_t / T.

Hyperparameters (``method.upgrad.*``), TorchJD's defaults:
- ``norm_eps`` = 1e-4: G is divided by its trace (the squared Frobenius norm of J); below
  ``norm_eps`` it is taken as zero (TorchJD's rule), and the weights become 1/T each;
- ``reg_eps`` = 1e-4: added to the diagonal of the normalised G, so that it is positive
  definite and each QP has a unique solution;
- ``tol`` = 1e-7: KKT tolerance (normalised units) above which a solve counts as failed.

The regularisation makes the promise approximate: d·g_t ≥ -reg_eps·||J||²_F·w_t.

Weight scale: the mean-gradient convention (1/T each without conflicts); the recorded
weights are those on the raw gradients, d = Σ_t w_t g_t.

Solver: TorchJD calls quadprog; to avoid a new dependency each QP is solved exactly
(active set, finite) as a non-negative least-squares problem: with v = u + z, z ≥ 0 and
G = L Lᵀ (Cholesky), vᵀGv = ||Lᵀz + Lᵀu||², so z = nnls(Lᵀ, -Lᵀu) (SciPy). The solution
is checked by its KKT conditions (Gv ≥ 0, z ∘ Gv = 0, up to ``tol``); a failed or
inaccurate solve is counted and logged (``solver_failures``), reported in summary.json,
and its iterate (v ≥ u, feasible) is used. Only the T×T Gramian goes to the host.
Deviations: none in the result (same QP, same regularisation, unique solution).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine.errors import param
from methods._solver import SolverAccounting
from methods.base import GramianAggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method


@dataclass
class UPGradSolution:
    weights: Tensor
    ok: bool
    kkt_error: float


def project_weights(u: np.ndarray, G: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, float]:
    """v = argmin_{v ≥ u} vᵀGv given G = L Lᵀ; returns (v, KKT error)."""
    from scipy.optimize import nnls  # imported when used: `list` stays light

    try:
        z, _ = nnls(L.T, -(L.T @ u))
    except RuntimeError:  # SciPy's iteration limit: reported as a failed solve by the caller
        return u.copy(), float("inf")
    v = u + z
    grad = G @ v
    kkt = max(float(-grad.min()), float(np.abs(z * grad).max()), 0.0)
    return v, kkt


def regularised_gramian(gramian: Tensor, norm_eps: float, reg_eps: float) -> np.ndarray:
    """The Gramian the dual-cone projections solve on (float64, host): divided by its trace
    (zero below ``norm_eps``), plus ``reg_eps`` on the diagonal."""
    G = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    trace = float(np.trace(G))
    G = np.zeros_like(G) if trace < norm_eps else G / trace
    return G + reg_eps * np.eye(G.shape[0])


def upgrad_weights(gramian: Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                   tol: float = 1e-7) -> UPGradSolution:
    """UPGrad's weights on the raw gradients, from the Gramian (float64, host)."""
    G = regularised_gramian(gramian, norm_eps, reg_eps)
    T = G.shape[0]
    L = np.linalg.cholesky(G)
    weights = np.zeros(T)
    worst = 0.0
    for t in range(T):
        u = np.zeros(T)
        u[t] = 1.0 / T
        v, kkt = project_weights(u, G, L)
        weights += v
        worst = max(worst, kkt)
    return UPGradSolution(torch.from_numpy(weights), worst <= tol, worst)


@dataclass
class ProjectionConfig(MethodConfig):
    """The settings of the dual-cone projections (UPGrad, DualProj; TorchJD's defaults)."""

    norm_eps: float = param(1e-4, low=0)
    reg_eps: float = param(1e-4, low=0, low_open=True)
    tol: float = param(1e-7, low=0, low_open=True)


@register_method("upgrad")
class UPGrad(SolverAccounting, GramianAggregator):
    description = ("UPGrad (Quinton & Rey 2024): average of the task gradients projected onto "
                   "the dual cone of all task gradients (never conflicting)")
    needs = Needs(jacobian=True)

    Config = ProjectionConfig

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        sol = upgrad_weights(gramian, self.config.norm_eps, self.config.reg_eps,
                             self.config.tol)
        self.record_solve(ctx, sol.ok, f"KKT error {sol.kkt_error:.2e}")
        return sol.weights
