"""``GradientEngine``: the model's shared and task-specific parameters, their flat gradient
buffers, the per-task gradients of the shared parameters (the Jacobian, by a loop of
backward passes or one batched pass) and the writing of a direction into the buffers."""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from engine.core.amp import LossScaler
from engine.core.distributed import World
from engine.core.gradients.buffers import FlatGrads
from engine.core.gradients.parallel import DataParallel, SingleProcess
from engine.core.gradients.precision import Fp16Scaling, NoScaling

log = logging.getLogger(__name__)


class GradientEngine:
    """Per-model state of the gradient computations: the shared and task-specific
    parameters, their flat gradient buffers, the persistent Jacobian and its path."""

    def __init__(self, model, task_names: tuple[str, ...], jacobian: str, chunk_size: int,
                 device: torch.device, world: World | None = None,
                 scaler: LossScaler | None = None, compiled: bool = False):
        self.model = model
        self.precision = NoScaling() if scaler is None else Fp16Scaling(scaler, world)
        self.parallel = SingleProcess() if world is None else DataParallel(world)
        self.task_names = task_names
        self.shared = model.shared_parameters()
        self.heads = {t: model.head_parameters(t) for t in task_names}
        self.all_head_params = [p for t in task_names for p in self.heads[t]]
        shared_ids = {id(p) for p in self.shared}
        # Everything else of the model (the heads; every encoder for single-task learning).
        self.specific = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
        self.shared_grads = FlatGrads(self.shared)
        self.specific_grads = FlatGrads(self.specific)
        self.sizes = self.shared_grads.sizes
        self.num_shared = sum(self.sizes)
        self.head_slices = self._head_slices()
        if jacobian == "auto":
            # On a few CPU cores a loop of backward passes beats the vmapped one; on
            # accelerators batching usually wins for the models here. A compiled encoder's
            # backward has no batching rule under inductor (config.py refuses "batched").
            jacobian = "loop" if device.type == "cpu" or compiled else "batched"
        self.jacobian_path = jacobian
        self.chunk_size = chunk_size
        self.fallback_reason: str | None = None
        self._jacobian: Tensor | None = None
        self._extra_jacobians: dict[int, Tensor | None] = {}

    def _head_slices(self) -> list[tuple[int, int]] | None:
        """Where each task's head lies in the task-specific flat buffer: the model lists
        the heads after any encoders, each head's parameters together, in task order.
        None if a head shares parameters with another one (then they are not contiguous)."""
        offsets, start = {}, 0
        for p, size in zip(self.specific, self.specific_grads.sizes):
            offsets[id(p)] = start
            start += size
        slices = []
        for task in self.task_names:
            params = self.heads[task]
            if not params:
                slices.append((0, 0))
                continue
            begin = offsets.get(id(params[0]))
            if begin is None:
                return None
            end = begin
            for p in params:
                if offsets.get(id(p)) != end:
                    return None
                end += p.numel()
            slices.append((begin, end))
        return slices

    # ------------------------------------------------------------------ buffers
    def unscale_grads(self, method_params: list[Tensor]) -> None:
        """Divide every gradient left in ``.grad`` by the loss scale (fp16 only)."""
        grads = [flat.buffer for flat in (self.shared_grads, self.specific_grads)
                 if flat.buffer is not None]
        grads += [p.grad for p in method_params if p.grad is not None]
        self.precision.unscale_(grads)

    def zero_grad(self, method_params: list[Tensor]) -> None:
        self.shared_grads.zero()
        self.specific_grads.zero()
        for p in method_params:
            p.grad = None

    def reduce_grads(self) -> None:
        """Sum the model's gradient buffers over the ranks (data parallelism only)."""
        for flat in (self.shared_grads, self.specific_grads):
            if flat.buffer is not None:
                self.parallel.sum_(flat.buffer)

    # ------------------------------------------------------------------ Jacobian
    def _jacobian_buffer(self, rows: int) -> Tensor:
        """The persistent [T, P] Jacobian, reused at every step (valid until the next)."""
        if self._jacobian is None or self._jacobian.shape[0] != rows:
            self._jacobian = self.shared_grads.buffer.new_empty((rows, self.num_shared))
        return self._jacobian

    def jacobian(self, losses: Tensor, with_heads: bool = False,
                 parts: list[Tensor] | None = None) -> Tensor:
        """[T, P] per-task gradients of the shared parameters. With ``with_heads`` (loop
        path only) each head also receives the gradient of its own loss on the way;
        returns whether that happened as the attribute ``heads_done``. ``parts``: the
        same losses as separate graphs (see ``TrainStepContext``), for the loop path."""
        if not self.shared:
            raise RuntimeError("the model has no shared parameters to take a Jacobian of")
        self.heads_done = False
        jac = None
        if self.jacobian_path == "batched":
            try:
                jac = self._jacobian_batched(losses)
            except RuntimeError as exc:  # an op without a batching rule
                self.jacobian_path = "loop"
                self.fallback_reason = f"batched Jacobian failed ({exc}); using the loop"
                log.warning(self.fallback_reason)
        if jac is None:
            jac = self._jacobian_loop(losses if parts is None else parts, with_heads)
        self.parallel.sum_(jac)  # every rank holds its share: the sum is the global Jacobian
        self.precision.unscale_([jac])
        self.precision.check()  # a method never sees an overflowed Jacobian
        return jac

    def extra_jacobian(self, index: int, losses: Tensor,
                       parts: list[Tensor] | None = None) -> Tensor:
        """``jacobian(losses)`` of an extra batch (``Needs.extra_batches``), in a persistent
        buffer of its own per ``index``: the step's own Jacobian stays as it is."""
        main = self._jacobian
        self._jacobian = self._extra_jacobians.get(index)
        try:
            return self.jacobian(losses, parts=parts)
        finally:
            self._extra_jacobians[index] = self._jacobian
            self._jacobian = main

    def _jacobian_loop(self, losses: Tensor | list[Tensor], with_heads: bool) -> Tensor:
        jac = self._jacobian_buffer(len(losses))
        flat = self.shared_grads.buffer
        for t, task in enumerate(self.task_names):
            flat.zero_()
            inputs = self.shared + self.heads[task] if with_heads else self.shared
            torch.autograd.backward(self.precision.scaled(losses[t]), inputs=inputs,
                                    retain_graph=True)
            jac[t].copy_(flat)
        flat.zero_()
        self.heads_done = with_heads
        return jac

    def _jacobian_batched(self, losses: Tensor) -> Tensor:
        num = losses.shape[0]
        jac = self._jacobian_buffer(num)
        chunk = self.chunk_size or num
        eye = self.precision.scaled(torch.eye(num, device=losses.device, dtype=losses.dtype))
        for start in range(0, num, chunk):
            rows = eye[start:start + chunk]
            grads = torch.autograd.grad(losses, self.shared, grad_outputs=rows, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
            block = jac[start:start + chunk]
            if self.shared_grads.contiguous:
                # One concatenation of views into the persistent buffer (no copies per parameter).
                torch.cat([g.reshape(rows.shape[0], -1) if g is not None
                           else p.new_zeros(rows.shape[0], p.numel())
                           for g, p in zip(grads, self.shared)], dim=1, out=block)
            else:
                self._write_in_memory_order(block, grads)
        return jac

    def _write_in_memory_order(self, block: Tensor, grads) -> None:
        """Rows of per-parameter gradients into ``block``, each parameter's columns in its
        memory order (as the loop path reads them from the flat buffer)."""
        offset = 0
        for g, p in zip(grads, self.shared):
            cols = block[:, offset:offset + p.numel()]
            target = cols.as_strided((block.shape[0], *p.shape), (block.stride(0), *p.stride()))
            if g is None:
                target.zero_()
            else:
                target.copy_(g)
            offset += p.numel()

    # ------------------------------------------------------------------ writing an update
    def scale_head_grads(self, scales: Tensor) -> None:
        """Multiply each head's gradient (of its own loss only, at this point) by its scale:
        one multiplication per head, on its slice of the flat buffer."""
        if self.specific_grads.buffer is None:
            return  # heads without parameters (toy2d)
        scales = scales.to(self.specific_grads.buffer.dtype)
        if self.head_slices is None:  # heads sharing parameters: not contiguous
            for scale, task in zip(scales, self.task_names):
                for p in self.heads[task]:
                    p.grad.mul_(scale)
            return
        buffer = self.specific_grads.buffer
        for t, (begin, end) in enumerate(self.head_slices):
            if end > begin:
                buffer[begin:end].mul_(scales[t])

    def set_shared_grads(self, direction: Tensor) -> None:
        """Make the global ``direction`` [P] the gradient of the shared parameters (one
        copy), as this rank's share."""
        self.shared_grads.buffer.copy_(self.precision.scaled(direction))
        self.parallel.share_(self.shared_grads.buffer)

    def set_shared_combination(self, weights: Tensor, jacobian: Tensor) -> None:
        """Shared gradient = Jᵀ·weights, written straight into the gradient buffer."""
        torch.mv(jacobian.T, self.precision.scaled(weights.to(jacobian.dtype)),
                 out=self.shared_grads.buffer)
        self.parallel.share_(self.shared_grads.buffer)
