"""MetaBalance: balancing the magnitudes of auxiliary-task gradients to a target task's.

Paper: Y. He, X. Feng, C. Cheng, G. Ji, Y. Guo, J. Caverlee, "MetaBalance: Improving
Multi-Task Recommendations via Adapting Gradient Magnitudes of Auxiliary Tasks", WWW 2022
(official code: facebookresearch/MetaBalance).

What it does: for every shared parameter tensor p and task t, keeps a moving average m_{t,p}
of ‖∇_p L_t‖ and rescales each task's gradient towards the target task's magnitude,
g_{t,p} ← r·(m_{0,p} / m_{t,p})·g_{t,p} + (1 − r)·g_{t,p}; the update is the sum over tasks.

Hyperparameters (the paper's and the code's defaults): ``relax_factor`` r = 0.7 in [0, 1)
(r = 0 is plain summation, r → 1 equal magnitudes); ``beta`` = 0.9, the moving-average
factor; ``main_task``, the target task by name (empty: the first task, as the code treats
the first loss as the target).

Kind: an aggregator in parameter space (the rescaling differs per parameter tensor, so it is
not a reweighting of the losses); the heads get their own task's gradient, as in the
official example, where the task layers are updated with the plain sum of the losses.

Weight scale: no loss weights are applied; the per-task scale factor averaged over the
parameter tensors is logged as ``scale/<task>``.

Deviations: the paper's strategy "adapt all auxiliary gradients" (both increasing and
decreasing them) is the one its code implements and the only one offered. The moving
averages start at 0 without bias correction, as in the code (the correction would cancel in
the ratio). Where a task's averaged norm on a tensor is exactly 0 (its gradient there has
always been 0), the code divides 0 by 0; here that task's factor on that tensor is 1, which
changes nothing since its gradient there is 0. The moving averages are kept in the state dict.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.errors import check_choice, param
from methods._weighting_utils import expand_layers, layer_norms, log_per_task
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method


@dataclass
class MetaBalanceConfig(MethodConfig):
    relax_factor: float = param(0.7, low=0.0, high=1.0, high_open=True)
    """r in [0, 1): how far each task's gradient magnitude moves to the target's."""
    beta: float = param(0.9, low=0.0, high=1.0, high_open=True)
    """Moving-average factor of the gradient magnitudes, in [0, 1)."""
    main_task: str = ""
    """The target task's name; empty: the first task."""


def metabalance_scales(avg_norms: Tensor, main: int, relax_factor: float) -> Tensor:
    """[T, L] factors r·m_main/m_t + (1 − r); 1 where m_t = 0."""
    positive = avg_norms > 0
    ratio = torch.where(positive, avg_norms[main] / torch.where(positive, avg_norms, 1.0), 1.0)
    return relax_factor * ratio + (1.0 - relax_factor)


def metabalance_direction(grads: Tensor, sizes: Sequence[int], avg_norms: Tensor, main: int,
                          relax_factor: float) -> tuple[Tensor, Tensor]:
    """The update Σ_t scale_t ⊙ g_t [P] and the factors [T, L]."""
    scales = metabalance_scales(avg_norms, main, relax_factor)
    return (expand_layers(scales, sizes) * grads).sum(dim=0), scales


@register_method("metabalance")
class MetaBalance(Aggregator):
    description = "MetaBalance: per-layer moving-average magnitudes of task gradients relaxed to the target task's"
    needs = Needs(jacobian=True)
    Config = MetaBalanceConfig
    # The target task is one task (the first, unless main_task names another): the others
    # are relaxed towards it.
    permutation_equivariant = False

    def __init__(self, config: MetaBalanceConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        if config.main_task:
            check_choice("method.metabalance.main_task", config.main_task, self.task_names)
            self.main = self.task_names.index(config.main_task)
        else:
            self.main = 0
        self.avg_norms: Tensor | None = None

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        sizes = ctx.shared_sizes
        norms = layer_norms(grads, sizes)
        beta = self.config.beta
        previous = (self.avg_norms.to(norms) if self.avg_norms is not None
                    else torch.zeros_like(norms))
        self.avg_norms = beta * previous + (1.0 - beta) * norms
        direction, scales = metabalance_direction(grads, sizes, self.avg_norms, self.main,
                                                  self.config.relax_factor)
        log_per_task(ctx, "scale", scales.mean(dim=1))
        return Aggregated(direction=direction)

    def get_extra_state(self) -> Any:
        return {"avg_norms": self.avg_norms}

    def set_extra_state(self, state: Any) -> None:
        self.avg_norms = state["avg_norms"]
