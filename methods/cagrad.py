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

- ``solver`` = "active_set": see below; "slsqp" is the authors' SciPy call.
- ``scale`` = "mean" | "sum": the update as above, or multiplied by T. The authors'
  NYUv2/Cityscapes code multiplies the shared parameters' update by the number of tasks
  (×3 on NYUv2, ×2 on Cityscapes, "to match the sum loss"), the heads keeping the
  gradient of their own loss; LibMTL does not. ``sum`` does the same (the recorded w' are
  multiplied by T too). What the factor changes depends on the run's optimizer: under SGD
  (with or without momentum) and no weight decay it is the same as a learning rate T times
  larger on the shared parameters only (the heads' unchanged), so not the same as a larger
  ``train.lr``; under SGD with weight decay λ, that learning rate with decay λ/T. Under
  Adam the step does not depend on the gradient's scale except through ε and the L2 weight
  decay (×T is Adam with ε/T and decay λ/T); under AdamW, whose decay is decoupled, only
  through ε.

Solver: the dual is convex, so its minimum is certified by a Frank-Wolfe gap. By default it
is found by a primal active-set Newton method (``_dual_active_set``: Newton steps on the
face of the simplex spanned by the current support, coordinates leaving at 0 and joining
by the smallest partial derivative) run until that gap is below 1e-10; it takes half the
time of SLSQP at T = 3 and a fifth at T = 64, and falls back to SLSQP if it ever stalls
(about 1% of random ill-conditioned or degenerate Gramians in our checks, none in
training). ``solver = "slsqp"`` solves as in the authors' code, with scipy's SLSQP from
the uniform point. Both run on the T×T Gramian moved to the host. Choices: the Gramian is first divided by its
largest diagonal entry (the minimiser does not change; SLSQP's absolute tolerances then
mean the same at every gradient scale) and the tolerance is tightened to 1e-12 (SciPy's
default 1e-6 left optimality gaps near 1e-3 in our checks). Every solve is checked by its
Frank-Wolfe gap ∇f(w)·w - min_t ∇f(w)_t; a solve that SciPy reports as failed or whose
gap exceeds ``tol`` is counted and logged (``solver_failures``) and reported in
summary.json, and its point (always in the simplex) is used.

Deviations: the default solver (above) is not the authors' SLSQP; both reach the same
minimum (a test compares them). The authors' NYUv2/Cityscapes code and LibMTL add 1e-8 to
||g_w|| in λ (their MT10 code, for Meta-World, adds 1e-4), a constant whose effect depends
on the gradient scale; we divide exactly and take λ g_w = 0 when g_w = 0. The default
``scale = "mean"`` leaves out the authors' factor T (above).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from engine.errors import param
from methods._solver import SolverAccounting
from methods.base import GramianAggregator, MethodConfig, Needs, StepContext
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


SOLVERS = ("active_set", "slsqp")
SCALES = ("mean", "sum")
DELTA = 1e-8
"""Added under the square root of ||g_w||², as in the authors' code (keeps f smooth)."""


def _dual(G: np.ndarray, c: float, solver: str = "active_set") -> tuple[np.ndarray, bool, str]:
    """argmin over the simplex of f(w) = wᵀG b + r·sqrt(wᵀGw + δ), r = c·||g_0||."""
    if solver == "active_set":
        w, converged = _dual_active_set(G, c)
        if converged:
            return w, True, "active set converged"
        w, success, message = _dual_slsqp(G, c)
        return w, success, f"active set did not converge; SLSQP: {message}"
    return _dual_slsqp(G, c)


def _radius_and_linear(G: np.ndarray, c: float) -> tuple[float, np.ndarray]:
    T = G.shape[0]
    Gb = G @ np.full(T, 1.0 / T)
    return c * np.sqrt(max(float(Gb.sum() / T), 0.0) + DELTA), Gb


def _dual_slsqp(G: np.ndarray, c: float) -> tuple[np.ndarray, bool, str]:
    """The authors' solve: SciPy's SLSQP from the uniform point."""
    T = G.shape[0]
    b = np.full(T, 1.0 / T)
    radius, Gb = _radius_and_linear(G, c)

    def objective(w: np.ndarray) -> float:
        return float(w @ Gb + radius * np.sqrt(w @ G @ w + DELTA))

    def gradient(w: np.ndarray) -> np.ndarray:
        Gw = G @ w
        return Gb + radius * Gw / np.sqrt(w @ Gw + DELTA)

    from scipy.optimize import minimize  # imported when used: `list` stays light

    res = minimize(objective, b.copy(), jac=gradient, method="SLSQP",
                   bounds=[(0.0, 1.0)] * T,
                   constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum(),
                                 "jac": lambda w: -np.ones_like(w)},),
                   options={"ftol": 1e-12, "maxiter": 200})
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else b
    return w, bool(res.success), str(res.message)


ACTIVE_SET_GAP = 1e-10
"""Frank-Wolfe gap (an upper bound on f(w) − min f) at which the active-set solve stops; f
is O(1) on the normalised Gramian, and SLSQP runs with ftol 1e-12."""


def _dual_active_set(G: np.ndarray, c: float) -> tuple[np.ndarray, bool]:
    """A primal active-set Newton method for the dual, from the uniform point.

    On the current support S (the coordinates free to be positive) it takes Newton steps
    for f restricted to {w_S ≥ 0, Σ w_S = 1} (the KKT system of the equality-constrained
    quadratic model, with a tiny ridge: f's Hessian r(G/s − GwwᵀG/s³) is only positive
    semi-definite), shortened to stay feasible (a coordinate that reaches 0 leaves S) and
    backtracked until f decreases. When the face is exhausted, the coordinate with the
    smallest partial derivative joins S. f is convex, so a Frank-Wolfe gap
    ∇f·w − min_i ∇f_i ≤ ACTIVE_SET_GAP certifies the minimum; returns whether it was
    reached."""
    T = G.shape[0]
    radius, Gb = _radius_and_linear(G, c)

    def value(w: np.ndarray) -> float:
        return float(w @ Gb + radius * np.sqrt(w @ G @ w + DELTA))

    w = np.full(T, 1.0 / T)
    support = np.ones(T, dtype=bool)
    f = value(w)
    for _ in range(20 * T + 20):
        Gw = G @ w
        s = np.sqrt(w @ Gw + DELTA)
        grad = Gb + radius * Gw / s
        gap = float(grad @ w - grad.min())
        if gap <= ACTIVE_SET_GAP:
            return w, True
        idx = np.flatnonzero(support)
        k = idx.size
        hessian = radius * (G[np.ix_(idx, idx)] / s - np.outer(Gw[idx], Gw[idx]) / s ** 3)
        kkt = np.ones((k + 1, k + 1))
        kkt[k, k] = 0.0
        kkt[:k, :k] = hessian + 1e-12 * (1.0 + np.trace(hessian)) * np.eye(k)
        try:
            step = np.linalg.solve(kkt, np.append(-grad[idx], 0.0))[:k]
        except np.linalg.LinAlgError:
            return w, False
        slope = float(grad[idx] @ step)
        if slope > -1e-3 * gap:  # the face has (almost) nothing left to give
            outside = np.where(support, np.inf, grad)
            if outside.min() < grad @ w:  # a coordinate outside S that would lower f
                support[int(np.argmin(outside))] = True
                continue
            if slope >= 0.0:
                return w, False
        shrinking = step < 0
        t_max = float(np.min(-w[idx][shrinking] / step[shrinking])) if shrinking.any() else np.inf
        t = min(1.0, t_max)
        while True:
            candidate = w.copy()
            candidate[idx] = np.maximum(w[idx] + t * step, 0.0)
            candidate_f = value(candidate)
            if candidate_f <= f + 1e-4 * t * slope or t < 1e-12:
                break
            t *= 0.5
        if candidate_f >= f:  # no progress at round-off: judged by the gap above
            return w, gap <= 1e3 * ACTIVE_SET_GAP
        if t == t_max:  # the blocking coordinates leave the support
            ratios = -w[idx][shrinking] / step[shrinking]
            blocked = idx[shrinking][ratios <= t_max * (1 + 1e-12)]
            candidate[blocked] = 0.0
            support[blocked] = False
        candidate /= candidate.sum()
        w, f = candidate, value(candidate)
    return w, False


def cagrad_weights(gramian: Tensor, c: float = 0.4, rescale: int = 1,
                   tol: float = 1e-4, solver: str = "active_set") -> CAGradSolution:
    """CAGrad's combination weights w' from the Gramian (float64, host)."""
    G = gramian.detach().to(device="cpu", dtype=torch.float64)
    T = G.shape[0]
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64)
    divisor = (1.0, 1.0 + c * c, 1.0 + c)[rescale]
    scale = float(G.diagonal().max())
    if c == 0.0 or scale <= 0.0:  # the ball is a point, or every gradient is zero
        return CAGradSolution(mean / divisor, mean, True, 0.0, "no solve needed")
    Gn = (G / scale).numpy()
    w, success, message = _dual(Gn, c, solver)
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
class CAGrad(SolverAccounting, GramianAggregator):
    description = ("CAGrad (Liu et al. 2021): the average gradient corrected towards the worst "
                   "task within a ball of radius c·||g_0||")
    needs = Needs(jacobian=True)

    @dataclass
    class Config(MethodConfig):
        c: float = param(0.4, low=0)
        """Radius of the ball around the average gradient, relative to its norm."""
        rescale: int = param(1, choices=RESCALES)
        """Divide the update by 1 (0), 1 + c² (1) or 1 + c (2)."""
        tol: float = param(1e-4, low=0, low_open=True)
        solver: str = param("active_set", choices=SOLVERS)
        """How the dual is solved: active_set (exact, with SLSQP as fallback) or slsqp (the
        authors' SciPy call)."""
        scale: str = param("mean", choices=SCALES)
        """mean (the update as above) or sum (multiplied by T, the authors' NYUv2/Cityscapes
        code)."""
        late_fields: ClassVar[tuple[str, ...]] = ("scale",)

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        cfg = self.config
        sol = cagrad_weights(gramian, cfg.c, cfg.rescale, cfg.tol, cfg.solver)
        if self.config.c > 0:
            self.record_solve(ctx, sol.ok, f"{sol.message}; optimality gap {sol.gap:.2e}")
        # in the gradients' dtype (the Gramian's) before the sum's factor T
        w = sol.weights.to(device=gramian.device, dtype=gramian.dtype)
        if cfg.scale == "sum":
            w = w * gramian.shape[0]
        return w
