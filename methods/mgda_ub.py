"""MGDA-UB: Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS
2018, Sec. 3.3 (the upper bound).

MGDA solved on the gradients w.r.t. the shared representation Z instead of the shared
parameters: one backward pass per task through the heads only. Minimising the upper bound
||Σ_t α_t ∇_Z L_t||² (Theorem 1) gives α; the encoder then receives Σ_t α_t ∇_Z L_t,
backpropagated once (the same as backpropagating Σ_t α_t L_t into the encoder).

Hyperparameters (``method.mgda_ub.*``): those of ``mgda`` (normalization none | l2 | loss |
loss+, max_iter 250, tol 1e-5), same defaults, and ``rep_reduce``:
- ``flatten`` (default): α is solved on the Gramian of the gradients w.r.t. the whole
  batch's Z, flattened, as in the authors' code (which takes the gradient of each loss
  w.r.t. the batch of representations);
- ``batch_sum``: on the Gramian of the per-sample gradients summed over the batch, as
  LibMTL's representation-gradient mode does (methods/_rep_reduce.py). The two give
  different α (by up to 0.47 in our comparisons with LibMTL); the update of Z is
  Σ_t α_t ∂L_t/∂Z either way. The ``l2`` and ``loss+`` normalisations use the norms of
  the same rows.
Weight scale: α sums to 1.

Single-input benchmarks only (one Z for all tasks). Deviations: those of ``mgda`` (see
methods/mgda.py); heads receive the gradient of their own loss, as LibMTL's
representation-gradient mode does, while the authors' code scales it by α_t.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from engine.errors import param
from methods._rep_reduce import REP_REDUCTIONS, solver_rows
from methods.base import Needs, StepContext
from methods.mgda import _MinNormAggregator
from methods.registry import register_method


@register_method("mgda_ub")
class MGDAUB(_MinNormAggregator):
    description = ("MGDA-UB (Sener & Koltun 2018): MGDA on the gradients w.r.t. the shared "
                   "representation (weights sum to 1)")
    needs = Needs(rep_grads=True, shared_representation=True)

    @dataclass
    class Config(_MinNormAggregator.Config):
        late_fields: ClassVar[tuple[str, ...]] = ("rep_reduce",)
        rep_reduce: str = param("flatten", choices=REP_REDUCTIONS)
        """Rows α is solved on: flatten (Z of the whole batch) or batch_sum (LibMTL)."""

    def gramian(self, grads: Tensor, ctx: StepContext) -> Tensor:
        rows = solver_rows(grads, ctx, self.config.rep_reduce)
        return rows @ rows.T
