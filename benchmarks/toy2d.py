"""toy2d: the two-objective 2-D toy of CAGrad (Liu, Liu, Jin, Stone, Liu, "Conflict-Averse
Gradient Descent for Multi-task Learning", NeurIPS 2021), reused by Nash-MTL (Navon et al.,
ICML 2022) and FAMO (Liu et al., NeurIPS 2023). The functions are in ``datasets/toy.py``.

The shared "encoder" holds the point x ∈ ℝ² as its only parameter and outputs it (Z = x,
shape [1, 2]); the heads are identities without parameters; task ``L<i>``'s loss is
``s_i · L_i(x) − L*_i`` (scale ``data.loss_scale``, offset ``data.l_star``, both neutral by
default). The method's combined gradient lands in x.grad and the run's optimizer steps,
as in the published code. One epoch is ``data.steps_per_epoch`` steps on a dummy batch.

Protocols (profiles in ``profiles/toy2d.toml``; pick the start with ``data.start``):

- ``cagrad``: starts (−8.5, 7.5), (−8.5, −5), (9, 9); 100k Adam steps, lr 1e-3.
- ``nashmtl``: starts (−8.5, 7.5), (0, 0), (9, 9), (−7.5, −0.5), (9, −1); 35k steps;
  L1 scaled by 0.1.
- ``famo``: the same five starts, 50k steps, L1 scaled by 0.1; FAMO takes log(L − L*) and
  gets L* = (−21·0.1, −21) as its own option (``method.famo.min_losses``), as in its code.
  ``data.l_star`` instead subtracts L* inside the task losses, for any method that needs
  positive losses (every method then sees the shifted losses).
- ``quick``: 3,000 Adam steps at lr 1e-2 (not a published protocol: a CPU smoke run).

Metrics (per evaluation, lower is better): ``L1.value`` and ``L2.value`` are the raw toy
losses at x (unscaled, unshifted); ``L1.pareto_dist`` is the distance of x to the Pareto
set (the segment x1 ∈ [−7, 7], x2 = −8.3552). It is a joint measure, stored once under the
first task. Val and test are the same dummy evaluation.

Trajectory: ``trajectory_every`` (steps, ``data.trajectory_every``; 0 = off) and
``trajectory_point(model)``, the current point(s), which the trainer writes to
trajectory.jsonl with the task losses. With one encoder per task (``stl``) the point is
the concatenation of every encoder's x.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.base import Batch, Benchmark, MetricSpec, TaskSpec
from benchmarks.registry import register_benchmark
from datasets.toy import STARTS, pareto_distance, toy_losses
from engine.errors import ConfigError, check_choice, check_range

VALUE = MetricSpec("value", higher_is_better=False)
PARETO_DIST = MetricSpec("pareto_dist", higher_is_better=False)
TASKS = ("L1", "L2")


@dataclass
class Toy2dConfig:
    protocol: str = "cagrad"
    """Which published list of starting points ``start`` indexes: cagrad | nashmtl | famo."""
    start: int = 0
    """Index of the starting point in the protocol's list."""
    start_point: tuple[float, ...] = ()
    """An explicit starting point (x1, x2); overrides ``start`` when given."""
    loss_scale: tuple[float, ...] = (1.0, 1.0)
    """s_i: task i's loss is s_i · L_i (Nash-MTL and FAMO scale L1 by 0.1)."""
    l_star: tuple[float, ...] = ()
    """L*_i subtracted from the scaled losses (FAMO: (−2.1, −21)); empty = none."""
    steps_per_epoch: int = 1000
    trajectory_every: int = 10
    """Record the point every N steps (0 = never)."""

    def validate(self) -> None:
        check_choice("data.protocol", self.protocol, tuple(STARTS))
        check_range("data.start", self.start, 0, len(STARTS[self.protocol]) - 1)
        if self.start_point and len(self.start_point) != 2:
            raise ConfigError(f"data.start_point={list(self.start_point)} must be two numbers "
                              f"(x1, x2), or empty to use data.start")
        if len(self.loss_scale) != 2:
            raise ConfigError(f"data.loss_scale={list(self.loss_scale)} must be two numbers")
        for i, s in enumerate(self.loss_scale):
            check_range(f"data.loss_scale[{i}]", s, 0, low_open=True)
        if self.l_star and len(self.l_star) != 2:
            raise ConfigError(f"data.l_star={list(self.l_star)} must be two numbers, or empty")
        check_range("data.steps_per_epoch", self.steps_per_epoch, 1)
        check_range("data.trajectory_every", self.trajectory_every, 0)

    def point(self) -> tuple[float, float]:
        return tuple(self.start_point) if self.start_point else STARTS[self.protocol][self.start]


class ToyPoint(nn.Module):
    """The shared encoder: the point x itself, output as a batch of one."""

    def __init__(self, start: tuple[float, float]):
        super().__init__()
        self.x = nn.Parameter(torch.tensor(start, dtype=torch.float32))

    def forward(self, inputs: Tensor) -> Tensor:
        return self.x.unsqueeze(0).expand(inputs.shape[0], 2)


def toy_task_loss(pred: Tensor, target: Tensor, index: int, scale: float, offset: float) -> Tensor:
    """Task ``index``'s loss at the predicted point(s); ``target`` is a dummy."""
    del target
    return (scale * toy_losses(pred)[..., index] - offset).mean()



class ToyMeter:
    """The raw toy loss at the evaluated point (and, for the first task, the distance to
    the Pareto set)."""

    def __init__(self, index: int):
        self.index = index
        self.point: Tensor | None = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.point = pred.detach()[0].double()

    def compute(self) -> dict[str, float]:
        if self.point is None:
            raise ValueError("toy metrics without an evaluated point")
        scores = {"value": float(toy_losses(self.point)[self.index])}
        if self.index == 0:
            scores["pareto_dist"] = float(pareto_distance(self.point))
        return scores


@register_benchmark("toy2d")
class Toy2d(Benchmark):
    description = ("The 2-D two-objective toy of CAGrad / Nash-MTL / FAMO: x in R^2 is the "
                   "shared parameter; trajectories recorded for plots")
    setting = "task shift"
    fixed_batch = 1  # one dummy sample per step: the objective has no data
    Config = Toy2dConfig

    def __init__(self, config: Toy2dConfig, data_root: Path | None, device: torch.device):
        super().__init__(config, data_root, device)
        offsets = config.l_star or (0.0, 0.0)
        self.tasks = tuple(
            TaskSpec(name, partial(toy_task_loss, index=i, scale=config.loss_scale[i],
                                   offset=offsets[i]),
                     (VALUE, PARETO_DIST) if i == 0 else (VALUE,), partial(ToyMeter, i),
                     f"toy loss {name}")
            for i, name in enumerate(TASKS))
        self.trajectory_every = config.trajectory_every
        self._inputs = torch.zeros(1, 1, device=device)
        self._targets = {name: torch.zeros(1, device=device) for name in TASKS}

    def make_encoder(self) -> nn.Module:
        return ToyPoint(self.config.point())

    def make_head(self, task: TaskSpec) -> nn.Module:
        return nn.Identity()

    def trajectory_point(self, model: nn.Module) -> Tensor:
        """The current point x (a detached copy on the device; [2], or [2·T] with one
        encoder per task). Returned as a tensor so that recording it needs no host sync."""
        return torch.cat([enc.x.detach().reshape(-1) for enc in model.encoders]).clone()

    def split_size(self, split: str) -> int:
        return 1

    def batches_per_epoch(self, split: str, batch_size: int) -> int:
        return self.config.steps_per_epoch if split == "train" else 1

    def batches(self, split: str, batch_size: int,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        for _ in range(self.batches_per_epoch(split, batch_size)):
            yield Batch(self._inputs, self._targets)

    def extra_record(self) -> dict:
        return {"start_point": list(self.config.point()),
                "loss_scale": list(self.config.loss_scale),
                "l_star": list(self.config.l_star)}
