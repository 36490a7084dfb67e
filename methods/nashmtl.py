"""Nash-MTL: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, "Multi-Task
Learning as a Bargaining Game", ICML 2022 (arXiv 2202.01017); authors' code:
github.com/AvivNavon/nash-mtl (methods/weight_methods.py, class NashMTL).

The update is the Nash bargaining solution among the tasks: d = Σ_i α_i g_i with α > 0
solving (Gα)_i = 1/α_i, G = J Jᵀ the Gramian of the task gradients (Sec. 3.2), i.e. every
task gets a utility g_iᵀd = 1/α_i; the direction is then clipped to norm ``max_norm``.

Hyperparameters (the authors' defaults, used for all their benchmarks):
- ``update_weights_every`` = 1: solve for α every k-th step, reuse the last α in between.
- ``optim_niter`` = 20: iteration budget of one solve (the authors: 20 CCP iterations).
- ``max_norm`` = 1.0: the update of the shared parameters is clipped to this norm
  (``clip_grad_norm_`` in the authors' ``backward``); 0 disables.
- ``tol`` = 1e-6: a solve has converged when max_i |α_i (Gα)_i − 1| ≤ tol.

Weight scale: unnormalised. α has the units of 1/‖g‖ (orthogonal gradients give
α_i = 1/‖g_i‖) and is not rescaled. The recorded weights are those actually applied to the
task gradients, α times the clipping coefficient (logged as ``clip_coef``); the raw α of
each task is logged as ``alpha/<task>``.

Deviations from the authors' code:
- The solver. The authors approximate the solution with a sequence of convex problems (a
  concave-convex procedure: minimise Σ_i (Gα)_i + φ(α) with φ linearised at the previous
  iterate, subject to α_i (Gα)_i ≥ 1), each solved by cvxpy/ECOS, at most 20 rounds,
  warm-started from the previous step's α. Here the same fixed point is found by damped
  Newton on the strictly convex f(α) = ½αᵀGα − Σ log α_i, whose stationarity condition is
  exactly (Gα)_i = 1/α_i (methods/_nash_solver.py), warm-started from the previous α; it
  reaches the 1e-6 residual in about 7 iterations on random Gramians (at most ~20 on
  condition numbers up to 1e11). The authors' procedure stops on a residual of 1e-3
  measured on the normalised Gramian, or after 20 rounds, so where it succeeds its α is the
  same point up to that tolerance. Where it fails (cvxpy/ECOS raises or returns no
  solution), their code keeps the previous α while this solver finds the new one, and from
  that step on the two trajectories differ: it failed in 5 of the 36 trajectories we
  compared.
- Failures are not swallowed. The authors catch every solver exception and keep the
  previous α (and, without a working ECOS, silently train with the initial all-ones α). A
  failed or non-converged solve here (no bargaining solution exists, e.g. exactly opposed
  gradients or a task with zero gradient; a non-finite Gramian) also keeps the previous α,
  as the authors do, but is logged (``solver_failures``), warned about once and counted in
  the run's summary (``run_report``).

Task heads: as in the authors' code, which backpropagates Σ α_i L_i and clips only the
shared parameters, head i receives α_i ∇L_i (``head_scales``), unclipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import param
from methods._nash_solver import nash_weights
from methods._solve_clip import clip_direction
from methods._solver import SolverAccounting
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method


@dataclass
class NashMTLConfig(MethodConfig):
    update_weights_every: int = param(1, low=1)
    optim_niter: int = param(20, low=1)
    max_norm: float = param(1.0, low=0)
    tol: float = param(1e-6, low=0, high=1, low_open=True, high_open=True)


@register_method("nashmtl")
class NashMTL(SolverAccounting, Aggregator):
    description = "Nash-MTL: bargaining weights (G a)_i = 1/a_i (unnormalised), clipped update"
    needs = Needs(jacobian=True)
    Config = NashMTLConfig

    def __init__(self, config: NashMTLConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        # The authors start from α = 1 (equal weights, unnormalised).
        self.alpha = np.ones(self.num_tasks)
        self.steps_seen = 0

    def aggregate(self, grads: torch.Tensor, ctx: StepContext) -> Aggregated:
        cfg: NashMTLConfig = self.config
        if self.steps_seen % cfg.update_weights_every == 0:
            solution = nash_weights(grads @ grads.T, init=self.alpha, max_iter=cfg.optim_niter,
                                    tol=cfg.tol)
            if solution.converged:
                self.alpha = solution.alpha
            self.record_solve(ctx, solution.converged, solution.reason)
        self.steps_seen += 1
        alpha = torch.as_tensor(self.alpha, dtype=grads.dtype, device=grads.device)
        direction, coef = clip_direction(grads.T @ alpha, cfg.max_norm)
        ctx.log("clip_coef", coef)
        for name, value in zip(self.task_names, alpha):
            ctx.log(f"alpha/{name}", value)
        return Aggregated(direction=direction, weights=alpha * coef, head_scales=alpha)

    def get_extra_state(self) -> dict:
        return {"alpha": torch.from_numpy(self.alpha.copy()), "steps_seen": self.steps_seen}

    def set_extra_state(self, state: dict) -> None:
        self.alpha = state["alpha"].double().numpy().copy()
        self.steps_seen = int(state["steps_seen"])
