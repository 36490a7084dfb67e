"""Krum and Multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017; TorchJD's ``Krum``.

A Byzantine-robust aggregator from distributed learning, applied to the task gradients: each
gradient g_i is scored by the sum of its distances to its T − f − 2 nearest other gradients
(f = ``n_byzantine``, the number of gradients that may be arbitrary), and the update is the
gradient of lowest score (Krum) or the mean of the m = ``n_selected`` gradients of lowest
scores (Multi-Krum). The chosen gradient is the one closest to a cluster of the others; an
outlying task gradient is never chosen.

Hyperparameters (``method.krum.*``):
- ``n_byzantine`` f = 0: neither the paper nor TorchJD has a default (TorchJD requires it);
  0 is the smallest, and the only one that runs on three tasks. T ≥ f + 3 is required (at
  least one neighbour to score by) and checked when the method is built; the paper's
  robustness guarantee needs T > 2f + 2;
- ``n_selected`` m = 1 (TorchJD's default; 1 is Krum, m > 1 Multi-Krum), at most T;
- ``distance`` = "squared": the score sums squared Euclidean distances, as the paper defines
  it (s(i) = Σ_{i→j} ||g_i − g_j||²); "euclidean" sums the distances themselves, as
  TorchJD's ``Krum`` does. The two may pick different gradients.

Distances come from the Gramian, ||g_i − g_j||² = G_ii + G_jj − 2 G_ij (clamped at 0), as in
TorchJD. Ties (equal scores, e.g. duplicated gradients) go to the lowest task index.

Weight scale: the recorded weights are 1/m on the selected tasks, 0 elsewhere (sum 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import ConfigError, param
from methods.base import GramianAggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method

DISTANCES = ("squared", "euclidean")


def krum_scores(gramian: Tensor, n_byzantine: int = 0, distance: str = "squared") -> Tensor:
    """[T] Krum scores: each gradient's summed (squared) distances to its T − f − 2 nearest
    other gradients."""
    G = gramian.detach()
    T = G.shape[0]
    diagonal = G.diagonal()
    squared = (diagonal[:, None] + diagonal[None, :] - 2 * G).clamp_min(0)
    dist = squared if distance == "squared" else squared.sqrt()
    # a gradient is not its own neighbour
    others = dist.masked_fill(torch.eye(T, dtype=torch.bool, device=G.device), float("inf"))
    nearest = torch.sort(others, dim=1).values[:, :T - n_byzantine - 2]
    return nearest.sum(1)


def krum_weights(gramian: Tensor, n_byzantine: int = 0, n_selected: int = 1,
                 distance: str = "squared") -> Tensor:
    """[T] weights: 1/m on the m gradients of lowest score (lowest index first on ties)."""
    scores = krum_scores(gramian, n_byzantine, distance)
    chosen = torch.sort(scores, stable=True).indices[:n_selected]
    weights = torch.zeros_like(scores)
    weights[chosen] = 1.0 / n_selected
    return weights


@register_method("krum")
class Krum(GramianAggregator):
    description = ("Krum (Blanchard et al., NeurIPS 2017): the task gradient closest to its "
                   "nearest others (Multi-Krum: the mean of the m closest)")
    needs = Needs(jacobian=True)

    @dataclass
    class Config(MethodConfig):
        n_byzantine: int = param(0, low=0)
        n_selected: int = param(1, low=1)
        distance: str = param("squared", choices=DISTANCES)

    @classmethod
    def min_tasks(cls, config: Config) -> int:
        return config.n_byzantine + 3

    def __init__(self, config: Config, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        if self.num_tasks < self.min_tasks(config):
            raise ConfigError(f"method.krum.n_byzantine={config.n_byzantine} needs at least "
                              f"{self.min_tasks(config)} tasks (n_byzantine + 3); this "
                              f"benchmark has {self.num_tasks}")
        if config.n_selected > self.num_tasks:
            raise ConfigError(f"method.krum.n_selected={config.n_selected} is more than the "
                              f"{self.num_tasks} tasks")

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        return krum_weights(gramian, self.config.n_byzantine, self.config.n_selected,
                            self.config.distance)
