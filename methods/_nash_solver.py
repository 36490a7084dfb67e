"""The Nash bargaining weights of Nash-MTL: α > 0 with (Gα)_i = 1/α_i, from the Gramian G.

The system (G α)_i = 1/α_i for all i is the stationarity condition of the strictly convex

    f(α) = ½ αᵀ G α − Σ_i log α_i          (α > 0),

whose unique minimiser (when it exists) is therefore the bargaining solution. ``f`` is
self-concordant (a convex quadratic plus a log barrier), so damped Newton with a
backtracking line search converges globally and quadratically near the solution. The
solution does not exist when some non-negative combination of the task gradients vanishes
(e.g. two exactly opposed gradients, or a task whose gradient is zero): ``f`` is then
unbounded below, the iterates run off to infinity, and the solve reports that it did not
converge.

Scale: with G scaled by c the solution scales by 1/√c, so the solve runs on G/‖G‖_F (as
the authors' code does) and rescales the answer; the residual max_i |α_i (Gα)_i − 1| is
scale-free.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

ARMIJO = 0.25
MIN_STEP = 1e-12


@dataclass
class NashSolution:
    alpha: np.ndarray
    """[T] weights in the scale of the given Gramian (meaningful only when converged)."""
    converged: bool
    iterations: int
    residual: float
    """max_i |α_i (Gα)_i − 1| at the returned α."""
    reason: str = ""
    """Why the solve failed (empty when it converged)."""


def host_gram(gram: Tensor | np.ndarray) -> np.ndarray:
    """The T×T Gramian as a float64 host array (the only thing a solve moves to the host)."""
    if isinstance(gram, Tensor):
        return gram.detach().cpu().double().numpy()
    return np.asarray(gram, dtype=float)


def _objective(gram: np.ndarray, alpha: np.ndarray) -> float:
    return 0.5 * float(alpha @ gram @ alpha) - float(np.log(alpha).sum())


def nash_weights(gram: Tensor | np.ndarray, init: np.ndarray | None = None,
                 max_iter: int = 20, tol: float = 1e-6) -> NashSolution:
    """Solve (Gα)_i = 1/α_i by damped Newton, warm-started from ``init`` (the previous
    step's α, in the Gramian's scale) when given. Only the T×T Gramian comes to the host."""
    g = host_gram(gram)
    num = g.shape[0]
    if not np.isfinite(g).all():
        return NashSolution(np.full(num, np.nan), False, 0, float("nan"), "non-finite Gramian")
    scale = float(np.linalg.norm(g))
    if scale == 0.0:
        return NashSolution(np.full(num, np.nan), False, 0, float("nan"), "zero Gramian")
    gn = g / scale
    root = np.sqrt(scale)
    start = np.ones(num)
    if init is not None and np.isfinite(init).all() and (init > 0).all():
        start = np.asarray(init, float) * root
    # The best point on the ray through the start: f(s·β) is least at s² βᵀGβ = T.
    curvature = float(start @ gn @ start)
    beta = start * np.sqrt(num / curvature) if curvature > 0 else start
    residual = float("inf")
    for it in range(max_iter + 1):
        g_beta = gn @ beta
        residual = float(np.abs(beta * g_beta - 1.0).max())
        if residual <= tol:
            return NashSolution(beta / root, True, it, residual)
        if it == max_iter:
            break
        grad = g_beta - 1.0 / beta
        hessian = gn + np.diag(1.0 / beta ** 2)
        step = -np.linalg.solve(hessian, grad)
        decrement = -float(grad @ step)
        shrinking = step < 0
        t = 1.0
        if shrinking.any():  # stay inside α > 0
            t = min(1.0, 0.99 * float((-beta[shrinking] / step[shrinking]).min()))
        f0 = _objective(gn, beta)
        while _objective(gn, beta + t * step) > f0 - ARMIJO * t * decrement:
            t *= 0.5
            if t < MIN_STEP:
                return NashSolution(beta / root, False, it, residual, "line search stalled")
        beta = beta + t * step
    return NashSolution(beta / root, False, max_iter, residual,
                        f"not converged in {max_iter} iterations (residual {residual:.2e}); "
                        f"the task gradients may admit no bargaining solution")
