"""GradVac: Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", ICLR 2021.

Like PCGrad, but towards a target similarity instead of orthogonality: whenever the cosine
φ_ij between g_i' (task i's gradient as modified so far) and g_j falls below an exponential
moving average φ̂_ij of the past similarities, g_j is added to g_i' with the coefficient
that makes their cosine exactly φ̂_ij:

    g_i' += ||g_i'|| (φ̂_ij √(1-φ_ij²) - φ_ij √(1-φ̂_ij²))
            / (||g_j|| √(1-φ̂_ij²)) · g_j,
    φ̂_ij ← (1-β) φ̂_ij + β φ_ij  (every pair, every step).

The update is Σ_i g_i'. Pairs are visited, for each i, in a random order of the other
tasks (run's method generator); φ̂ starts at 0 and is kept in the state_dict (checkpoints).

Hyperparameters (``method.gradvac.*``):
- ``beta`` = 0.01: the EMA rate (the paper's β = 1e-2; LibMTL's default is 0.5).
- ``granularity`` = whole_model | parameter: one φ̂ for the whole shared network, or one
  per shared parameter tensor (LibMTL's "all_matrix"), each group corrected separately.
  The paper also studies per-layer groups (LibMTL's "all_layer"); module boundaries are
  not visible to a method here, so that option is not offered.

Weight scale: with one group the update is Σ_t w_t g_t of the raw gradients, w recorded
(w = 1, summing to T, when nothing is corrected); per-parameter groups have one w per
group, so none is recorded.

Implementation: on the T×T Gramian of each group (coefficients of g_i' in the raw
gradients), the Jacobian used once for the final product. LibMTL's default β is 0.5 (here
the paper's 0.01). Since its commit d2d84fa (February 2024) LibMTL updates φ̂_ij at every
step, as Algorithm 1 and this module do; with the same β, granularity and pair order the
updates here are identical to LibMTL's (checked against its commit 4336804). Earlier
LibMTL versions updated φ̂_ij only when they corrected g_i' (so φ̂ could only decrease).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import param
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.pcgrad import random_orders
from methods.registry import register_method

GRANULARITIES = ("whole_model", "parameter")
_EPS = 1e-8


def gradvac_coefficients(gramians: Tensor, rho: Tensor, beta: float,
                         orders: list[list[int]]) -> tuple[Tensor, Tensor]:
    """One GradVac step on K groups at once.

    gramians: [K, T, T] per-group Gramians; rho: [T, T, K] target similarities φ̂.
    Returns (w [K, T]: the update of group k is Σ_t w[k, t] g_t restricted to the group,
    new rho [T, T, K])."""
    K, T, _ = gramians.shape
    rho = rho.clone()
    sq_norms = gramians.diagonal(dim1=1, dim2=2)                          # [K, T]
    coefs = torch.eye(T, dtype=gramians.dtype, device=gramians.device).expand(K, T, T).clone()
    if T < 2:
        return coefs.sum(1), rho
    # The T correction sequences are independent (row i only touches coefs[:, i] and
    # rho[i]): step k corrects every row i with its k-th task at once.
    order = torch.tensor(orders, device=gramians.device)                  # [T, T-1]
    rows = torch.arange(T, device=gramians.device)
    for k in range(T - 1):
        j = order[:, k]                                                    # j_i for every i
        norm_i = torch.einsum("kia,kab,kib->ki", coefs, gramians, coefs).clamp_min(0).sqrt()
        norm_j = sq_norms[:, j].clamp_min(0).sqrt()                        # [K, T(i)]
        phi = (torch.einsum("kia,kai->ki", coefs, gramians[:, :, j])
               / (norm_i * norm_j + _EPS)).clamp(-1, 1)
        target = rho[rows, j].T                                            # [K, T(i)]
        coef = (norm_i * (target * (1 - phi ** 2).sqrt() - phi * (1 - target ** 2).sqrt())
                / (norm_j * (1 - target ** 2).sqrt() + _EPS))
        coefs[:, rows, j] = coefs[:, rows, j] + torch.where(phi < target, coef,
                                                            torch.zeros_like(coef))
        rho[rows, j] = ((1 - beta) * target + beta * phi).T
    return coefs.sum(1), rho


@register_method("gradvac")
class GradVac(Aggregator):
    description = ("GradVac (Wang et al. 2021): raise each pair's gradient cosine to an EMA "
                   "target where it falls below it, and sum")
    needs = Needs(jacobian=True)
    # The random order of the pairs is drawn per task position (as PCGrad's): equivariant in
    # distribution only.
    permutation_equivariant = False

    @dataclass
    class Config(MethodConfig):
        beta: float = param(0.01, low=0, high=1)
        """EMA rate of the target similarities."""
        granularity: str = param("whole_model", choices=GRANULARITIES)
        """whole_model (one target per task pair) or parameter (one per shared tensor)."""

    def __init__(self, config: Config, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.rho: Tensor | None = None  # [T, T, K], created at the first step (K known then)

    def _groups(self, grads: Tensor, ctx: StepContext) -> list[Tensor]:
        if self.config.granularity == "whole_model":
            return [grads]
        return list(grads.split(ctx.shared_sizes, dim=1))

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        groups = self._groups(grads, ctx)
        gramians = torch.stack([g @ g.T for g in groups])
        T, K = grads.shape[0], len(groups)
        if self.rho is None:
            self.rho = torch.zeros(T, T, K, dtype=grads.dtype, device=grads.device)
        elif self.rho.shape != (T, T, K):
            raise RuntimeError(f"GradVac state has {self.rho.shape[2]} groups but the model has "
                               f"{K}; was the checkpoint made with another granularity?")
        w, self.rho = gradvac_coefficients(gramians, self.rho.to(grads), self.config.beta,
                                           random_orders(T, ctx.generator))
        direction = torch.cat([wk @ g for wk, g in zip(w, groups)])
        return Aggregated(direction=direction, weights=w[0] if K == 1 else None)

    def get_extra_state(self) -> dict:
        return {"rho": None if self.rho is None else self.rho.detach().cpu()}

    def set_extra_state(self, state: dict) -> None:
        self.rho = state["rho"]
