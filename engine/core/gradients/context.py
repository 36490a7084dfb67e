"""``TrainStepContext``: the StepContext of methods/base.py for one training step. What a
method asks for (the Jacobian, the representation gradients, task gradients) is computed on
the first request and cached; per-task backward passes also give each head its own task's
gradient on the way, so that the update needs no further pass through the heads."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from engine.core.gradients.lookahead import Lookahead
from engine.core.gradients.passes import GradientEngine
from engine.core.gradients.stats import EpochStats
from engine.errors import UserError


def _flat_row(grads, params: list[Tensor]) -> Tensor:
    """One flat row of per-parameter gradients (zeros where a parameter got none)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params)])


@dataclass(kw_only=True, eq=False)
class TrainStepContext:
    """The StepContext of methods/base.py for one training step."""

    engine: GradientEngine
    batch: Any
    representations: dict[str, Tensor]
    """Z of each task (one tensor under every name on single-input benchmarks)."""
    raw_losses: Tensor
    losses: Tensor
    """The losses as methods see them (after any regularizer's transform)."""
    step: int
    epoch: int
    generator: torch.Generator
    stats: EpochStats
    loss_fn: Callable[[Any], Tensor]
    """``loss_fn(batch)`` recomputes the losses without a graph."""
    raw_parts: list[Tensor] | None = None
    parts: list[Tensor] | None = None
    """Optionally the same T losses as T separate scalars, each with only its own task's
    graph. Per-task backward passes start from these: a backward from ``losses[t]`` passes
    through the stack of all T losses, and autograd then runs every other head's backward
    too (on zeros), T² head passes per step."""
    extra_batches: list[Any] = field(default_factory=list)
    """The step's extra training batches (``Needs.extra_batches``), drawn by the trainer."""
    extra_loss_fn: Callable[[Any], list[Tensor]] | None = None
    """``extra_loss_fn(batch)``: the T losses of an extra batch, each with its graph."""
    lookahead: Lookahead | None = None
    """The model at other parameter values (``Needs.lookahead``), set by the trainer."""
    heads_received: bool = field(default=False, init=False)
    """Whether a per-task backward pass has already given every head the gradient of its
    own task's loss (accumulated in ``.grad``, unweighted)."""
    reps_override: list[Tensor] | None = field(default=None, init=False)
    """Data parallel: the representation of the whole global batch (detached), shown to a
    representation-level aggregator while it aggregates the gathered gradients."""
    asking: Any = field(default=None, init=False, repr=False)
    """The method whose hook is running (None while the engine itself asks): its requests
    must be among its declared ``needs``."""
    _jacobian: Tensor | None = field(default=None, init=False, repr=False)
    _extra: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict, init=False,
                                                           repr=False)
    _rep_grads: dict[tuple[bool, bool], list[Tensor]] = field(default_factory=dict, init=False,
                                                              repr=False)

    @contextlib.contextmanager
    def asked_by(self, method):
        """Run a method's hook: what it requests is checked against its declared needs."""
        self.asking = method
        try:
            yield
        finally:
            self.asking = None

    def _check(self, need: str, request: str) -> None:
        method = self.asking
        if method is not None and not getattr(method.needs, need):
            raise UserError(f"method {method.name or type(method).__name__!r} called {request} "
                            f"without declaring it: "
                            f"add {need}=True to its needs (methods/base.py, Needs)")

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.engine.task_names

    @property
    def shared_sizes(self) -> list[int]:
        return self.engine.sizes

    @property
    def jacobian_computed(self) -> bool:
        return self._jacobian is not None

    def loss_parts(self, raw: bool = False) -> list[Tensor]:
        """The T losses (raw, or as the methods see them) as separate graphs where the
        trainer provided them, else as elements of the stacked vector."""
        parts = self.raw_parts if raw else self.parts
        if parts is not None:
            return parts
        losses = self.raw_losses if raw else self.losses
        return list(losses.unbind())

    # ------------------------------------------------------------------ Jacobian
    def jacobian(self) -> Tensor:
        self._check("jacobian", "ctx.jacobian()")
        if self._jacobian is None:
            self._jacobian = self.engine.jacobian(self.losses, parts=self.parts)
        return self._jacobian

    def jacobian_with_heads(self) -> Tensor:
        """The Jacobian, giving each head its own task's gradient on the way when it is
        computed now and the heads have not received it yet (see ``heads_received``)."""
        if self._jacobian is not None:
            return self._jacobian
        with_heads = not self.heads_received
        self._jacobian = self.engine.jacobian(self.losses, with_heads=with_heads, parts=self.parts)
        self.heads_received |= self.engine.heads_done
        return self._jacobian

    # ------------------------------------------------------------------ extra batches
    def _check_extra(self, index: int, request: str) -> None:
        method = self.asking
        declared = method.needs.extra_batches if method is not None else len(self.extra_batches)
        if not 0 <= index < declared:
            name = (method.name or type(method).__name__) if method is not None else "the engine"
            raise UserError(f"method {name!r} called {request} without declaring it: "
                            f"set extra_batches={max(index + 1, 1)} in its needs "
                            f"(methods/base.py, Needs)")
        if index >= len(self.extra_batches) or self.extra_loss_fn is None:
            raise RuntimeError(f"{request}: the trainer drew {len(self.extra_batches)} extra "
                               f"batches this step")

    def extra_losses(self, index: int) -> Tensor:
        self._check_extra(index, f"ctx.extra_losses({index})")
        if index not in self._extra:
            with torch.no_grad():
                values = torch.stack(self.extra_loss_fn(self.extra_batches[index]))
            self._extra[index] = (values, None)
        return self._extra[index][0]

    def extra_jacobian(self, index: int) -> Tensor:
        self._check_extra(index, f"ctx.extra_jacobian({index})")
        values, jac = self._extra.get(index, (None, None))
        if jac is None:
            parts = self.extra_loss_fn(self.extra_batches[index])
            jac = self.engine.extra_jacobian(index, torch.stack(parts), parts=parts)
            values = torch.stack([p.detach() for p in parts])
            self._extra[index] = (values, jac)  # the batch's graph is released here
        return jac

    # ------------------------------------------------------------------ lookahead
    def _lookahead(self, request: str) -> Lookahead:
        self._check("lookahead", request)
        if self.lookahead is None:
            raise RuntimeError(f"{request}: the trainer built no lookahead for this run")
        return self.lookahead

    def model_parameters(self) -> list[Tensor]:
        return self._lookahead("ctx.model_parameters()").parameters

    def losses_at(self, values: list[Tensor] | None, batch: int | None = None) -> Tensor:
        lookahead = self._lookahead("ctx.losses_at()")
        if batch is None:
            return lookahead.losses_at(values, self.batch)
        self._check_extra(batch, f"ctx.losses_at(batch={batch})")
        return lookahead.losses_at(values, self.extra_batches[batch])

    def virtual_step(self, grads: list[Tensor | None], lr: float | None = None) -> list[Tensor]:
        return self._lookahead("ctx.virtual_step()").virtual_step(grads, lr)

    @property
    def learning_rate(self) -> float:
        return self._lookahead("ctx.learning_rate").learning_rate()

    # ------------------------------------------------------------------ representation passes
    def rep_grads(self, create_graph: bool = False, raw: bool = False) -> list[Tensor]:
        self._check("rep_grads", "ctx.rep_grads()")
        if create_graph:
            self._check("second_order", "ctx.rep_grads(create_graph=True)")
        key = (create_graph, raw)
        if key not in self._rep_grads:
            losses = self.loss_parts(raw)
            precision = self.engine.precision
            self._rep_grads[key] = [
                precision.unscaled(torch.autograd.grad(
                    precision.scaled(losses[i]), self.representations[t], retain_graph=True,
                    create_graph=create_graph)[0])
                for i, t in enumerate(self.task_names)]
            precision.check()
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
        precision = engine.precision
        losses = self.loss_parts()
        reps, rows = [], []
        for i, task in enumerate(self.task_names):
            z, head = self.representations[task], engine.heads[task]
            grads = torch.autograd.grad(precision.scaled(losses[i]), [z, *extra, *head],
                                        retain_graph=True, allow_unused=True)
            reps.append(precision.unscaled(grads[0] if grads[0] is not None else torch.zeros_like(z)))
            if extra:
                rows.append(_flat_row(grads[1:1 + len(extra)], extra))
            received = [(p.grad, g) for p, g in zip(head, grads[1 + len(extra):]) if g is not None]
            if received:
                torch._foreach_add_(*map(list, zip(*received)))
        self._rep_grads[(False, False)] = reps
        self.heads_received = True
        extra_grads = precision.unscaled(torch.stack(rows)) if extra else None
        precision.check()
        return extra_grads

    def backward_rep_combination(self, weights: Tensor, retain_graph: bool) -> None:
        """Backpropagate Σ_t w_t ∂L_t/∂Z_t from Z into the shared parameters: the shared
        gradient of Σ_t w_t L_t, from the cached representation gradients (one encoder
        pass; single-input benchmarks sum over tasks on their one Z)."""
        combined: dict[int, tuple[Tensor, Tensor]] = {}
        for t, (task, grad) in enumerate(zip(self.task_names, self.rep_grads())):
            z = self.representations[task]
            term = weights[t].to(grad.dtype) * grad
            if id(z) in combined:
                term = combined[id(z)][1] + term
            combined[id(z)] = (z, term)
        zs = [z for z, _ in combined.values()]
        grads = [self.engine.precision.scaled(g).to(z.dtype) for z, g in combined.values()]
        torch.autograd.backward(zs, grads, inputs=self.engine.shared, retain_graph=retain_graph)

    def reps(self) -> list[Tensor]:
        if self.reps_override is not None:
            return self.reps_override
        return [self.representations[t] for t in self.task_names]

    # ------------------------------------------------------------------ task gradients
    def last_shared_params(self) -> list[Tensor]:
        self._check("task_grads", "ctx.last_shared_params()")
        return [p for p in self.engine.model.last_shared.parameters() if p.requires_grad]

    def task_grads(self, params: list[Tensor], create_graph: bool = False) -> Tensor:
        self._check("task_grads", "ctx.task_grads()")
        engine = self.engine
        shared = {id(p) for p in engine.shared}
        if (not create_graph and self._rep_pass_pending and getattr(engine.model, "rep_is_cut", True)
                and all(id(p) in shared for p in params)):
            # Shared parameters below Z: the same per-task passes also give the
            # representation gradients and the heads their gradients, so the update can be
            # formed from Z without another backward pass through the heads (not where the
            # shared parameters also reach the losses outside Z: MTAN's attention).
            return engine.parallel.sum_(self._rep_pass(params))
        precision = engine.precision
        rows = []
        losses = self.loss_parts()
        for i in range(len(self.task_names)):
            grads = torch.autograd.grad(precision.scaled(losses[i]), params,
                                        retain_graph=True, create_graph=create_graph,
                                        allow_unused=True)
            rows.append(_flat_row(grads, params))
        grads = precision.unscaled(torch.stack(rows))
        precision.check()
        # Each process holds its share of the global batch.
        return engine.parallel.sum_(grads, differentiable=create_graph)

    # ------------------------------------------------------------------ data parallelism
    @property
    def world_size(self) -> int:
        return self.engine.parallel.size

    def gather_samples(self, tensor: Tensor, dim: int = 0) -> Tensor:
        return self.engine.parallel.gather_samples(tensor, dim)

    # ------------------------------------------------------------------ the rest
    def log(self, name: str, value: Tensor) -> None:
        self.stats.log(name, value)

    def recompute_losses(self) -> Tensor:
        self._check("after_step", "ctx.recompute_losses()")
        return self.engine.parallel.average(self.loss_fn(self.batch))
