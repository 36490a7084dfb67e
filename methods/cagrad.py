"""CAGrad: Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021.

The update maximises the worst task's improvement within a ball around the average
gradient g_0: d = argmax_{||d - g_0|| ≤ c||g_0||} min_t g_t·d. Through its dual,
w = argmin_{w ∈ simplex} g_wᵀg_0 + c||g_0|| ||g_w||  (g_w = Σ_t w_t g_t), and
d = g_0 + (c||g_0|| / ||g_w||) g_w, divided by a rescaling factor.

Hyperparameters (``method.cagrad.*``):
- ``c`` = 0.4 (≥ 0): the radius (the paper's and the authors' NYUv2/Cityscapes value;
  LibMTL's default is 0.5). c = 0 gives the average gradient.
- ``rescale`` = 0 | 1 | 2: divide d by 1, 1 + c² (default, the authors' code) or 1 + c.
- ``tol`` = 1e-4: the optimality gap (relative, see below) above which a solve is counted
  as failed.

Weight scale: d = Σ_t w'_t g_t with w'_t = (1/T + λ w_t) / rescale, λ = c||g_0||/||g_w||;
w' is recorded (it sums to 1 when c = 0: the mean-gradient convention).

Solver: the dual is solved as in the authors' code, with scipy's SLSQP from the uniform
point, on the T×T Gramian moved to the host. Choices: the Gramian is first divided by its
largest diagonal entry (the minimiser does not change; SLSQP's absolute tolerances then
mean the same at every gradient scale) and the tolerance is tightened to 1e-12 (SciPy's
default 1e-6 left optimality gaps near 1e-3 in our checks). Every solve is checked by its
Frank-Wolfe gap ∇f(w)·w - min_t ∇f(w)_t; a solve that SciPy reports as failed or whose
gap exceeds ``tol`` is counted and logged (``solver_failures``) and reported in
summary.json, and its point (always in the simplex) is used.

Deviations: the authors add 1e-4 to ||g_w|| in λ (LibMTL 1e-8), a constant whose effect
depends on the gradient scale; we divide exactly and take λ g_w = 0 when g_w = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from engine.errors import check_choice, check_range
from methods._solver import SolverAccounting
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method

RESCALES = (0, 1, 2)


@dataclass
class CAGradSolution:
    weights: Tensor
    """[T] w' on the raw gradients: the update is Σ_t w'_t g_t."""
    dual: Tensor
    """[T] the dual solution w (on the simplex)."""
    ok: bool
    gap: float
    message: str


def _dual(G: np.ndarray, c: float) -> tuple[np.ndarray, bool, str]:
    T = G.shape[0]
    b = np.full(T, 1.0 / T)
    Gb = G @ b
    radius = c * np.sqrt(max(float(b @ Gb), 0.0) + 1e-8)

    def objective(w: np.ndarray) -> float:
        return float(w @ Gb + radius * np.sqrt(w @ G @ w + 1e-8))

    def gradient(w: np.ndarray) -> np.ndarray:
        Gw = G @ w
        return Gb + radius * Gw / np.sqrt(w @ Gw + 1e-8)

    res = minimize(objective, b.copy(), jac=gradient, method="SLSQP",
                   bounds=[(0.0, 1.0)] * T,
                   constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum(),
                                 "jac": lambda w: -np.ones_like(w)},),
                   options={"ftol": 1e-12, "maxiter": 200})
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else b
    return w, bool(res.success), str(res.message)


def cagrad_weights(gramian: Tensor, c: float = 0.4, rescale: int = 1,
                   tol: float = 1e-4) -> CAGradSolution:
    """CAGrad's combination weights w' from the Gramian (float64, host)."""
    G = gramian.detach().to(device="cpu", dtype=torch.float64)
    T = G.shape[0]
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64)
    divisor = (1.0, 1.0 + c * c, 1.0 + c)[rescale]
    scale = float(G.diagonal().max())
    if c == 0.0 or scale <= 0.0:  # the ball is a point, or every gradient is zero
        return CAGradSolution(mean / divisor, mean, True, 0.0, "no solve needed")
    Gn = (G / scale).numpy()
    w, success, message = _dual(Gn, c)
    Gw = Gn @ w
    g0_norm = np.sqrt(max(float(mean.numpy() @ Gn @ mean.numpy()), 0.0))
    gw_norm = np.sqrt(max(float(w @ Gw), 0.0))
    grad = Gn @ mean.numpy() + c * g0_norm * Gw / np.sqrt(w @ Gw + 1e-8)
    gap = float(grad @ w - grad.min())
    lam = c * g0_norm / gw_norm if gw_norm > 0 else 0.0
    weights = (mean + lam * torch.from_numpy(w)) / divisor
    ok = success and gap <= tol
    return CAGradSolution(weights, torch.from_numpy(w), ok, gap, message)


@register_method("cagrad")
class CAGrad(SolverAccounting, Aggregator):
    description = ("CAGrad (Liu et al. 2021): the average gradient corrected towards the worst "
                   "task within a ball of radius c·||g_0||")
    needs = Needs(jacobian=True)
    space = "param"

    @dataclass
    class Config(MethodConfig):
        c: float = 0.4
        """Radius of the ball around the average gradient, relative to its norm."""
        rescale: int = 1
        """Divide the update by 1 (0), 1 + c² (1) or 1 + c (2)."""
        tol: float = 1e-4

        def validate(self) -> None:
            check_range("method.cagrad.c", self.c, 0)
            check_choice("method.cagrad.rescale", str(self.rescale), [str(r) for r in RESCALES])
            check_range("method.cagrad.tol", self.tol, 0, low_open=True)

    def __init__(self, config: Config, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.init_solver_accounting()

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        sol = cagrad_weights(grads @ grads.T, self.config.c, self.config.rescale, self.config.tol)
        if self.config.c > 0:
            self.record_solve(ctx, sol.ok, f"{sol.message}; optimality gap {sol.gap:.2e}")
        w = sol.weights.to(device=grads.device, dtype=grads.dtype)
        return Aggregated(direction=w @ grads, weights=w)
