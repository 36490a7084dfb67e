"""DWA: dynamic weight average.

Paper: S. Liu, E. Johns, A. J. Davison, "End-to-End Multi-Task Learning with Attention",
CVPR 2019 (official code: lorenmt/mtan).

What it does: weights each task by a softmax, at temperature T, of the ratio of its mean
training loss over the last two epochs, w_t = K·softmax_t(r_t / T) with
r_t = L̄_t(e-1) / L̄_t(e-2), so that tasks whose loss falls slowly get more weight.
The first two epochs use weight 1 for every task.

Hyperparameters: ``temperature`` (the paper's T, default 2.0).

Weight scale: the weights sum to K, the number of tasks (the paper's convention).

Deviations: none. As in the official code (and LibMTL), L̄_t(e) is the mean of the task's
training-batch losses over epoch e (here the engine's epoch mean, passed to
``on_epoch_end``). The two last epoch means are kept in the state dict, so a resumed run
weighs exactly as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.errors import param
from methods.base import MethodConfig, StepContext, Weighted, Weighting
from methods.registry import register_method


@dataclass
class DWAConfig(MethodConfig):
    temperature: float = param(2.0, low=0.0, low_open=True)
    """Softmax temperature T (the paper: 2)."""


def dwa_weights(last: Tensor, before_last: Tensor, temperature: float) -> Tensor:
    """[T] weights K·softmax((L̄(e-1) / L̄(e-2)) / T), summing to K."""
    ratio = last / before_last
    return last.shape[0] * torch.softmax(ratio / temperature, dim=0)


@register_method("dwa")
class DynamicWeightAverage(Weighting):
    description = "DWA: softmax of the epoch-to-epoch loss ratios at temperature T (sum to K)"
    Config = DWAConfig

    def __init__(self, config: DWAConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        # Row 0: mean losses of the epoch before the last; row 1: of the last epoch.
        self.register_buffer("epoch_losses", torch.ones(2, self.num_tasks, dtype=torch.float64))
        self.epochs_seen = 0

    def weigh(self, ctx: StepContext) -> Weighted:
        losses = ctx.losses.detach()
        if self.epochs_seen < 2:
            return Weighted(weights=torch.ones_like(losses))
        weights = dwa_weights(self.epoch_losses[1], self.epoch_losses[0], self.config.temperature)
        return Weighted(weights=weights.to(losses.dtype))

    def on_epoch_end(self, epoch: int, mean_train_losses: Tensor) -> None:
        self.epoch_losses[0] = self.epoch_losses[1]
        self.epoch_losses[1] = mean_train_losses.detach().to(self.epoch_losses)
        self.epochs_seen += 1

    def get_extra_state(self) -> Any:
        return {"epochs_seen": self.epochs_seen}

    def set_extra_state(self, state: Any) -> None:
        self.epochs_seen = int(state["epochs_seen"])
