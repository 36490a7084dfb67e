"""IMTL-L: Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task
Learning", ICLR 2021 (the loss balance, Sec. 3.2).

Each task loss gets a learnable scale s_t (initialised at 0) and the objective is
Σ_t (e^{s_t} L_t - s_t): at the optimum over s_t the scaled loss e^{s_t} L_t equals 1, so
every task's loss is kept at the same scale. s is trained by the run's optimizer.

Hyperparameters: none (s_t = 0 at the start, as in the paper and LibMTL).
Weight scale: the recorded weights are e^{s_t}, the factor applied to each raw loss (all 1
at the start, so they sum to T like equal weighting). The learnable s lives in the
state_dict (checkpoints). Deviations: none known.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from methods.base import StepContext, Weighted, Weighting
from methods.registry import register_method


def imtl_l_objective(losses: Tensor, scales: Tensor) -> Tensor:
    """Σ_t (e^{s_t} L_t - s_t)."""
    return (scales.exp() * losses - scales).sum()


@register_method("imtl_l")
class IMTLL(Weighting):
    description = "IMTL-L (Liu et al. 2021): learnable loss scales, objective Σ e^s_t L_t - s_t"

    def __init__(self, config, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.scales = nn.Parameter(torch.zeros(self.num_tasks))

    def weigh(self, ctx: StepContext) -> Weighted:
        scales = self.scales.to(ctx.losses.dtype)
        return Weighted(weights=scales.detach().exp(),
                        objective=imtl_l_objective(ctx.losses, scales))
