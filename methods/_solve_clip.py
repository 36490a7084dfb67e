"""Clipping of an aggregated update to a maximum norm (Nash-MTL, FairGrad).

Both authors' codes call ``torch.nn.utils.clip_grad_norm_(shared_parameters, max_norm)``
after writing the aggregated gradient; since the engine writes the direction into the
shared parameters as it is, clipping the direction is the same operation.
"""
from __future__ import annotations

import torch
from torch import Tensor


def clip_direction(direction: Tensor, max_norm: float) -> tuple[Tensor, Tensor]:
    """Scale ``direction`` down to norm ``max_norm`` when it is longer, with torch's
    coefficient max_norm / (‖d‖ + 1e-6) capped at 1; ``max_norm`` 0 disables. Returns the
    direction and the coefficient (a tensor: no host sync)."""
    if max_norm <= 0:
        return direction, torch.ones((), dtype=direction.dtype, device=direction.device)
    coef = (max_norm / (torch.linalg.vector_norm(direction) + 1e-6)).clamp(max=1.0)
    return direction * coef, coef
