"""DualProj: the mean task gradient projected onto the dual cone of the task gradients.

Paper: D. Lopez-Paz, M. Ranzato, "Gradient Episodic Memory for Continual Learning",
NeurIPS 2017 (the projection of Eq. 11, there of the current task's gradient onto the cone
of the memories' gradients); as a multi-task aggregator: Quinton & Rey, "Jacobian Descent
for Multi-Objective Optimization", 2024 (arXiv 2406.16232), TorchJD's ``DualProj``.

The update is the Euclidean projection of the mean gradient ḡ = (1/T) Σ_t g_t onto the dual
cone {x : g_t·x ≥ 0 for all t}: the closest direction to ḡ that conflicts with no task. It
equals ḡ when ḡ conflicts with no task. UPGrad (methods/upgrad.py) projects every g_t/T
separately and sums; DualProj projects their sum once.

By Proposition 1 of Quinton & Rey the projection of Jᵀu is Jᵀv with
v = argmin_{v ≥ u} vᵀGv (G = J Jᵀ); here u = (1/T, ..., 1/T), and v are the weights.

Hyperparameters (``method.dualproj.*``), TorchJD's defaults (those of UPGrad):
- ``norm_eps`` = 1e-4: G is divided by its trace; below ``norm_eps`` it is taken as zero
  (TorchJD's rule), and the weights become 1/T each;
- ``reg_eps`` = 1e-4: added to the diagonal of the normalised G, so that the quadratic
  program has a unique solution;
- ``tol`` = 1e-7: KKT tolerance (normalised units) above which a solve counts as failed.

The regularisation makes the promise approximate: d·g_t ≥ -reg_eps·||J||²_F·v_t.

Weight scale: the mean-gradient convention (1/T each without conflicts); the recorded
weights are those on the raw gradients, d = Σ_t v_t g_t.

Solver: the quadratic program is UPGrad's, solved the same way (exactly, as a non-negative
least-squares problem, instead of TorchJD's quadprog; checked by its KKT conditions; a
failed or inaccurate solve is counted, logged and reported in summary.json, and its
feasible iterate used). Only the T×T Gramian goes to the host.

Deviations: none in the result (same quadratic program, same normalisation and
regularisation, unique solution). TorchJD's optional preference vector (projecting another
combination than the mean) is not offered.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from methods._solver import SolverAccounting
from methods.base import GramianAggregator, Needs, StepContext
from methods.registry import register_method
from methods.upgrad import (ProjectionConfig, UPGradSolution, project_weights,
                            regularised_gramian)


def dualproj_weights(gramian: Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                     tol: float = 1e-7) -> UPGradSolution:
    """DualProj's weights on the raw gradients, from the Gramian (float64, host)."""
    G = regularised_gramian(gramian, norm_eps, reg_eps)
    T = G.shape[0]
    v, kkt = project_weights(np.full(T, 1.0 / T), G, np.linalg.cholesky(G))
    return UPGradSolution(torch.from_numpy(v), kkt <= tol, kkt)


@register_method("dualproj")
class DualProj(SolverAccounting, GramianAggregator):
    description = ("DualProj (GEM; Quinton & Rey 2024): the mean gradient projected onto the "
                   "dual cone of the task gradients (never conflicting)")
    needs = Needs(jacobian=True)

    Config = ProjectionConfig

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        sol = dualproj_weights(gramian, self.config.norm_eps, self.config.reg_eps,
                               self.config.tol)
        self.record_solve(ctx, sol.ok, f"KKT error {sol.kkt_error:.2e}")
        return sol.weights
