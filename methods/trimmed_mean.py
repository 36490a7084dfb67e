"""Trimmed mean: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018 (the coordinate-wise trimmed mean, Option II
of Algorithm 1); TorchJD's ``TrimmedMean``.

A Byzantine-robust aggregator from distributed learning, applied to the task gradients: in
every coordinate of the shared parameters the k largest and the k smallest of the T task
gradients' values are removed, and the remaining T − 2k are averaged. A coordinate where
one task pulls far from the others follows the others.

Hyperparameters (``method.trimmed_mean.*``):
- ``trim_number`` k = 1: TorchJD requires it and the paper sets a fraction β (k = βT)
  without a default; 1 is the smallest that trims anything (0 is the mean gradient) and
  runs on three tasks. T ≥ 2k + 1 is required and checked when the method is built.

Weight scale: none recorded; the update is not one combination of the task gradients (each
coordinate keeps its own tasks). Without trimming (k = 0) it is the mean gradient.

Cost: a sort of the [T, P] Jacobian along the tasks (one pass over the Jacobian, on its
device).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import ConfigError, param
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method


def trimmed_mean(grads: Tensor, trim_number: int = 1) -> Tensor:
    """[D] coordinate-wise mean of ``grads`` [T, D] without the ``trim_number`` largest and
    smallest values of each column."""
    T = grads.shape[0]
    kept = torch.sort(grads, dim=0).values[trim_number:T - trim_number]
    return kept.mean(dim=0)


@register_method("trimmed_mean")
class TrimmedMean(Aggregator):
    description = ("Trimmed mean (Yin et al., ICML 2018): per coordinate, the mean of the task "
                   "gradients without the k largest and k smallest values")
    needs = Needs(jacobian=True)

    @dataclass
    class Config(MethodConfig):
        trim_number: int = param(1, low=0)

    @classmethod
    def min_tasks(cls, config: Config) -> int:
        return 2 * config.trim_number + 1

    def __init__(self, config: Config, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        if self.num_tasks < self.min_tasks(config):
            raise ConfigError(f"method.trimmed_mean.trim_number={config.trim_number} needs at "
                              f"least {self.min_tasks(config)} tasks (2·trim_number + 1); "
                              f"this benchmark has {self.num_tasks}")

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        return Aggregated(direction=trimmed_mean(grads, self.config.trim_number))
