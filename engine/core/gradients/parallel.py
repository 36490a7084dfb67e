"""Data parallelism as the gradient engine sees it (engine/core/distributed.py explains the
scheme): the same operations whether the run is one process (``SingleProcess``, where each
is the identity) or several (``DataParallel``), so that the engine's passes read one way."""
from __future__ import annotations

from torch import Tensor

from engine.core.distributed import World
from methods.base import Aggregated, Aggregator
from methods.contract import check_aggregated


class SingleProcess:
    """One process: every value is already global."""

    size = 1

    def sum_(self, tensor: Tensor, differentiable: bool = False) -> Tensor:
        """``tensor`` summed over the ranks, in place."""
        return tensor

    def share_(self, buffer: Tensor) -> None:
        """Turn a global gradient into this rank's share, in place (the buffers are summed
        over the ranks after the update)."""

    def average(self, values: Tensor) -> Tensor:
        """The global mean of per-rank means (no gradient)."""
        return values

    def global_mean(self, local: Tensor) -> Tensor:
        """The global mean of per-rank means in value, with the gradient of ``local``."""
        return local

    def gather_samples(self, tensor: Tensor, dim: int) -> Tensor:
        """``tensor`` of every rank concatenated along ``dim`` (the sample dimension)."""
        return tensor

    def aggregate_reps(self, primary: Aggregator, grads: Tensor, reps: list[Tensor],
                       ctx) -> tuple[Aggregated, Tensor]:
        """A representation-level aggregator's answer for the gradients w.r.t. Z [T, D],
        and the part of its direction that this rank backpropagates."""
        agg = check_aggregated(primary, primary.aggregate(grads, ctx), grads.shape[1])
        return agg, agg.direction


class DataParallel(SingleProcess):
    """Several processes under ``torchrun``, each training on its slice of the batch."""

    def __init__(self, world: World):
        self.world = world
        self.size = world.size

    def sum_(self, tensor: Tensor, differentiable: bool = False) -> Tensor:
        if differentiable:
            raise NotImplementedError("differentiable task gradients are not summed over "
                                      "data-parallel processes")
        return self.world.sum_(tensor)

    def share_(self, buffer: Tensor) -> None:
        buffer.div_(self.size)

    def average(self, values: Tensor) -> Tensor:
        return self.world.sum_(values / self.size)

    def global_mean(self, local: Tensor) -> Tensor:
        return self.world.global_value(local / self.size)

    def gather_samples(self, tensor: Tensor, dim: int) -> Tensor:
        return self.world.gather_with_grad(tensor.movedim(dim, 0)).movedim(0, dim)

    def aggregate_reps(self, primary: Aggregator, grads: Tensor, reps: list[Tensor],
                       ctx) -> tuple[Aggregated, Tensor]:
        """Aggregate the representation gradients of the whole global batch, identically on
        every rank, and keep this rank's slice of the direction."""
        ctx.reps_override = [self.world.gather_rows(reps[0].detach())] * len(reps)
        try:
            gathered = self.world.gather_columns(grads)
            agg = check_aggregated(primary, primary.aggregate(gathered, ctx), gathered.shape[1])
        finally:
            ctx.reps_override = None
        width = grads.shape[1]
        return agg, agg.direction[self.world.rank * width:(self.world.rank + 1) * width]
