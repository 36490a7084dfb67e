"""Bookkeeping of the small solvers some aggregators run at every step (MGDA, CAGrad, UPGrad,
Nash-MTL, FairGrad).

A solve that fails or stops before its optimality certificate is met is never hidden: it
is logged at every step as the statistic ``solver_failures`` (0 or 1, so the epoch mean in
metrics.jsonl is the fraction of failed solves), counted in the method's state (so the
count survives a resume) and reported in summary.json under ``methods`` by ``run_report``.
The first failure of a run is also written to the log with its detail.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from methods.base import StepContext

log = logging.getLogger(__name__)


class SolverAccounting(nn.Module):
    """Mixin for a Method, listed before the method's kind (``class M(SolverAccounting,
    Aggregator)``): counters of solves and failed solves, kept in ``state_dict``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("solves", torch.zeros((), dtype=torch.long))
        self.register_buffer("solver_failures", torch.zeros((), dtype=torch.long))

    def record_solve(self, ctx: StepContext, ok: bool, detail: str = "") -> None:
        self.solves += 1
        ctx.log("solver_failures", torch.tensor(0.0 if ok else 1.0))
        if not ok:
            if int(self.solver_failures) == 0:
                log.warning("%s: solver failed at step %d (%s); counted in the run summary",
                            type(self).__name__, ctx.step, detail)
            self.solver_failures += 1

    def run_report(self) -> dict:
        return {"solves": int(self.solves), "solver_failures": int(self.solver_failures)}
