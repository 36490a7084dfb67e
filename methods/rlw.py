"""RLW: random loss weighting.

Paper: B. Lin, F. Ye, Y. Zhang, I. W. Tsang, "Reasonable Effectiveness of Random Weighting:
A Litmus Test for Multi-Task Learning", TMLR 2022 (arXiv:2111.10603, "A Closer Look at Loss
Weighting in Multi-Task Learning").

What it does: at every step, draws T standard normal numbers and weights the losses by their
softmax.

Hyperparameters: none (the paper's default distribution, the standard normal).

Weight scale: the weights sum to 1 (the paper's and LibMTL's convention).

Randomness: the draws come from the run's method generator (``ctx.generator``), so a run is
reproducible from its seed and the draws never disturb the model's or the data's streams.

Deviations: the paper also studies uniform, Dirichlet and Bernoulli weights; only its
default (softmax of standard normal draws) is offered.
"""
from __future__ import annotations

import torch
from torch import Tensor

from methods.base import StepContext, Weighted, Weighting
from methods.registry import register_method


def rlw_weights(draws: Tensor) -> Tensor:
    """[T] weights from [T] standard normal draws: their softmax (sums to 1)."""
    return torch.softmax(draws, dim=0)


def draw_normal(num_tasks: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    return torch.randn(num_tasks, generator=generator, device=generator.device, dtype=dtype)


@register_method("rlw")
class RandomLossWeighting(Weighting):
    description = "RLW: weights are the softmax of standard normal draws at every step (sum to 1)"
    # The draws go to task positions: equivariant in distribution only.
    permutation_equivariant = False

    def weigh(self, ctx: StepContext) -> Weighted:
        losses = ctx.losses.detach()
        draws = draw_normal(self.num_tasks, ctx.generator, losses.dtype).to(losses.device)
        return Weighted(weights=rlw_weights(draws))
