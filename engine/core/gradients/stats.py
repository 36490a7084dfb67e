"""Sums over the steps of an epoch, kept on the device."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class EpochStats:
    """Sums over the steps of an epoch, kept on the device (no host sync per step)."""

    steps: int = 0
    loss_sum: Tensor | None = None
    weight_sum: Tensor | None = None
    weight_steps: int = 0
    logged: dict[str, Tensor] = field(default_factory=dict)
    logged_counts: dict[str, int] = field(default_factory=dict)

    def add_losses(self, losses: Tensor) -> None:
        self.loss_sum = losses if self.loss_sum is None else self.loss_sum + losses
        self.steps += 1

    def add_weights(self, weights: Tensor) -> None:
        self.weight_sum = weights if self.weight_sum is None else self.weight_sum + weights
        self.weight_steps += 1

    def log(self, name: str, value: Tensor) -> None:
        value = value.detach().float()
        self.logged[name] = value if name not in self.logged else self.logged[name] + value
        self.logged_counts[name] = self.logged_counts.get(name, 0) + 1

    def means(self) -> dict:
        out = {"loss": (self.loss_sum / max(self.steps, 1)).tolist() if self.loss_sum is not None else None,
               "weights": (self.weight_sum / self.weight_steps).tolist() if self.weight_sum is not None else None,
               "logged": {k: float(v) / self.logged_counts[k] for k, v in self.logged.items()}}
        return out
