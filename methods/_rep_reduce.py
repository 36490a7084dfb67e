"""How the representation-level solvers (MGDA-UB, Aligned-MTL-UB) read the per-task gradients
w.r.t. the shared representation Z (not a method: nothing is registered).

The engine hands a representation-space aggregator one row per task, the gradient w.r.t. the
whole batch's Z flattened, [T, B·D]. The weights are solved on a T×T Gramian of rows, and
there are two readings of "the gradient w.r.t. Z":

- ``flatten`` (default): the rows as given, so ⟨g_s, g_t⟩ = Σ_b ⟨∂L_s/∂z_b, ∂L_t/∂z_b⟩,
  sample by sample (the MGDA-UB authors' code, which differentiates each loss w.r.t. the
  batch of representations);
- ``batch_sum``: the per-sample gradients summed over the batch first, [T, D], so
  ⟨g_s, g_t⟩ = ⟨Σ_b ∂L_s/∂z_b, Σ_b ∂L_t/∂z_b⟩ (LibMTL's ``rep_grad`` mode, which reshapes
  the gradients to [T, B, D] and sums over B before its solver).

Either way the update of Z is the weighted combination of the full rows, Σ_t w_t ∂L_t/∂Z,
backpropagated through the encoder: only the Gramian that the weights are solved on
differs. In a data-parallel run the rows and ``ctx.reps()`` cover the global batch, so the
sum runs over every process's samples.
"""
from __future__ import annotations

from torch import Tensor

from methods.base import StepContext

REP_REDUCTIONS = ("flatten", "batch_sum")


def solver_rows(grads: Tensor, ctx: StepContext, rep_reduce: str) -> Tensor:
    """The rows whose Gramian the weights are solved on: ``grads`` [T, B·D] itself
    (``flatten``) or summed over the batch, [T, D] (``batch_sum``)."""
    if rep_reduce == "flatten":
        return grads
    if rep_reduce == "batch_sum":
        batch = ctx.reps()[0].shape[0]
        return grads.reshape(grads.shape[0], batch, -1).sum(dim=1)
    raise ValueError(f"unknown rep_reduce {rep_reduce!r}; expected one of {REP_REDUCTIONS}")
