"""Step-level traces of a run, for the analysis: training curves, gradient conflict and
(for benchmarks that have one) the trajectory of the parameters.

Values stay on the device during an epoch and reach the host once, at its end, so the
training step never waits for a host sync because of them.

Files (one JSON object per line):
  curve.jsonl       {"step", "epoch", "losses": {task: mean raw training loss over the interval}}
  conflict.jsonl    {"step", "epoch", "space", "cosine": {"a|b": cos}, "norms": {task: norm}}
  trajectory.jsonl  {"step", "point": [...], "losses": [...]}
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from engine.core.results import write_jsonl

CURVE = "curve.jsonl"
CONFLICT = "conflict.jsonl"
TRAJECTORY = "trajectory.jsonl"


def gradient_statistics(grads: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise cosine similarities [T, T] and norms [T] of the rows of ``grads``."""
    gram = grads @ grads.T
    norms = gram.diagonal().clamp_min(0).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(grads.dtype).tiny)
    return cosine, norms


class Traces:
    def __init__(self, task_names: tuple[str, ...], curve_every: int, conflict_every: int,
                 conflict_space: str, trajectory_every: int):
        self.task_names = task_names
        self.curve_every = curve_every
        self.conflict_every = conflict_every
        self.conflict_space = conflict_space
        self.trajectory_every = trajectory_every
        self.records: dict[str, list[dict]] = {CURVE: [], CONFLICT: [], TRAJECTORY: []}
        self._pending: dict[str, list] = {CURVE: [], CONFLICT: [], TRAJECTORY: []}
        self._curve_sum: Tensor | None = None
        self._curve_count = 0

    # ----------------------------------------------------------------- during the epoch
    def add_losses(self, step: int, epoch: int, losses: Tensor) -> None:
        if not self.curve_every:
            return
        self._curve_sum = losses if self._curve_sum is None else self._curve_sum + losses
        self._curve_count += 1
        if (step + 1) % self.curve_every == 0:
            self._pending[CURVE].append((step + 1, epoch, self._curve_sum / self._curve_count))
            self._curve_sum, self._curve_count = None, 0

    def wants_conflict(self, step: int) -> bool:
        return bool(self.conflict_every) and step % self.conflict_every == 0

    def add_conflict(self, step: int, epoch: int, grads: Tensor) -> None:
        cosine, norms = gradient_statistics(grads.detach())
        self._pending[CONFLICT].append((step, epoch, cosine, norms))

    def wants_trajectory(self, step: int) -> bool:
        return bool(self.trajectory_every) and step % self.trajectory_every == 0

    def add_trajectory(self, step: int, point: list[float] | Tensor, losses: Tensor) -> None:
        self._pending[TRAJECTORY].append((step, point, losses.detach()))

    # ----------------------------------------------------------------- at the epoch's end
    def flush(self, step: int, epoch: int) -> None:
        """Move the epoch's pending values to the host as records. A partial curve
        interval ends with the epoch, so that a resumed run records the same curve."""
        names = self.task_names
        if self._curve_count:
            self._pending[CURVE].append((step, epoch, self._curve_sum / self._curve_count))
            self._curve_sum, self._curve_count = None, 0
        for step, epoch, losses in self._pending[CURVE]:
            self.records[CURVE].append({"step": step, "epoch": epoch,
                                        "losses": dict(zip(names, losses.tolist()))})
        for step, epoch, cosine, norms in self._pending[CONFLICT]:
            cos = cosine.tolist()
            pairs = {f"{a}|{b}": cos[i][j] for i, a in enumerate(names)
                     for j, b in enumerate(names) if i < j}
            self.records[CONFLICT].append({"step": step, "epoch": epoch,
                                           "space": self.conflict_space, "cosine": pairs,
                                           "norms": dict(zip(names, norms.tolist()))})
        for step, point, losses in self._pending[TRAJECTORY]:
            point = point.tolist() if isinstance(point, Tensor) else list(point)
            self.records[TRAJECTORY].append({"step": step, "point": point,
                                             "losses": losses.tolist()})
        for pending in self._pending.values():
            pending.clear()

    def write(self, run_dir: Path) -> None:
        for name, records in self.records.items():
            if records:
                write_jsonl(run_dir / name, records)

    def state(self) -> dict:
        return {name: list(records) for name, records in self.records.items()}

    def load_state(self, state: dict) -> None:
        self.records = {name: list(state.get(name, [])) for name in self.records}
