"""Loss scaling as the gradient engine sees it: the same four operations whether fp16
scaling is on (``Fp16Scaling``) or off (``NoScaling``), so that every pass of the engine
reads one way and a run without scaling does no extra work."""
from __future__ import annotations

import torch
from torch import Tensor

from engine.core.amp import LossScaler
from engine.core.distributed import World


class NoScaling:
    """float32 or bf16: backward starts from the losses themselves and nothing overflows."""

    def scaled(self, value: Tensor) -> Tensor:
        """What to backpropagate for ``value`` (a loss, or a gradient fed into backward)."""
        return value

    def unscaled(self, grad: Tensor) -> Tensor:
        """A gradient as a method must see it: float32 where autocast made it bf16/fp16
        (the gradients w.r.t. Z)."""
        return grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad

    def unscale_(self, grads: list[Tensor]) -> None:
        """Divide gradients of scaled losses by the scale, in place: here there is none."""

    def check(self) -> None:
        """Stop the step if what a method is about to see overflowed: it cannot here."""


class Fp16Scaling(NoScaling):
    """Dynamic loss scaling (engine/core/amp.py): every backward pass starts from s·L, and
    what a method sees is divided by s at once. Overflow is agreed over every rank."""

    def __init__(self, scaler: LossScaler, world: World | None):
        self.scaler = scaler
        self.world = world

    def scaled(self, value: Tensor) -> Tensor:
        return self.scaler.scaled(value)

    def unscaled(self, grad: Tensor) -> Tensor:
        return self.scaler.unscaled(grad)

    def unscale_(self, grads: list[Tensor]) -> None:
        self.scaler.unscale_(grads)

    def check(self) -> None:
        self.scaler.check(self.world)
