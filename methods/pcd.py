"""PCD, Priority-Constrained Descent: "Not All Objectives Are Born Equal: Priority-Constrained
Descent for Hierarchical Multi-Objective Optimization", TMLR 2026 (arXiv 2606.29521;
reference code: github.com/DaraVaram/priority-constrained-descent); TorchJD's ``PCD``.

The first task is the primary one; the others are secondary. The update follows the
primary gradient as closely as possible while guaranteeing every secondary task a fraction
τ of the first-order progress a step along its own normalised gradient would give:

    d̃ = argmin_d ½‖d − g̃_1‖²   subject to   g̃_jᵀd ≥ τ‖g̃_j‖²  for j = 2, ..., T,

with the normalised gradients g̃_i = s_i g_i, s_i = 1/√(v̂_i + ε), where v̂_i is the
bias-corrected exponential moving average (decay β) of ‖g_i‖² over the steps (Adam's
correction: v_i ← β v_i + (1 − β)‖g_i‖², v̂_i = v_i / (1 − β^k) at step k). The update is d̃
rescaled to the norm of the primary gradient, d = ‖g_1‖ d̃ / ‖d̃‖. Because of the
normalisation, τ is scale-free: multiplying a task's loss by a constant changes nothing
(up to ε).

Special cases (as TorchJD): g_1 = 0 gives a zero update; constraints that cannot hold
together (T ≥ 3, e.g. two opposed secondary gradients) are dropped, and the update is g_1;
a d̃ that is zero up to the rounding of the Gramian (‖d̃‖² ≤ 10·eps·(Σ_i |w_i|‖g̃_i‖)², eps
of the Gramian's dtype) gives a zero update; a non-finite Gramian gives NaN weights and
leaves the moving average as it was.

Hyperparameters (``method.pcd.*``), TorchJD's defaults:
- ``tau`` τ = 0.02, in [0, 1]: the guaranteed fraction, shared by all secondary tasks;
- ``beta`` β = 0.999, in [0, 1): decay of the moving average of the squared norms;
- ``eps`` ε = 1e-8, ≥ 0: added to v̂ before the inverse square root.

Weight scale: unnormalised. By stationarity d̃ = g̃_1 + Σ_j μ_j g̃_j with the constraints'
multipliers μ ≥ 0, so the recorded weights on the raw gradients are
w = (s_1, μ_2 s_2, ..., μ_T s_T)·‖g_1‖/‖d̃‖; without active constraints w = (1, 0, ..., 0)
and the update is g_1 itself. The secondary weights are never negative.

Solver: the quadratic program is solved exactly from the T×T Gramian (float64, host) by the
dual active-set method of Goldfarb and Idnani (1983) for an identity Hessian: it starts
at the unconstrained minimiser g̃_1 (μ = 0) and adds one violated constraint at a time,
dropping a constraint whose multiplier reaches zero on the way; every inner product it
needs is an entry of the Gramian, since d̃ stays g̃_1 + Σ_j μ_j g̃_j. It ends after finitely
many steps (about T), with every constraint met to 1e-9 of the largest normalised squared
norm. A secondary gradient whose part orthogonal to the active ones has a squared norm
below max(1e-9, 10·eps) times its own counts as their combination (above the Gramian's
rounding, or dependent gradients would look independent, with huge multipliers); a
violated constraint that neither a step along that part nor dropping an active constraint
can satisfy proves the constraints infeasible. A solve cut off by its iteration cap (10·T:
rounding errors that cycle) is counted and logged (``solver_failures``) and its iterate
used. Per step the method also logs ``active_constraints`` (how many secondary tasks
constrain the update) and ``infeasible`` (0 or 1). No dependency beyond NumPy. TorchJD
runs the same method in torch; the paper's reference code enumerates the working sets
(exponential in T; its Appendix B.2, per TorchJD's documentation) and finds the same
minimiser.

Not symmetric in the tasks: the first task of the benchmark (the first loss) is the
primary one.

Deviations: none in the update (the same program, the same moving average and the same
special cases; equal to TorchJD's ``PCD`` to ~1e-13 on float64 tests). TorchJD also accepts
one τ per secondary task; only a shared τ is offered here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from engine.errors import ConfigError, param
from methods._solver import SolverAccounting
from methods.base import GramianAggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method

FEASIBILITY_TOL = 1e-9
"""A constraint counts as met when violated by at most this much times the largest
normalised squared norm (the size of the Gramian's entries)."""


@dataclass
class PriorityQP:
    """The solution of PCD's program on a normalised Gramian."""

    weights: np.ndarray
    """[T]: 1 for the primary gradient, the multipliers μ_j ≥ 0 for the others, so that
    d̃ = Σ_i weights_i g̃_i; (1, 0, ..., 0) when the constraints are infeasible."""
    feasible: bool
    converged: bool
    iterations: int
    active: list[int] = field(default_factory=list)
    """Secondary tasks (indices from 1) whose constraints hold with equality."""
    violation: float = 0.0
    """Largest constraint violation at the solution, relative to the largest squared norm."""


def priority_qp(gramian: np.ndarray, tau: float, tol: float = FEASIBILITY_TOL,
                dependence_tol: float = 1e-9, max_iter: int | None = None) -> PriorityQP:
    """min_d ½‖d − g_1‖² subject to g_jᵀd ≥ τ‖g_j‖² (j ≥ 2), from G = [g_iᵀg_j] alone.

    The dual variables μ of the secondary constraints are all that is kept: with
    d = g_1 + Σ_j μ_j g_j, the slack of constraint j is (Hμ)_j − b_j, where H is the
    Gramian of the secondary gradients and b_j = τ‖g_j‖² − g_jᵀg_1 (positive when g_1
    violates the constraint). Goldfarb-Idnani: add the most violated constraint p; the
    primal step moves along the component z of g_p orthogonal to the active gradients
    (‖z‖² = H_pp − H_pA H_AA⁻¹ H_Ap), the active multipliers along −H_AA⁻¹ H_Ap; a full step
    makes p active, a partial step drops the active constraint whose multiplier reaches 0
    first. ``dependence_tol``: g_p counts as a combination of the active gradients when
    ‖z‖² ≤ dependence_tol·‖g_p‖² (it should exceed the Gramian's relative precision, or
    rounding makes dependent gradients look independent, with huge multipliers)."""
    G = np.asarray(gramian, dtype=np.float64)
    T = G.shape[0]
    weights = np.zeros(T)
    weights[0] = 1.0
    if T == 1:
        return PriorityQP(weights, True, True, 0)
    H = G[1:, 1:]
    b = tau * np.diag(H) - G[1:, 0]
    n = T - 1
    cap = 10 * T if max_iter is None else max_iter
    atol = tol * max(float(np.max(np.diag(G))), np.finfo(np.float64).tiny)
    mu = np.zeros(n)
    active: list[int] = []
    iterations = 0

    def slacks() -> np.ndarray:
        s = H @ mu - b
        s[active] = 0.0  # equalities by construction; rounding must not re-add them
        return s

    while True:
        s = slacks()
        p = int(np.argmin(s))
        if s[p] >= -atol:
            break
        violation_p = -s[p]  # how far constraint p is from being met
        added = False
        while not added:
            if iterations >= cap:
                return _finish(G, tau, mu, active, True, False, iterations)
            iterations += 1
            if active:
                r = np.linalg.solve(H[np.ix_(active, active)], H[active, p])
                z_sq = float(H[p, p] - H[p, active] @ r)
            else:
                r = np.zeros(0)
                z_sq = float(H[p, p])
            independent = z_sq > dependence_tol * H[p, p]
            full = violation_p / z_sq if independent else np.inf
            shrinking = r > 0
            if shrinking.any():
                ratios = np.full(len(active), np.inf)
                ratios[shrinking] = mu[active][shrinking] / r[shrinking]
                k = int(np.argmin(ratios))
                partial = float(ratios[k])
            else:
                k, partial = -1, np.inf
            step = min(full, partial)
            if not np.isfinite(step):
                # g_p is a combination of the active gradients and no active multiplier can
                # shrink to make room for it: the constraints contradict one another
                return PriorityQP(weights, False, True, iterations)
            mu[active] -= step * r
            mu[p] += step
            if full <= partial:
                active.append(p)
                added = True
            else:
                mu[active[k]] = 0.0
                del active[k]
                violation_p = float(b[p] - H[p] @ mu)
    return _finish(G, tau, mu, active, True, True, iterations)


def _finish(G: np.ndarray, tau: float, mu: np.ndarray, active: list[int], feasible: bool,
            converged: bool, iterations: int) -> PriorityQP:
    mu = np.maximum(mu, 0.0)
    weights = np.concatenate([[1.0], mu])
    H = G[1:, 1:]
    slack = H @ mu - (tau * np.diag(H) - G[1:, 0])
    scale = max(float(np.max(np.diag(G))), np.finfo(np.float64).tiny)
    violation = max(float(-slack.min()), 0.0) / scale
    return PriorityQP(weights, feasible, converged, iterations, [j + 1 for j in active],
                      violation)


@dataclass
class PCDStep:
    """One step of PCD from the raw Gramian and the moving average before it."""

    weights: Tensor
    """[T] float64 weights on the raw gradients."""
    sq_norm_ema: Tensor
    """The moving average after this step (unchanged for a non-finite Gramian)."""
    solve: PriorityQP | None
    """None where no program was solved (zero primary gradient, non-finite Gramian)."""
    finite: bool = True
    """False for a non-finite Gramian: NaN weights, the moving average left as it was."""


def pcd_step(gramian: Tensor, sq_norm_ema: Tensor, step: int, tau: float = 0.02,
             beta: float = 0.999, eps: float = 1e-8) -> PCDStep:
    """PCD's weights at step ``step`` (counted from 1), given the moving average of the
    squared norms before it (zeros at step 1). Everything on the host in float64; the
    rounding thresholds follow the precision of ``gramian``'s own dtype."""
    G = gramian.detach().to(device="cpu", dtype=torch.float64)
    ema = sq_norm_ema.detach().to(device="cpu", dtype=torch.float64)
    T = G.shape[0]
    if not torch.isfinite(G).all():
        return PCDStep(torch.full((T,), float("nan"), dtype=torch.float64), ema, None, False)
    sq_norms = G.diagonal()
    ema = beta * ema + (1.0 - beta) * sq_norms
    debiased = ema / (1.0 - beta ** step)
    denominators = (debiased + eps).sqrt()
    # a zero average means a gradient that has always been zero: its scale is irrelevant,
    # and 0 avoids 1/0 when eps = 0
    scales = torch.where(denominators > 0, 1.0 / denominators.clamp_min(1e-300),
                         torch.zeros_like(denominators))
    weights = torch.zeros(T, dtype=torch.float64)
    if not sq_norms[0] > 0:
        return PCDStep(weights, ema, None)
    # Below this relative size an inner product of the Gramian's dtype is rounding noise.
    precision = 10.0 * torch.finfo(gramian.dtype).eps
    normalised = G * torch.outer(scales, scales)
    solve = priority_qp(normalised.numpy(), tau, dependence_tol=max(1e-9, precision))
    w = torch.from_numpy(solve.weights)
    sq_norm = w @ normalised @ w
    # the rounding error of ‖d̃‖² computed from the Gramian is about precision times this
    magnitude = (w.abs() @ normalised.diagonal().clamp_min(0).sqrt()) ** 2
    if sq_norm > precision * magnitude:
        weights = w * scales * (sq_norms[0] / sq_norm).sqrt()
    return PCDStep(weights, ema, solve)


@dataclass
class PCDConfig(MethodConfig):
    tau: float = param(0.02, low=0.0, high=1.0)
    """Guaranteed fraction τ of each secondary task's normalised progress (TorchJD: 0.02)."""
    beta: float = param(0.999, low=0.0, high=1.0, high_open=True)
    """Decay β of the moving average of the squared gradient norms (TorchJD: 0.999)."""
    eps: float = param(1e-8, low=0.0)
    """ε added to the moving average before the inverse square root (TorchJD: 1e-8)."""


@register_method("pcd")
class PCD(SolverAccounting, GramianAggregator):
    description = ("PCD (TMLR 2026): the primary (first) task's normalised gradient, projected "
                   "so that every other task gets a fraction tau of its own progress")
    needs = Needs(jacobian=True)
    Config = PCDConfig
    permutation_equivariant = False
    """The first task is the primary one: the program treats it unlike the others."""

    def __init__(self, config: PCDConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        if self.num_tasks < 2:
            raise ConfigError(f"method pcd needs at least 2 tasks (a primary one, the first, and "
                              f"a secondary one); this benchmark has {self.num_tasks}")
        # float64 whatever the training precision: the normalisation of every later step
        # depends on it, and a checkpoint must restore it exactly
        self.register_buffer("sq_norm_ema", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        cfg = self.config
        step = int(self.steps) + 1
        out = pcd_step(gramian, self.sq_norm_ema, step, cfg.tau, cfg.beta, cfg.eps)
        if out.finite:
            self.sq_norm_ema.copy_(out.sq_norm_ema)
            self.steps += 1
        solve = out.solve
        if solve is not None:
            self.record_solve(ctx, solve.converged,
                              f"iteration cap reached after {solve.iterations} iterations, "
                              f"constraint violation {solve.violation:.2e}")
            ctx.log("active_constraints", torch.tensor(float(len(solve.active))))
            ctx.log("infeasible", torch.tensor(0.0 if solve.feasible else 1.0))
        return out.weights
