"""FAMO: fast adaptive multitask optimization.

Paper: B. Liu, Y. Feng, P. Stone, Q. Liu, "FAMO: Fast Adaptive Multitask Optimization",
NeurIPS 2023 (official code: Cranial-XIX/FAMO).

What it does: keeps task logits ξ (z = softmax(ξ)) and descends
Σ_t z_t·log(L_t − b_t) / c with c = Σ_t z_t / (L_t − b_t) (z and c held constant), which
moves every log-loss at a balanced rate; after the optimizer step it re-evaluates the losses
on the same batch and updates ξ with its own Adam, using the gradient
Jᵀ_softmax·δ with δ_t = log(L_t − b_t) − log(L'_t − b_t) the decrease of each log-loss.

Hyperparameters: ``lr`` 0.025 (the paper's and the official code's) and ``weight_decay``
γ = 1e-3 (LibMTL's default; the official ``famo.py`` defaults to 0.01 and its experiment
scripts pass a value per dataset) of the logits' Adam; ``min_losses`` b_t, the lower bounds of the losses (empty: 0 for every
task, as in the paper's experiments). The logits are a parameter of the method but not of the
run's optimizer (``trainable_parameters()`` is empty); the logits' Adam state is saved with
the method (``get_extra_state``, tensors and primitives only).

Weight scale: the weights recorded (and applied) are the gradient weights of the objective,
w_t = z_t / (c·(L_t − b_t)), which sum to 1. Backpropagating Σ_t w_t L_t gives exactly the
gradient of the FAMO objective, so FAMO also composes with methods that use the Jacobian.

Deviations: the official ``famo.py`` (and its experiment code) clips the shared parameters'
gradient norm to 1 after the backward pass; LibMTL does not, and neither does this
implementation (the engine applies no clipping for any method, so comparisons stay fair).
The ε = 1e-8 added to L − b is kept. The re-evaluated losses are the tasks' raw losses,
the same as the ones weighed unless a regularizer transforms the losses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import param
from methods._weighting_utils import per_task_vector
from methods.base import MethodConfig, Needs, StepContext, Weighted, Weighting
from methods.registry import register_method

EPS = 1e-8


@dataclass
class FAMOConfig(MethodConfig):
    lr: float = param(0.025, low=0.0, low_open=True)
    """Learning rate of the logits' Adam (the paper: 0.025)."""
    weight_decay: float = param(1e-3, low=0.0)
    """Weight decay γ of the logits' Adam (LibMTL's default: 1e-3)."""
    min_losses: tuple[float, ...] = ()
    """Lower bound b_t of each task's loss; empty: 0 for every task."""


def famo_weights(losses: Tensor, logits: Tensor, min_losses: Tensor) -> Tensor:
    """[T] gradient weights z_t / (c·D_t) of the FAMO objective, D = L − b + ε (sum to 1).
    Leading dimensions are independent runs ([R, T] losses and logits give [R, T])."""
    z = torch.softmax(logits, dim=-1)
    gap = losses - min_losses + EPS
    c = (z / gap).sum(dim=-1, keepdim=True)
    return z / (c * gap)


def famo_logit_grad(logits: Tensor, prev_losses: Tensor, new_losses: Tensor,
                    min_losses: Tensor) -> Tensor:
    """Gradient fed to the logits' optimizer: Jᵀ_softmax(ξ)·δ, where δ_t is the decrease of
    log(L_t − b_t) over the step; Jᵀ_softmax·δ = z ⊙ (δ − ⟨z, δ⟩). Batched like
    ``famo_weights``."""
    delta = torch.log(prev_losses - min_losses + EPS) - torch.log(new_losses - min_losses + EPS)
    z = torch.softmax(logits, dim=-1)
    return z * (delta - (z * delta).sum(dim=-1, keepdim=True))


@register_method("famo")
class FAMO(Weighting):
    description = "FAMO: balanced log-loss descent with task logits updated after each step (sum to 1)"
    needs = Needs(after_step=True)
    Config = FAMOConfig

    def __init__(self, config: FAMOConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        bounds = per_task_vector("method.famo.min_losses", config.min_losses, self.num_tasks, 0.0)
        self.register_buffer("min_losses", bounds.float())
        self.logits = nn.Parameter(torch.zeros(self.num_tasks))
        self.optimizer = torch.optim.Adam([self.logits], lr=config.lr,
                                          weight_decay=config.weight_decay)
        self._prev_losses: Tensor | None = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def weigh(self, ctx: StepContext) -> Weighted:
        losses = ctx.losses.detach()
        self._prev_losses = losses
        weights = famo_weights(losses, self.logits.detach().to(losses.dtype),
                               self.min_losses.to(losses.dtype))
        return Weighted(weights=weights)

    def after_step(self, ctx: StepContext) -> None:
        if self._prev_losses is None:
            raise RuntimeError("FAMO.after_step called before weigh in this step")
        new_losses = ctx.recompute_losses().detach()
        grad = famo_logit_grad(self.logits.detach(), self._prev_losses.to(self.logits.dtype),
                               new_losses.to(self.logits.dtype), self.min_losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = grad
        self.optimizer.step()
        self._prev_losses = None

    def get_extra_state(self) -> Any:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
