"""Aligned-MTL-UB: the upper-bound variant of Aligned-MTL (Senushkin et al., "Independent
Component Alignment for Multi-Task Learning", CVPR 2023, Sec. 4.3; authors' code:
github.com/SamsungLabs/MTL, code/optim/aligned/balancer.py AlignedMTLUBBalancer).

The same alignment as ``aligned_mtl`` (methods/aligned_mtl.py), applied to the task
gradients w.r.t. the shared representation Z (the whole batch's Z, flattened) instead of
the shared parameters; the sum of the aligned representation gradients is backpropagated
through the encoder. The paper optimises an upper bound of the aligned objective this way,
at the cost of T backward passes through the heads only.

Hyperparameters: ``scale_mode`` = "min" (as ``aligned_mtl``).

Weight scale: the weights w (Σ_t w_t ∂L_t/∂Z is the update of Z) are recorded as applied.

Needs one representation shared by all tasks, so it is refused on multi-input benchmarks.
Deviations: as ``aligned_mtl``. Heads receive the gradient of their own loss (the authors'
default ``scale_decoder_grad=False``).
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.errors import check_choice
from methods.aligned_mtl import SCALE_MODES, AlignedMTL, AlignedMTLConfig
from methods.base import Needs
from methods.registry import register_method


@dataclass
class AlignedMTLUBConfig(AlignedMTLConfig):
    def validate(self) -> None:
        check_choice("method.aligned_mtl_ub.scale_mode", self.scale_mode, SCALE_MODES)


@register_method("aligned_mtl_ub")
class AlignedMTLUB(AlignedMTL):
    description = "Aligned-MTL-UB: Aligned-MTL on the gradients w.r.t. the shared representation"
    needs = Needs(rep_grads=True, shared_representation=True)
    Config = AlignedMTLUBConfig
