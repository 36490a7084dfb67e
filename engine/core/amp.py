"""Mixed precision: autocast around the forward and dynamic loss scaling for fp16.

``engine.amp = bf16 | fp16`` runs the model's forward (and the task losses) under
``torch.autocast`` for the run's device type; the task losses are cast back to float32, so
every method sees float32 losses.

fp16 gradients underflow without loss scaling. ``LossScaler`` keeps a dynamic scale s on
the device, with the semantics of ``torch.amp.GradScaler`` (start 2^16, halve on overflow
and skip the step, double after 2000 clean steps): every backward pass the engine runs
(the Jacobian loop or batched path, the representation gradients, the weighting objective,
the aggregated direction, the heads, the penalties) starts from s·L; what a method sees
(Jacobian, representation gradients, task gradients) is divided by s as soon as it is
computed, so the methods' mathematics is unchanged; the gradients left in ``.grad`` stay
scaled until the trainer divides them by s. An overflow skips the optimizer step, as
GradScaler does: if what a method is about to see overflowed, the engine stops the step
there (``GradientOverflow``), so no method ever sees or stores non-finite gradients;
otherwise the final gradients are checked before the optimizer steps. Overflow of scaled
gradients is not divergence: the losses themselves are checked separately.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class GradientOverflow(Exception):
    """The scaled gradients of this step overflowed: the step is skipped."""


def autocast(device: torch.device, amp: str):
    """The autocast context of ``engine.amp`` (a no-op context for ``none``)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


class LossScaler:
    """Dynamic loss scale for fp16, kept on the device (no host sync except the one that
    decides whether the optimizer steps)."""

    def __init__(self, device: torch.device, init_scale: float = 2.0 ** 16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.scale = torch.full((), init_scale, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.skipped_steps = 0

    def inv_scale(self) -> Tensor:
        return self.scale.double().reciprocal().float()

    def scaled(self, value: Tensor) -> Tensor:
        """s·value (a loss or a gradient to backpropagate), in value's dtype."""
        return value * self.scale.to(value.dtype)

    def unscaled(self, grad: Tensor) -> Tensor:
        """grad / s in float32 (differentiable), noting any overflow of the scaled grad."""
        self.note_nonfinite(grad)
        return grad.float() * self.inv_scale()

    def unscale_(self, grads: list[Tensor]) -> None:
        """Divide float32 gradients by s in place, noting any overflow."""
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self.inv_scale())

    def note_nonfinite(self, grad: Tensor) -> None:
        self.found_inf.add_((~torch.isfinite(grad.detach())).any().float())

    def check(self, world=None) -> None:
        """Raise GradientOverflow if anything noted so far overflowed (on any rank);
        waits for the device."""
        if world is not None:
            world.sum_(self.found_inf)
        if self.overflowed():
            raise GradientOverflow

    def overflowed(self) -> bool:
        """Whether this step's scaled gradients overflowed (waits for the device)."""
        return bool(self.found_inf > 0)

    def update(self) -> None:
        """Back off after an overflow, grow after ``growth_interval`` clean steps; reset."""
        torch._amp_update_scale_(self.scale, self.growth_tracker, self.found_inf,
                                 self.growth_factor, self.backoff_factor, self.growth_interval)
        self.found_inf.zero_()

    def state_dict(self) -> dict:
        return {"scale": self.scale.detach().cpu(), "growth_tracker": self.growth_tracker.cpu(),
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale.copy_(state["scale"])
        self.growth_tracker.copy_(state["growth_tracker"])
        self.skipped_steps = int(state["skipped_steps"])
