"""Small helpers shared by the loss-weighting methods (not a method: nothing is registered).

- per-task option vectors (FAMO's loss bounds, MTAdam's ranks) checked against T;
- per-layer views of a [T, P] Jacobian (MetaBalance and MTAdam act on each shared
  parameter tensor separately, whose sizes the engine gives in ``ctx.shared_sizes``);
- logging one scalar per task through ``ctx.log`` without a host sync.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from engine.errors import ConfigError
from methods.base import StepContext


def per_task_vector(name: str, values: Sequence[float], num_tasks: int, default: float,
                    low: float | None = None, low_open: bool = False) -> Tensor:
    """A [T] float64 tensor from a per-task option: empty means ``default`` for every task;
    otherwise exactly one value per task, each above ``low`` (strictly when ``low_open``)."""
    if len(values) == 0:
        return torch.full((num_tasks,), float(default), dtype=torch.float64)
    if len(values) != num_tasks:
        raise ConfigError(f"{name} has {len(values)} values; expected one per task ({num_tasks}) "
                          f"or none for the default {default:g}")
    if low is not None:
        bad = [v for v in values if (v <= low if low_open else v < low)]
        if bad:
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            raise ConfigError(f"{name}={list(values)!r} is out of range; every value must be {bound}")
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def layer_norms(grads: Tensor, sizes: Sequence[int]) -> Tensor:
    """[T, L] Euclidean norms of each task's gradient restricted to each parameter tensor
    (columns of ``grads`` [T, P] in the order of ``sizes``)."""
    return torch.stack([block.norm(dim=1) for block in grads.split(list(sizes), dim=1)], dim=1)


def expand_layers(per_layer: Tensor, sizes: Sequence[int]) -> Tensor:
    """[T, L] -> [T, P]: repeat each layer's value over that layer's columns."""
    counts = torch.as_tensor(list(sizes), device=per_layer.device)
    return per_layer.repeat_interleave(counts, dim=1)


def log_per_task(ctx: StepContext, prefix: str, values: Tensor) -> None:
    """Record one statistic per task, named ``prefix/<task>``."""
    for name, value in zip(ctx.task_names, values.detach()):
        ctx.log(f"{prefix}/{name}", value)
