"""The gradient engine: what methods ask for, computed once per step, and the update.

Per step the engine offers (lazily, cached): the task losses; per-task gradients w.r.t. the
shared representation Z (T backward passes through the heads only, differentiable on
request); per-task gradients w.r.t. the shared parameters as a [T, P] Jacobian (a loop of T
backward passes, or one batched backward with ``is_grads_batched``, chunked). Then it turns
the method's answer into the gradients the optimizer applies:

- weighting: backpropagate Σ w_t L_t (+ penalties) once; if the method already asked for
  the Jacobian, the shared parameters get Jᵀw instead of another backward pass;
- aggregator: the shared parameters (or Z, for "rep" aggregators) get the aggregated
  direction; every head gets the gradient of its own task's loss (times the factor the
  aggregator gives it, if any: Nash-MTL, DB-MTL);
- regularizers: their penalty's gradient is added to everything it reaches.

With fp16 loss scaling (engine/core/amp.py) every backward pass here starts from scaled losses
and what a method sees is unscaled at once; ``.grad`` stays scaled until the trainer's
optimizer step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.core.amp import LossScaler
from engine.core.distributed import World
from methods.base import Aggregator, Method, Regularizer, Weighting
from methods.contract import check_aggregated, check_penalty, check_weighted

log = logging.getLogger(__name__)


class FlatGrads:
    """A flat buffer whose slices are the ``.grad`` of a list of parameters.

    Backward passes accumulate into the slices in place, so flattening the gradients of
    all parameters is reading the buffer and writing a direction back is one copy: no
    per-parameter work in the training step. Each slice has its parameter's memory layout
    (channels_last parameters get channels_last gradients, as autograd's layout contract
    wants), so a parameter's block of the buffer is in its memory order."""

    def __init__(self, params: list[Tensor]):
        self.params = params
        self.sizes = [p.numel() for p in params]
        dtypes = {p.dtype for p in params}
        if len(dtypes) > 1:
            raise ValueError(f"parameters of one group must share a dtype, got {sorted(map(str, dtypes))}")
        self.buffer = (torch.zeros(sum(self.sizes), dtype=params[0].dtype, device=params[0].device)
                       if params else None)
        self.contiguous = all(p.is_contiguous() for p in params)
        self._views = ([grad_view(piece, p) for piece, p in zip(self.buffer.split(self.sizes), params)]
                       if params else [])
        self.bind()

    def bind(self) -> None:
        for p, view in zip(self.params, self._views):
            p.grad = view

    def zero(self) -> None:
        if self.buffer is None:
            return
        if self.params[0].grad is None or self.params[0].grad.data_ptr() != self.buffer.data_ptr():
            self.bind()  # something replaced the gradients (e.g. loading a state)
        self.buffer.zero_()


def grad_view(piece: Tensor, p: Tensor) -> Tensor:
    """``piece`` (a 1-D slice) viewed with the shape and memory layout of ``p``."""
    if p.is_contiguous():
        return piece.view_as(p)
    if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last):
        return piece.as_strided(p.shape, p.stride())
    raise ValueError(f"a parameter of shape {tuple(p.shape)} has strides {p.stride()}: only "
                     f"contiguous and channels_last parameters are supported")


class GradientEngine:
    """Per-model state of the gradient computations: the shared and task-specific
    parameters, their flat gradient buffers, the persistent Jacobian and its path."""

    def __init__(self, model, task_names: tuple[str, ...], jacobian: str, chunk_size: int,
                 device: torch.device, world: World | None = None,
                 scaler: LossScaler | None = None, compiled: bool = False):
        self.model = model
        self.scaler = scaler
        """fp16 loss scaling (None: no scaling)."""
        self.world = world
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

    # ------------------------------------------------------------------ loss scaling
    def scaled(self, value: Tensor) -> Tensor:
        """What to backpropagate for ``value`` (a loss, or a gradient fed into backward)."""
        return value if self.scaler is None else self.scaler.scaled(value)

    def unscaled(self, grad: Tensor) -> Tensor:
        """A gradient of (scaled) losses as a method must see it: unscaled, and in float32
        when autocast made it bf16/fp16 (the gradients w.r.t. Z)."""
        if self.scaler is not None:
            return self.scaler.unscaled(grad)
        return grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad

    def unscale_grads(self, method_params: list[Tensor]) -> None:
        """Divide every gradient left in ``.grad`` by the loss scale (fp16 only)."""
        if self.scaler is None:
            return
        grads = [flat.buffer for flat in (self.shared_grads, self.specific_grads)
                 if flat.buffer is not None]
        grads += [p.grad for p in method_params if p.grad is not None]
        self.scaler.unscale_(grads)

    def zero_grad(self, method_params: list[Tensor]) -> None:
        self.shared_grads.zero()
        self.specific_grads.zero()
        for p in method_params:
            p.grad = None

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
        if self.world is not None:
            self.world.sum_(jac)  # every rank holds its share: the sum is the global Jacobian
        if self.scaler is not None:
            self.scaler.unscale_([jac])
            self.scaler.check(self.world)  # a method never sees an overflowed Jacobian
        return jac

    def _jacobian_loop(self, losses: Tensor | list[Tensor], with_heads: bool) -> Tensor:
        jac = self._jacobian_buffer(len(losses))
        flat = self.shared_grads.buffer
        for t, task in enumerate(self.task_names):
            flat.zero_()
            inputs = self.shared + self.heads[task] if with_heads else self.shared
            torch.autograd.backward(self.scaled(losses[t]), inputs=inputs, retain_graph=True)
            jac[t].copy_(flat)
        flat.zero_()
        self.heads_done = with_heads
        return jac

    def _jacobian_batched(self, losses: Tensor) -> Tensor:
        num = losses.shape[0]
        jac = self._jacobian_buffer(num)
        chunk = self.chunk_size or num
        eye = self.scaled(torch.eye(num, device=losses.device, dtype=losses.dtype))
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
        copy). Under data parallelism every rank writes 1/N of it, since the buffers are
        summed over the ranks after the update."""
        self.shared_grads.buffer.copy_(self.scaled(direction))
        if self.world is not None:
            self.shared_grads.buffer.div_(self.world.size)

    def set_shared_combination(self, weights: Tensor, jacobian: Tensor) -> None:
        """Shared gradient = Jᵀ·weights, written straight into the gradient buffer."""
        torch.mv(jacobian.T, self.scaled(weights.to(jacobian.dtype)), out=self.shared_grads.buffer)
        if self.world is not None:
            self.shared_grads.buffer.div_(self.world.size)

    def reduce_grads(self) -> None:
        """Sum the model's gradient buffers over the ranks (data parallelism only)."""
        if self.world is None:
            return
        for flat in (self.shared_grads, self.specific_grads):
            if flat.buffer is not None:
                self.world.sum_(flat.buffer)


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


def _flat_row(grads, params: list[Tensor]) -> Tensor:
    """One flat row of per-parameter gradients (zeros where a parameter got none)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params)])


class TrainStepContext:
    """The StepContext of methods/base.py for one training step."""

    def __init__(self, engine: GradientEngine, batch, reps: dict[str, Tensor],
                 raw_losses: Tensor, losses: Tensor, step: int, epoch: int,
                 generator: torch.Generator, stats: EpochStats, loss_fn,
                 raw_parts: list[Tensor] | None = None, parts: list[Tensor] | None = None):
        """``loss_fn(batch)`` recomputes the losses without a graph.

        ``raw_parts``/``parts``: optionally the same T losses as T separate scalars, each
        with only its own task's graph. Per-task backward passes start from these: a
        backward from ``losses[t]`` passes through the stack of all T losses, and autograd
        then runs every other head's backward too (on zeros), T² head passes per step."""
        self.engine = engine
        self.task_names = engine.task_names
        self.batch = batch
        self._reps = reps
        self._raw_losses = raw_losses
        self._losses = losses
        self.step = step
        self.epoch = epoch
        self.generator = generator
        self.stats = stats
        self._loss_fn = loss_fn
        self._raw_parts = raw_parts
        self._parts = parts
        self._jacobian: Tensor | None = None
        self._rep_grads: dict[tuple[bool, bool], list[Tensor]] = {}
        self.heads_received = False
        """Whether a per-task backward pass has already given every head the gradient of
        its own task's loss (accumulated in ``.grad``, unweighted)."""
        self.reps_override: list[Tensor] | None = None
        """Data parallel: the representation of the whole global batch (detached), shown
        to a representation-level aggregator while it aggregates the gathered gradients."""

    @property
    def losses(self) -> Tensor:
        return self._losses

    @property
    def raw_losses(self) -> Tensor:
        return self._raw_losses

    @property
    def shared_sizes(self) -> list[int]:
        return self.engine.sizes

    @property
    def jacobian_computed(self) -> bool:
        return self._jacobian is not None

    def loss_parts(self, raw: bool = False) -> list[Tensor]:
        """The T losses (raw, or as the methods see them) as separate graphs where the
        trainer provided them, else as elements of the stacked vector."""
        parts = self._raw_parts if raw else self._parts
        if parts is not None:
            return parts
        losses = self._raw_losses if raw else self._losses
        return list(losses.unbind())

    def jacobian(self) -> Tensor:
        if self._jacobian is None:
            self._jacobian = self.engine.jacobian(self._losses, parts=self._parts)
        return self._jacobian

    def jacobian_with_heads(self) -> Tensor:
        """The Jacobian, giving each head its own task's gradient on the way when it is
        computed now and the heads have not received it yet (see ``heads_received``)."""
        if self._jacobian is not None:
            return self._jacobian
        with_heads = not self.heads_received
        self._jacobian = self.engine.jacobian(self._losses, with_heads=with_heads, parts=self._parts)
        self.heads_received |= self.engine.heads_done
        return self._jacobian

    def rep_grads(self, create_graph: bool = False, raw: bool = False) -> list[Tensor]:
        key = (create_graph, raw)
        if key not in self._rep_grads:
            losses = self.loss_parts(raw)
            engine = self.engine
            self._rep_grads[key] = [
                engine.unscaled(torch.autograd.grad(engine.scaled(losses[i]), self._reps[t],
                                                    retain_graph=True, create_graph=create_graph)[0])
                for i, t in enumerate(self.task_names)]
            if engine.scaler is not None:
                engine.scaler.check(engine.world)
        return self._rep_grads[key]

    def rep_grads_with_heads(self) -> list[Tensor]:
        """``rep_grads()``, giving each head its own task's gradient on the way when they
        are computed now (one backward pass per task serves both)."""
        if self._rep_pass_pending:
            self._rep_pass([])
        return self.rep_grads()

    @property
    def _rep_pass_pending(self) -> bool:
        """Neither the representation gradients nor the heads' own gradients exist yet, so
        one set of per-task passes can give both."""
        return (False, False) not in self._rep_grads and not self.heads_received

    def _rep_pass(self, extra: list[Tensor]) -> Tensor | None:
        """One backward pass per task, from its loss (as methods see it) to Z_t, to the
        shared parameters ``extra`` (below Z) and to the task's head, which receives its
        own loss's gradient on the way (accumulated in ``.grad``). Caches the
        representation gradients; returns the [T, P'] gradients of ``extra`` (or None)."""
        engine = self.engine
        losses = self.loss_parts()
        reps, rows = [], []
        for i, task in enumerate(self.task_names):
            z, head = self._reps[task], engine.heads[task]
            grads = torch.autograd.grad(engine.scaled(losses[i]), [z, *extra, *head],
                                        retain_graph=True, allow_unused=True)
            reps.append(engine.unscaled(grads[0] if grads[0] is not None else torch.zeros_like(z)))
            if extra:
                rows.append(_flat_row(grads[1:1 + len(extra)], extra))
            received = [(p.grad, g) for p, g in zip(head, grads[1 + len(extra):]) if g is not None]
            if received:
                torch._foreach_add_(*map(list, zip(*received)))
        self._rep_grads[(False, False)] = reps
        self.heads_received = True
        extra_grads = engine.unscaled(torch.stack(rows)) if extra else None
        if engine.scaler is not None:
            engine.scaler.check(engine.world)
        return extra_grads

    def backward_rep_combination(self, weights: Tensor, retain_graph: bool) -> None:
        """Backpropagate Σ_t w_t ∂L_t/∂Z_t from Z into the shared parameters: the shared
        gradient of Σ_t w_t L_t, from the cached representation gradients (one encoder
        pass; single-input benchmarks sum over tasks on their one Z)."""
        combined: dict[int, tuple[Tensor, Tensor]] = {}
        for t, (task, grad) in enumerate(zip(self.task_names, self.rep_grads())):
            z = self._reps[task]
            term = weights[t].to(grad.dtype) * grad
            if id(z) in combined:
                term = combined[id(z)][1] + term
            combined[id(z)] = (z, term)
        zs = [z for z, _ in combined.values()]
        grads = [self.engine.scaled(g).to(z.dtype) for z, g in combined.values()]
        torch.autograd.backward(zs, grads, inputs=self.engine.shared, retain_graph=retain_graph)

    def reps(self) -> list[Tensor]:
        if self.reps_override is not None:
            return self.reps_override
        return [self._reps[t] for t in self.task_names]

    def last_shared_params(self) -> list[Tensor]:
        return [p for p in self.engine.model.last_shared.parameters() if p.requires_grad]

    def task_grads(self, params: list[Tensor], create_graph: bool = False) -> Tensor:
        engine = self.engine
        shared = {id(p) for p in engine.shared}
        if not create_graph and self._rep_pass_pending and all(id(p) in shared for p in params):
            # Shared parameters below Z: the same per-task passes also give the
            # representation gradients and the heads their gradients, so the update can be
            # formed from Z without another backward pass through the heads.
            grads = self._rep_pass(params)
            if engine.world is not None:
                engine.world.sum_(grads)
            return grads
        rows = []
        losses = self.loss_parts()
        for i in range(len(self.task_names)):
            grads = torch.autograd.grad(self.engine.scaled(losses[i]), params,
                                        retain_graph=True, create_graph=create_graph,
                                        allow_unused=True)
            rows.append(_flat_row(grads, params))
        grads = self.engine.unscaled(torch.stack(rows))
        if self.engine.scaler is not None:
            self.engine.scaler.check(self.engine.world)
        if self.engine.world is not None:
            if create_graph:
                raise NotImplementedError("differentiable task gradients are not summed over "
                                          "data-parallel processes")
            self.engine.world.sum_(grads)  # each process holds its share of the global batch
        return grads

    @property
    def world_size(self) -> int:
        return 1 if self.engine.world is None else self.engine.world.size

    def gather_samples(self, tensor: Tensor, dim: int = 0) -> Tensor:
        if self.engine.world is None:
            return tensor
        gathered = self.engine.world.gather_with_grad(tensor.movedim(dim, 0))
        return gathered.movedim(0, dim)

    def log(self, name: str, value: Tensor) -> None:
        self.stats.log(name, value)

    def recompute_losses(self) -> Tensor:
        losses = self._loss_fn(self.batch)
        world = self.engine.world
        return losses if world is None else world.sum_(losses / world.size)


def apply_update(primary: Method, regularizers: list[Regularizer], ctx: TrainStepContext,
                 method_params: list[Tensor]) -> tuple[Tensor | None, Tensor | None]:
    """Compute the method's update and leave it in the parameters' ``.grad``.

    Returns the weights that were applied (for the record) and the total penalty."""
    engine = ctx.engine
    world = engine.world
    penalty = None
    for reg in regularizers:
        term = check_penalty(reg, reg.penalty(ctx))
        if term is None:  # e.g. a regularizer still in its warm-up
            continue
        penalty = term if penalty is None else penalty + term
    if penalty is not None and world is not None:
        # Each rank's penalty covers its own samples; the global penalty is their mean.
        penalty = world.global_value(penalty / world.size)
    weights = None
    if isinstance(primary, Weighting):
        out = check_weighted(primary, primary.weigh(ctx))
        weights = out.weights
        objective = out.objective if out.objective is not None else (weights * ctx.losses).sum()
        # The model's gradient of the objective is Σ_t w_t ∇L_t (w = ∂objective/∂L); where
        # per-task passes already exist, it is formed from them instead of a new backward.
        if ctx.jacobian_computed or ctx.heads_received:
            if ctx.jacobian_computed:
                engine.set_shared_combination(weights.detach(), ctx.jacobian())
            else:
                ctx.backward_rep_combination(weights.detach(), retain_graph=True)
            if ctx.heads_received:
                engine.scale_head_grads(weights.detach())
            heads = [] if ctx.heads_received else engine.all_head_params
            inputs = heads + [p for p in method_params if p.requires_grad]
            if inputs:  # heads may have no parameters (toy2d)
                torch.autograd.backward(engine.scaled(objective), inputs=inputs,
                                        retain_graph=penalty is not None)
            if penalty is not None:
                engine.scaled(penalty).backward()
        else:
            engine.scaled(objective if penalty is None else objective + penalty).backward()
    elif isinstance(primary, Aggregator):
        if primary.space == "param":
            jacobian = ctx.jacobian_with_heads()
            agg = check_aggregated(primary, primary.aggregate(jacobian, ctx), jacobian.shape[1])
            engine.set_shared_grads(agg.direction)
        else:
            reps = ctx.reps()
            grads = torch.stack([g.reshape(-1) for g in ctx.rep_grads_with_heads()])
            if world is None:
                agg = check_aggregated(primary, primary.aggregate(grads, ctx), grads.shape[1])
                local = agg.direction
            else:
                # Aggregate the representation gradients of the whole global batch, identically
                # on every rank, and backpropagate this rank's slice.
                ctx.reps_override = [world.gather_rows(reps[0].detach())] * len(reps)
                try:
                    gathered = world.gather_columns(grads)
                    agg = check_aggregated(primary, primary.aggregate(gathered, ctx),
                                           gathered.shape[1])
                finally:
                    ctx.reps_override = None
                width = grads.shape[1]
                local = agg.direction[world.rank * width:(world.rank + 1) * width]
            torch.autograd.backward(reps[0], engine.scaled(local).view_as(reps[0]),
                                    inputs=engine.shared, retain_graph=True)
        weights = agg.weights
        if engine.all_head_params and not ctx.heads_received:  # heads may have no parameters
            torch.autograd.backward(engine.scaled(ctx.losses.sum()), inputs=engine.all_head_params,
                                    retain_graph=penalty is not None)
        if agg.head_scales is not None:
            engine.scale_head_grads(agg.head_scales.detach())
        if penalty is not None:
            engine.scaled(penalty).backward()
    else:
        raise TypeError(f"{type(primary).__name__} is neither a weighting nor an aggregator")
    return (weights.detach() if weights is not None else None), \
        (penalty.detach() if penalty is not None else None)
