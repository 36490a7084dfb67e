"""Auto-λ: task weights learned by a one-step lookahead on held-out batches.

Paper: S. Liu, S. James, A. J. Davison, E. Johns, "Auto-Lambda: Disentangling Dynamic Task
Relationships", TMLR 2022 (official code: lorenmt/auto-lambda, ``auto_lambda.py`` and
``trainer_dense.py``).

What it does: the weights λ (meta-weights) minimise the primary tasks' loss after one
virtual training step, estimated on another batch:

    θ' = θ − α (m + ∇_θ Σ_t λ_t L_t(θ; B) + wd·θ)       (B: the step's own batch)
    ∇_λ ≈ −α (L(θ + εd; B) − L(θ − εd; B)) / (2ε),  d = ∇_θ' Σ_{t∈P} L_t(θ'; B'),  ε = 0.01/‖d‖

(the second-order term by central finite differences, as in DARTS; B' an independent
training batch, drawn by the engine, ``Needs.extra_batches``; α the run's current learning
rate, m its SGD momentum term, wd its weight decay, as the authors' virtual step). λ is then
moved by its own Adam, and the model is trained on Σ_t λ_t L_t of the step's own batch with
the new λ.

Hyperparameters (the official code's defaults): ``init`` 0.1 (every λ_t starts there),
``lr`` 1e-4 of λ's Adam (the authors use 3e-5 on CityScapes), ``primary``: the tasks whose
loss after the virtual step is minimised (empty: all of them, the multi-task setting).

Weight scale: λ as learned, unnormalised (Σλ = 0.1·T at the start): at an equal learning
rate the update is a tenth of equal weighting's, which the learning-rate grid of a fair
comparison absorbs.

Cost per step: the step's forward and backward, one backward for the virtual step's
gradient, one forward and backward at θ' on B', two forwards at θ ± εd: about three times
equal weighting's step.

Deviations: B' is drawn from the training split as the authors do (a second shuffle of it,
restarted every epoch); the lookahead forwards leave batch-norm statistics unchanged (the
authors' forwards at θ ± εd move them). LibMTL's Auto-λ differs from the authors': weights
softmax(λ) with λ starting at 1/T, an inner step without momentum or weight decay, and
half-size batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import ConfigError, param
from methods._bilevel import flat_grad, unflatten
from methods.base import MethodConfig, Needs, StepContext, Weighted, Weighting
from methods.registry import register_method


@dataclass
class AutoLambdaConfig(MethodConfig):
    init: float = param(0.1, low=0.0, low_open=True)
    """Initial value of every task weight λ_t (the official code: 0.1)."""
    lr: float = param(1e-4, low=0.0, low_open=True)
    """Learning rate of λ's Adam (the official code: 1e-4; 3e-5 on CityScapes)."""
    primary: tuple[str, ...] = ()
    """Tasks whose loss after the virtual step is minimised; empty: every task."""


@register_method("autol")
class AutoLambda(Weighting):
    description = ("Auto-λ (Liu et al. 2022): weights learned by a one-step lookahead on "
                   "another training batch (finite-difference meta-gradient; unnormalised)")
    needs = Needs(extra_batches=1, lookahead=True)
    Config = AutoLambdaConfig

    def __init__(self, config: AutoLambdaConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        unknown = [t for t in config.primary if t not in self.task_names]
        if unknown:
            raise ConfigError(f"method.autol.primary: unknown task(s) {unknown}; the "
                              f"benchmark's tasks are {list(self.task_names)}")
        chosen = config.primary or self.task_names
        self.register_buffer("primary_mask",
                             torch.tensor([t in chosen for t in self.task_names]).float())
        self.meta_weights = nn.Parameter(torch.full((self.num_tasks,), float(config.init)))
        self.optimizer = torch.optim.Adam([self.meta_weights], lr=config.lr)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []  # λ has its own Adam

    def weigh(self, ctx: StepContext) -> Weighted:
        params = ctx.model_parameters()
        lam = self.meta_weights.detach().to(ctx.losses.dtype)
        grads = torch.autograd.grad((lam * ctx.losses).sum(), params, retain_graph=True,
                                    allow_unused=True)
        ahead = [v.requires_grad_() for v in ctx.virtual_step(grads)]
        held_out = (self.primary_mask * ctx.losses_at(ahead, batch=0)).sum()
        direction = flat_grad(held_out, ahead, retain_graph=False)
        self.optimizer.zero_grad(set_to_none=True)
        self.meta_weights.grad = self.meta_gradient(ctx, params, direction).to(self.meta_weights.dtype)
        self.optimizer.step()
        return Weighted(weights=self.meta_weights.detach().to(ctx.losses.dtype).clone())

    @staticmethod
    def meta_gradient(ctx: StepContext, params: list[Tensor], direction: Tensor) -> Tensor:
        """−α (L(θ + εd) − L(θ − εd)) / (2ε) on the step's own batch, ε = 0.01/‖d‖: the
        finite-difference estimate of −α ∇²_{θλ} (Σ λ_t L_t) d."""
        norm = direction.norm()
        if not torch.isfinite(norm) or norm == 0:
            return torch.zeros(len(ctx.task_names), device=direction.device)
        eps = 0.01 / norm
        step = unflatten(eps * direction, params)
        with torch.no_grad():
            plus = ctx.losses_at([p + s for p, s in zip(params, step)])
            minus = ctx.losses_at([p - s for p, s in zip(params, step)])
        return -ctx.learning_rate * (plus - minus) / (2 * eps)

    def get_extra_state(self) -> Any:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
