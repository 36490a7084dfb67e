"""PCGrad: Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020.

Each task gradient is projected, in a random order of the other tasks, onto the normal
plane of every other task gradient it conflicts with (negative inner product); the update
is the sum of the projected gradients.

Hyperparameters: none. Randomness: one random order of the other tasks per task and step,
drawn from the run's method generator (``ctx.generator``).

Weight scale: the update is a linear combination Σ_t w_t g_t of the raw gradients, and w
is what is recorded; without conflicts w = 1 (sums to T, like equal weighting).

Implementation: every projection keeps g_i^PC in the span of the raw gradients, so the
whole procedure runs on the T×T Gramian (coefficients c_i with g_i^PC = Σ_j c_ij g_j) and
the Jacobian is used once, for the final product Jᵀw.

Deviations and choices: Algorithm 1 of the paper projects onto the other tasks only
(j ≠ i); the authors' code and LibMTL shuffle all tasks including i itself, which matters
only when earlier projections have turned g_i^PC against g_i. We follow the paper.
"""
from __future__ import annotations

import torch
from torch import Tensor

from methods.base import GramianAggregator, Needs, StepContext
from methods.registry import register_method


def pcgrad_weights(gramian: Tensor, orders: list[list[int]]) -> Tensor:
    """w with Σ_t w_t g_t = Σ_i g_i^PC; ``orders[i]`` lists the other tasks in the order in
    which g_i is projected."""
    T = gramian.shape[0]
    coefs = torch.eye(T, dtype=gramian.dtype, device=gramian.device)
    if T < 2:
        return coefs.sum(0)
    # The T projection sequences are independent: step k projects every row i onto its
    # k-th task at once (T - 1 vectorised steps, not T(T - 1) scalar ones).
    order = torch.tensor(orders, device=gramian.device)          # [T, T-1]
    rows = torch.arange(T, device=gramian.device)
    columns = gramian.T                                          # columns[j] = G[:, j]
    diagonal = gramian.diagonal()
    for k in range(T - 1):
        j = order[:, k]
        dot = (coefs * columns[j]).sum(1)                        # c_i · g_j, every i
        # where(), not an if: stays on the device (a zero-norm g_j never conflicts)
        coefs[rows, j] -= torch.where(dot < 0, dot / diagonal[j], torch.zeros_like(dot))
    return coefs.sum(0)


def random_orders(num_tasks: int, generator: torch.Generator) -> list[list[int]]:
    """For each task, the other tasks in a random order (one host transfer for all T
    permutations)."""
    perms = torch.stack([torch.randperm(num_tasks, generator=generator, device=generator.device)
                         for _ in range(num_tasks)]).tolist()
    return [[j for j in perm if j != i] for i, perm in enumerate(perms)]


@register_method("pcgrad")
class PCGrad(GramianAggregator):
    description = ("PCGrad (Yu et al. 2020): project each task gradient off the gradients it "
                   "conflicts with, in random order, and sum")
    needs = Needs(jacobian=True)
    # The random projection order is drawn per task position: relabelling the tasks changes
    # the order drawn, so the output is equivariant in distribution only.
    permutation_equivariant = False

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        return pcgrad_weights(gramian, random_orders(gramian.shape[0], ctx.generator))
