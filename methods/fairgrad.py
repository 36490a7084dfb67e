"""FairGrad: Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024
(arXiv 2402.15638); authors' code: github.com/OptMN-Lab/fairgrad (methods/weight_methods.py,
class FairGrad).

The update maximises the α-fair utility Σ_i (g_iᵀd)^{1−α}/(1−α) of the tasks' loss
decreases: d = Σ_i w_i g_i with w > 0 solving (G w)_i = w_i^{−1/α}, G = J Jᵀ the Gramian
(α = 1 is proportional fairness, α → ∞ max-min fairness). The authors solve the system with
``scipy.optimize.least_squares`` from w = 1/T under the bound w ≥ 0, multiply the direction
by T ("to match the sum loss") and clip it to norm ``max_norm``; so does this module.

Hyperparameters:
- ``alpha`` = 2.0: the fairness degree α > 0. The paper reports results for several α; the
  authors' published run script (QM9) uses α = 2, which is the default here; their
  command-line default and LibMTL's ``FairGrad_alpha`` default are 1.0.
- ``max_norm`` = 1.0: clipping of the shared update (the authors' ``--max_norm``); 0
  disables.
- ``tol`` = 1e-4: a solve has converged when max_i |(G w)_i w_i^{1/α} − 1| ≤ tol (the
  equations, made scale-free).
- ``solver`` = "newton": how the system is solved. ``least_squares`` is the authors' scipy
  call; ``newton`` is a damped Newton's method on the strictly convex potential
  φ(w) = ½wᵀGw − Σ_i ψ(w_i) (ψ' = w^{−1/α}) whose gradient is the system. The root is
  unique, so both return the same weights (tested to 1e-6 on random Gramians with condition
  numbers up to 1e6); Newton's method takes about 0.1 ms per solve against 0.8 ms, which
  matters on small models where the solve is a large part of the step.

Weight scale: the recorded weights are those actually applied to the task gradients,
T · w times the clipping coefficient (logged as ``clip_coef``). w itself is unnormalised
(units of ‖g‖^{−2α/(α+1)}).

Deviations from the authors' code:
- Failures are detected: the authors use ``res.x`` whatever the solver reports. Here a solve
  that stops without success, or whose equations are not met to ``tol`` (no solution exists
  when a non-negative combination of the gradients vanishes, e.g. exactly opposed
  gradients), is logged (``solver_failures``), warned about once and counted in the run's
  summary (``run_report``); the solver's last iterate is still used, as the authors do,
  unless it is not finite, in which case the starting point w = 1/T is used.
- The default solver is Newton's method (above), not scipy's least squares.
- Tolerances: ``least_squares`` runs with ftol = xtol = gtol = 1e-12 instead of scipy's
  1e-8 defaults, which the authors use: with the defaults about 5% of the solves on random
  ill-conditioned Gramians (condition number > 1e5) stopped before the equations were met
  to 1e-4; with the tighter ones about 1% still fail there, and are counted.
- Conditioning: the system is solved for G/‖G‖_F and w rescaled by ‖G‖_F^{−α/(α+1)}, which
  gives the same solution; the analytic Jacobian G + diag(w^{−1/α−1}/α) is passed to the
  solver (the authors let it difference numerically).
- LibMTL's FairGrad backpropagates Σ w_i L_i: no factor T, no clipping, and heads receive
  w_i ∇L_i. Here, as in the authors' code, the heads receive the gradient of their own loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine.errors import param
from methods._nash_solver import host_gram
from methods._solve_clip import clip_direction
from methods._solver import SolverAccounting
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method


@dataclass
class FairGradSolution:
    weights: np.ndarray
    """[T] w in the scale of the given Gramian."""
    converged: bool
    residual: float
    """max_i |(G w)_i w_i^{1/α} − 1|."""
    reason: str = ""


SOLVERS = ("newton", "least_squares")


def fairgrad_weights(gram: Tensor | np.ndarray, alpha: float, tol: float = 1e-4,
                     solver: str = "newton") -> FairGradSolution:
    """Solve (G w)_i = w_i^{−1/α}, w > 0, from w = 1/T: by Newton's method on the convex
    potential whose gradient is the system (``newton``), or by the authors' bounded least
    squares (``least_squares``). Both find the same root: it is unique (see _newton)."""
    g = host_gram(gram)
    num = g.shape[0]
    start = np.full(num, 1.0 / num)
    if not np.isfinite(g).all():
        return FairGradSolution(start, False, float("nan"), "non-finite Gramian")
    scale = float(np.linalg.norm(g))
    if scale == 0.0:
        return FairGradSolution(start, False, float("nan"), "zero Gramian")
    gn = g / scale
    power = 1.0 / alpha
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if solver == "newton":
            x, stopped = _newton(gn, power, start)
        else:
            x, stopped = _least_squares(gn, power, start)
        residual = float(np.abs((gn @ x) * x ** power - 1.0).max())
    weights = x * scale ** (-alpha / (alpha + 1.0))
    if not np.isfinite(weights).all():
        return FairGradSolution(start * scale ** (-alpha / (alpha + 1.0)), False, residual,
                                "non-finite solution")
    if stopped and (solver == "least_squares" or not residual <= tol):
        return FairGradSolution(weights, False, residual, stopped)
    if not residual <= tol:
        return FairGradSolution(weights, False, residual,
                                f"equations not met (residual {residual:.2e}); the task "
                                f"gradients may admit no alpha-fair solution")
    return FairGradSolution(weights, True, residual)


def _least_squares(gn: np.ndarray, power: float, start: np.ndarray) -> tuple[np.ndarray, str]:
    """The authors' solve (scipy's bounded least squares), with the analytic Jacobian.
    Returns the last iterate and, if the solver gave up, why."""

    def equations(x: np.ndarray) -> np.ndarray:
        return gn @ x - x ** (-power)

    def jacobian(x: np.ndarray) -> np.ndarray:
        return gn + np.diag(power * x ** (-power - 1.0))

    from scipy.optimize import least_squares  # imported when used: `list` stays light

    result = least_squares(equations, start, jac=jacobian, bounds=(0, np.inf),
                           ftol=1e-12, xtol=1e-12, gtol=1e-12)
    return result.x, ("" if result.status > 0 else f"least_squares: {result.message}")


NEWTON_ITERATIONS = 100
NEWTON_TOL = 1e-12


def _newton(gn: np.ndarray, power: float, start: np.ndarray) -> tuple[np.ndarray, str]:
    """Damped Newton's method for F(w) = G w − w^{−p} = 0 (p = 1/α), w > 0.

    F is the gradient of φ(w) = ½ wᵀGw − Σ_i ψ(w_i), ψ(w) = w^{1−p}/(1−p) (log w for p = 1),
    whose Hessian G + diag(p w^{−p−1}) is positive definite for w > 0 (G is a Gramian):
    φ is strictly convex, so F has at most one root and Newton's direction descends φ.
    Steps are halved until φ decreases and w stays positive. Returns the last iterate and,
    if it stopped before the residual reached NEWTON_TOL, why (the caller judges the
    iterate by its residual: round-off can stall the line search at a solved system)."""
    def potential(w: np.ndarray) -> float:
        barrier = np.log(w).sum() if power == 1.0 else (w ** (1.0 - power)).sum() / (1.0 - power)
        return 0.5 * w @ gn @ w - barrier

    w = start.copy()
    value = potential(w)
    for _ in range(NEWTON_ITERATIONS):
        f = gn @ w - w ** (-power)
        if np.abs(f * w ** power).max() <= NEWTON_TOL:  # the scale-free residual
            return w, ""
        hessian = gn + np.diag(power * w ** (-power - 1.0))
        try:
            step = -np.linalg.solve(hessian, f)
        except np.linalg.LinAlgError:
            return w, "singular Newton system"
        t = 1.0
        negative = step < 0
        if negative.any():  # stay inside w > 0
            t = min(1.0, 0.99 * float(np.min(-w[negative] / step[negative])))
        while t > 1e-12:
            candidate = w + t * step
            candidate_value = potential(candidate)
            # Near the root, φ changes by less than its round-off: accept such steps too.
            if candidate_value <= value + 1e-13 * abs(value):
                break
            t *= 0.5
        else:
            return w, "Newton line search failed"
        w, value = candidate, candidate_value
    return w, f"Newton's method did not converge in {NEWTON_ITERATIONS} iterations"


@dataclass
class FairGradConfig(MethodConfig):
    alpha: float = param(2.0, low=0, low_open=True)
    max_norm: float = param(1.0, low=0)
    tol: float = param(1e-4, low=0, high=1, low_open=True, high_open=True)
    solver: str = param("newton", choices=SOLVERS)


@register_method("fairgrad")
class FairGrad(SolverAccounting, Aggregator):
    description = "FairGrad: alpha-fair weights, (G w)_i = w_i^(-1/alpha), update x T, clipped"
    needs = Needs(jacobian=True)
    Config = FairGradConfig

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        cfg: FairGradConfig = self.config
        solution = fairgrad_weights(grads @ grads.T, cfg.alpha, cfg.tol, cfg.solver)
        self.record_solve(ctx, solution.converged, solution.reason)
        weights = self.num_tasks * torch.as_tensor(solution.weights, dtype=grads.dtype,
                                                   device=grads.device)
        direction, coef = clip_direction(grads.T @ weights, cfg.max_norm)
        ctx.log("clip_coef", coef)
        return Aggregated(direction=direction, weights=weights * coef)
