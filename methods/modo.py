"""MoDo: multi-objective gradient with double sampling.

Paper: L. Chen, H. Fernando, Y. Ying, T. Chen, "Three-Way Trade-Off in Multi-Objective
Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023 / JMLR 2024
(official code: heshandevaka/Trade-Off-MOL, a LibMTL fork; LibMTL's ``MoDo.py`` is taken
from it).

What it does: a stochastic MGDA whose simplex weights λ follow projected gradient steps on
½‖Jᵀλ‖² + ½ρ‖λ‖², where the product JJᵀ is estimated without bias from two independent
batches (double sampling):

    λ ← Π_Δ(λ − γ (J₁ J₂ᵀ λ + ρ λ)),   update d = λᵀ J_u,

λ starting at 1/T. Batches come from the engine (``Needs.extra_batches``), never from a loop
of the method's own.

``update_batch`` (which batch the parameter update uses):
- ``third`` (default; LibMTL and the official code with ``three_grads``): three batches per
  step; J₁, J₂ from the two extra batches, the update J_u from the step's own batch (the
  batch every other method sees at that step);
- ``mean`` (the official code without ``three_grads``; TorchJD's two-batch example): two
  batches; J₁ from the step's own batch, J₂ from one extra batch, and the update uses their
  mean, d = λᵀ(J₁ + J₂)/2.

Hyperparameters (LibMTL's defaults): ``gamma`` γ = 1e-3 (TorchJD's MoDoWeighting: 0.1),
``rho`` ρ = 0.1. λ is kept in float64 (T numbers) and saved with the method.

Weight scale: λ on the simplex (sum 1), recorded as the weights.

Deviations: the heads get their own task's gradient from the step's own batch; LibMTL's
heads get the mean of their gradients over the three batches (the ``mean`` variant of the
official code, the mean over its two). The extra batches' forward passes update batch-norm
statistics as LibMTL's do. Same λ update as TorchJD's MoDoWeighting given J₁J₂ᵀ
(tests/test_modo_sdmgrad.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import param
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.moco import project_simplex
from methods.registry import register_method

UPDATE_BATCHES = ("third", "mean")


@dataclass
class MoDoConfig(MethodConfig):
    gamma: float = param(1e-3, low=0.0, low_open=True)
    """Step size γ of the λ update (LibMTL: 1e-3)."""
    rho: float = param(0.1, low=0.0)
    """ℓ2 regularisation ρ of λ's objective (LibMTL: 0.1)."""
    update_batch: str = param("third", choices=UPDATE_BATCHES)
    """third: λ from two extra batches, the update from the step's own (three per step);
    mean: λ from the own and one extra batch, the update from their mean (two per step)."""


def modo_step(lambd: Tensor, product: Tensor, gamma: float, rho: float) -> Tensor:
    """One λ update: Π_Δ(λ − γ (A λ + ρ λ)), with A = J₁ J₂ᵀ from independent batches."""
    return project_simplex(lambd - gamma * (product @ lambd + rho * lambd))


@register_method("modo")
class MoDo(Aggregator):
    description = ("MoDo (Chen et al. 2023): MGDA with double sampling; λ by projected steps "
                   "on J₁J₂ᵀ of two independent batches (sum 1)")
    needs = Needs(jacobian=True, extra_batches=2)
    Config = MoDoConfig

    @classmethod
    def needs_for(cls, config: MoDoConfig) -> Needs:
        return Needs(jacobian=True, extra_batches=2 if config.update_batch == "third" else 1)

    def __init__(self, config: MoDoConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.register_buffer("lambd", torch.full((self.num_tasks,), 1.0 / self.num_tasks,
                                                 dtype=torch.float64))

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        cfg = self.config
        if cfg.update_batch == "third":
            first, second = ctx.extra_jacobian(0), ctx.extra_jacobian(1)
            update = grads
        else:
            first, second = grads, ctx.extra_jacobian(0)
            update = (grads + second) / 2
        product = (first @ second.T).to(self.lambd.dtype)
        lambd = modo_step(self.lambd, product, cfg.gamma, cfg.rho)
        self.lambd.copy_(lambd)
        weights = lambd.to(device=grads.device, dtype=grads.dtype)
        return Aggregated(direction=weights @ update, weights=weights)
