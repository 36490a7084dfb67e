"""Data-parallel training of one run across processes (``torchrun``), for every method.

Every rank draws the same global batch (same seeded generator) and trains on its own
contiguous slice, so a run on N processes with batch B·N computes what one process computes
on the same B·N samples. The trick that makes this exact for every kind of method:

- each rank's task losses are scaled to ℓ_r = L_r / N, so that the global loss is Σ_r ℓ_r,
  and the methods see them "straight through": value Σ_r ℓ_r (the global loss, identical on
  every rank), gradient that of ℓ_r. Anything a method computes from loss values (weights,
  log transforms, normalisations, nonlinear objectives such as GLS) is then identical on
  every rank, and every gradient a rank computes is its share of the global gradient;
- every gradient buffer of the model is summed over the ranks once per step (one
  all-reduce of the flat shared buffer, one of the task-specific buffer);
- Jacobian methods: each rank's [T, P] Jacobian is summed (T·P values per step), so every
  rank aggregates the same global matrix and applies the same update;
- representation-level aggregators: the per-task gradients w.r.t. Z are concatenated over
  the ranks (all-gather, T·B·|Z| values), aggregated identically on every rank, and each
  rank backpropagates its slice of the direction;
- a method's own parameters get gradients computed from global values only, so they are
  identical on every rank and not reduced;
- stochastic methods draw from generators seeded identically on every rank, on identical
  inputs, so they draw the same numbers.

Evaluation runs on every rank over the whole split (no communication); rank 0 alone
writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ----------------------------------------------------------------- collectives
    def sum_(self, tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def global_value(self, local: Tensor) -> Tensor:
        """``local`` (this rank's share) summed over the ranks in value, with the gradient
        of ``local`` alone ("straight through")."""
        total = local.detach().clone()
        self.sum_(total)
        return local + (total - local.detach())

    def gather_columns(self, matrix: Tensor) -> Tensor:
        """[T, D_r] of every rank concatenated into [T, Σ D_r], in rank order."""
        parts = [torch.empty_like(matrix) for _ in range(self.size)]
        dist.all_gather(parts, matrix.contiguous())
        return torch.cat(parts, dim=1)

    def gather_rows(self, tensor: Tensor) -> Tensor:
        """``tensor`` of every rank concatenated along dim 0, in rank order (no gradient)."""
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def gather_with_grad(self, tensor: Tensor) -> Tensor:
        """Concatenate ``tensor`` of every rank along dim 0, keeping the gradient flowing
        back to each rank's own slice (the backward sums every rank's gradient of it)."""
        return _GatherRows.apply(tensor, self)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gathered gradient over the ranks
    and keeps this rank's rows. Written out (rather than torch.distributed.nn's) so that
    the gradients sent are contiguous whatever layout autograd hands back: backends such
    as gloo silently misread strided tensors."""

    @staticmethod
    def forward(ctx, tensor: Tensor, world: World) -> Tensor:
        ctx.world = world
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.world.rank * ctx.rows
        return grad[start:start + ctx.rows], None


def slice_for(n: int, world: World) -> slice:
    if n % world.size:
        raise ValueError(f"a batch of {n} cannot be split evenly over {world.size} processes; "
                         f"use a batch size divisible by the number of processes")
    per = n // world.size
    return slice(world.rank * per, (world.rank + 1) * per)


def shutdown(world: World | None) -> None:
    """Leave the process group together (a process that exits while the group lives can
    abort inside the backend)."""
    if world is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_spec: str) -> tuple[World | None, str]:
    """Join the process group that ``torchrun`` describes in the environment. Returns the
    world (None for a single process) and the device each rank should use."""
    size = launched_world_size()
    if size <= 1:
        return None, device_spec
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_spec = f"cuda:{local_rank}"
    elif device_spec == "auto":
        device_spec = "cpu"
    return World(dist.get_rank(), dist.get_world_size()), device_spec
