"""The gradient engine: what methods ask for, computed once per step, and the update.

Per step the engine offers (lazily, cached): the task losses; per-task gradients w.r.t. the
shared representation Z (T backward passes through the heads only, differentiable on
request); per-task gradients w.r.t. the shared parameters as a [T, P] Jacobian (a loop of T
backward passes, or one batched backward with ``is_grads_batched``, chunked). Then it turns
the method's answer into the gradients the optimizer applies:

- weighting: backpropagate Σ w_t L_t (+ penalties) once; if the method already asked for
  the Jacobian, the shared parameters get Jᵀw instead of another backward pass;
- aggregator: the shared parameters (or Z, for "rep" aggregators) get the aggregated
  direction; every head gets the gradient of its own task's loss;
- regularizers: their penalty's gradient is added to everything it reaches.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from methods.base import Aggregator, Method, Regularizer, Weighted, Weighting

log = logging.getLogger(__name__)


class GradientEngine:
    """Per-model state of the gradient computations (parameter lists, the Jacobian path)."""

    def __init__(self, model, task_names: tuple[str, ...], jacobian: str, chunk_size: int,
                 device: torch.device):
        self.model = model
        self.task_names = task_names
        self.shared = model.shared_parameters()
        self.heads = {t: model.head_parameters(t) for t in task_names}
        self.all_head_params = [p for t in task_names for p in self.heads[t]]
        self.sizes = [p.numel() for p in self.shared]
        self.num_shared = sum(self.sizes)
        if jacobian == "auto":
            # On a few CPU cores a loop of backward passes beats the vmapped one; on
            # accelerators batching usually wins for the models here.
            jacobian = "loop" if device.type == "cpu" else "batched"
        self.jacobian_path = jacobian
        self.chunk_size = chunk_size
        self.fallback_reason: str | None = None

    # ------------------------------------------------------------------ Jacobian
    def jacobian(self, losses: Tensor) -> Tensor:
        if not self.shared:
            raise RuntimeError("the model has no shared parameters to take a Jacobian of")
        if self.jacobian_path == "batched":
            try:
                return self._jacobian_batched(losses)
            except RuntimeError as exc:  # an op without a batching rule
                self.jacobian_path = "loop"
                self.fallback_reason = f"batched Jacobian failed ({exc}); using the loop"
                log.warning(self.fallback_reason)
        return self._jacobian_loop(losses)

    def _flatten(self, grads, rows: int | None = None) -> Tensor:
        parts = []
        for g, p in zip(grads, self.shared):
            if g is None:
                g = torch.zeros((rows, *p.shape) if rows else p.shape, device=p.device, dtype=p.dtype)
            parts.append(g.reshape(rows, -1) if rows else g.reshape(-1))
        return torch.cat(parts, dim=1 if rows else 0)

    def _jacobian_loop(self, losses: Tensor) -> Tensor:
        rows = [self._flatten(torch.autograd.grad(losses[t], self.shared, retain_graph=True,
                                                  allow_unused=True))
                for t in range(losses.shape[0])]
        return torch.stack(rows)

    def _jacobian_batched(self, losses: Tensor) -> Tensor:
        num = losses.shape[0]
        chunk = self.chunk_size or num
        eye = torch.eye(num, device=losses.device, dtype=losses.dtype)
        blocks = []
        for start in range(0, num, chunk):
            rows = eye[start:start + chunk]
            grads = torch.autograd.grad(losses, self.shared, grad_outputs=rows, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
            blocks.append(self._flatten(grads, rows=rows.shape[0]))
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]

    def set_shared_grads(self, direction: Tensor) -> None:
        """Make ``direction`` [P] the gradient of the shared parameters (views, no copy)."""
        for p, g in zip(self.shared, direction.split(self.sizes)):
            p.grad = g.view_as(p)


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


class TrainStepContext:
    """The StepContext of methods/base.py for one training step."""

    def __init__(self, engine: GradientEngine, batch, reps: dict[str, Tensor],
                 raw_losses: Tensor, losses: Tensor, step: int, epoch: int,
                 generator: torch.Generator, stats: EpochStats, loss_fn):
        """``loss_fn(batch)`` recomputes the losses without a graph."""
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
        self._jacobian: Tensor | None = None
        self._rep_grads: dict[tuple[bool, bool], list[Tensor]] = {}

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

    def jacobian(self) -> Tensor:
        if self._jacobian is None:
            self._jacobian = self.engine.jacobian(self._losses)
        return self._jacobian

    def rep_grads(self, create_graph: bool = False, raw: bool = False) -> list[Tensor]:
        key = (create_graph, raw)
        if key not in self._rep_grads:
            losses = self._raw_losses if raw else self._losses
            self._rep_grads[key] = [
                torch.autograd.grad(losses[i], self._reps[t], retain_graph=True,
                                    create_graph=create_graph)[0]
                for i, t in enumerate(self.task_names)]
        return self._rep_grads[key]

    def reps(self) -> list[Tensor]:
        return [self._reps[t] for t in self.task_names]

    def last_shared_params(self) -> list[Tensor]:
        return [p for p in self.engine.model.last_shared.parameters() if p.requires_grad]

    def task_grads(self, params: list[Tensor], create_graph: bool = False) -> Tensor:
        rows = []
        for i in range(len(self.task_names)):
            grads = torch.autograd.grad(self._losses[i], params, retain_graph=True,
                                        create_graph=create_graph, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(grads, params)]))
        return torch.stack(rows)

    def log(self, name: str, value: Tensor) -> None:
        self.stats.log(name, value)

    def recompute_losses(self) -> Tensor:
        return self._loss_fn(self.batch)


def apply_update(primary: Method, regularizers: list[Regularizer], ctx: TrainStepContext,
                 method_params: list[Tensor]) -> tuple[Tensor | None, Tensor | None]:
    """Compute the method's update and leave it in the parameters' ``.grad``.

    Returns the weights that were applied (for the record) and the total penalty."""
    engine = ctx.engine
    penalty = None
    for reg in regularizers:
        term = reg.penalty(ctx)
        penalty = term if penalty is None else penalty + term
    weights = None
    if isinstance(primary, Weighting):
        out: Weighted = primary.weigh(ctx)
        weights = out.weights
        objective = out.objective if out.objective is not None else (weights * ctx.losses).sum()
        if ctx.jacobian_computed:
            engine.set_shared_grads(ctx.jacobian().T @ weights.detach().to(ctx.jacobian().dtype))
            inputs = engine.all_head_params + [p for p in method_params if p.requires_grad]
            if inputs:  # heads may have no parameters (toy2d)
                torch.autograd.backward(objective, inputs=inputs, retain_graph=penalty is not None)
            if penalty is not None:
                penalty.backward()
        else:
            (objective if penalty is None else objective + penalty).backward()
    elif isinstance(primary, Aggregator):
        if primary.space == "param":
            agg = primary.aggregate(ctx.jacobian(), ctx)
            engine.set_shared_grads(agg.direction)
        else:
            reps = ctx.reps()
            grads = torch.stack([g.reshape(-1) for g in ctx.rep_grads()])
            agg = primary.aggregate(grads, ctx)
            torch.autograd.backward(reps[0], agg.direction.view_as(reps[0]), inputs=engine.shared,
                                    retain_graph=True)
        weights = agg.weights
        if engine.all_head_params:  # heads may have no parameters (toy2d)
            torch.autograd.backward(ctx.losses.sum(), inputs=engine.all_head_params,
                                    retain_graph=penalty is not None)
        if penalty is not None:
            penalty.backward()
    else:
        raise TypeError(f"{type(primary).__name__} is neither a weighting nor an aggregator")
    return (weights.detach() if weights is not None else None), \
        (penalty.detach() if penalty is not None else None)
