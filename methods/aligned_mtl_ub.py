"""Aligned-MTL-UB: the upper-bound variant of Aligned-MTL (Senushkin et al., "Independent
Component Alignment for Multi-Task Learning", CVPR 2023, Sec. 4.3; authors' code:
github.com/SamsungLabs/MTL, code/optim/aligned/balancer.py AlignedMTLUBBalancer).

The same alignment as ``aligned_mtl`` (methods/aligned_mtl.py), applied to the task
gradients w.r.t. the shared representation Z (the whole batch's Z, flattened) instead of
the shared parameters; the sum of the aligned representation gradients is backpropagated
through the encoder. The paper optimises an upper bound of the aligned objective this way,
at the cost of T backward passes through the heads only.

Hyperparameters: ``scale_mode`` = "min" (as ``aligned_mtl``); ``rep_reduce``:
- ``flatten`` (default): the weights are solved on the Gramian of the gradients w.r.t. the
  whole batch's Z, flattened, as above;
- ``batch_sum``: on the Gramian of the per-sample gradients summed over the batch, as
  LibMTL's representation-gradient mode does (methods/_rep_reduce.py). The weights differ;
  the update of Z is Σ_t w_t ∂L_t/∂Z of the full gradients either way.

Weight scale: the weights w (Σ_t w_t ∂L_t/∂Z is the update of Z) are recorded as applied.

Needs one representation shared by all tasks, so it is refused on multi-input benchmarks.
Deviations: as ``aligned_mtl``. Heads receive the gradient of their own loss (the authors'
default ``scale_decoder_grad=False``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from engine.errors import param
from methods._rep_reduce import REP_REDUCTIONS, solver_rows
from methods.aligned_mtl import AlignedMTL, AlignedMTLConfig
from methods.base import Needs, StepContext
from methods.registry import register_method


@dataclass
class AlignedMTLUBConfig(AlignedMTLConfig):
    late_fields: ClassVar[tuple[str, ...]] = ("rep_reduce",)
    rep_reduce: str = param("flatten", choices=REP_REDUCTIONS)
    """Rows the weights are solved on: flatten (Z of the whole batch) or batch_sum (LibMTL)."""


@register_method("aligned_mtl_ub")
class AlignedMTLUB(AlignedMTL):
    description = "Aligned-MTL-UB: Aligned-MTL on the gradients w.r.t. the shared representation"
    needs = Needs(rep_grads=True, shared_representation=True)
    Config = AlignedMTLUBConfig

    def gramian(self, grads: Tensor, ctx: StepContext) -> Tensor:
        rows = solver_rows(grads, ctx, self.config.rep_reduce)
        return rows @ rows.T
