"""Any registered method, or composition such as ``pcgrad+repmtl``, inside a plain PyTorch
training loop: ``MethodStep.backward(losses, features)`` leaves in the parameters' ``.grad``
exactly the update the harness's own trainer would (the same engine computes it), and the
method's state (FAMO's logits, GradNorm's weights, Nash-MTL's last solution, ...) lives in
the object, savable with ``state_dict()``.

The loop keeps what the trainer does around the step: the optimizer step, the epochs, the
data. A method that needs more than one batch's losses says so when it is built
(``duties``): FAMO re-evaluates the losses after the optimizer step (``recompute=`` and
``after_optimizer_step()``), DWA and IGBv2 weigh by the epoch's mean losses
(``end_epoch()``), GradNorm reads the last shared layer (``last_shared=``).
Not offered here: fp16 loss scaling and data parallelism (the trainer's), single-task
learning (one model per task: nothing to combine), methods that need extra independent
batches at every step (MoDo, SDMGrad: refused when built).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engine.core.checkpoint import portable, restore
from engine.core.config import apply_values
from engine.core.gradients.context import TrainStepContext
from engine.core.gradients.passes import GradientEngine
from engine.core.gradients.stats import EpochStats
from engine.core.gradients.update import apply_update
from engine.errors import UserError, check_config
from methods.base import Aggregator, Method, Regularizer
from methods.registry import METHODS, canonical_name, parse_method

Features = Tensor | Sequence[Tensor] | Mapping[str, Tensor]


@dataclass
class StepOutcome:
    """What one step applied: the task weights (None where the method has none) and the
    regularizers' total penalty (None without regularizers, or in a warm-up)."""

    weights: Tensor | None
    penalty: Tensor | None


class _Parameters:
    """The user's parameters in the shape the gradient engine reads a model in."""

    def __init__(self, shared: list[Tensor], heads: dict[str, list[Tensor]],
                 last_shared: list[Tensor] | None):
        self._shared, self._heads = shared, heads
        self.last_shared = nn.ParameterList(last_shared) if last_shared is not None else None

    def shared_parameters(self) -> list[Tensor]:
        return self._shared

    def head_parameters(self, task: str) -> list[Tensor]:
        return self._heads[task]

    def parameters(self) -> Iterable[Tensor]:
        yield from self._shared
        for params in self._heads.values():
            yield from params


def _trainable(params: Iterable[Tensor], what: str) -> list[Tensor]:
    if isinstance(params, Tensor):
        raise UserError(f"{what}: expected an iterable of parameters (e.g. "
                        f"encoder.parameters()), got one tensor")
    params = [p for p in params if p.requires_grad]
    if len({id(p) for p in params}) != len(params):
        raise UserError(f"{what}: a parameter is listed twice")
    return params


def method_config(name: str, settings: Mapping[str, Any]) -> Any:
    """The ``Config`` of method ``name`` with ``settings`` (field -> value) checked and
    applied, as ``--set method.NAME.FIELD=VALUE`` would."""
    config = apply_values(METHODS.get(name).Config(), dict(settings), f"method.{name}")
    check_config(config, f"method.{name}")
    return config


def _split_settings(composition, settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"repmtl.lambda_tsr": 0.1}`` or ``{"repmtl": {"lambda_tsr": 0.1}}`` per component."""
    per: dict[str, dict[str, Any]] = {name: {} for name in composition.components}
    for key, value in settings.items():
        name, _, field = key.partition(".")
        if name not in per:
            raise UserError(f"setting {key!r}: {name!r} is not a component of "
                            f"{'+'.join(composition.components)}")
        if field:
            per[name][field] = value
        elif isinstance(value, Mapping):
            per[name].update(value)
        else:
            raise UserError(f"setting {key!r}: expected METHOD.FIELD=value or "
                            f"METHOD={{FIELD: value}}")
    return per


class MethodStep:
    """One method (or composition) for a plain training loop; see the module docstring.

    ``shared``: the parameters every task's loss reaches (the encoder); ``heads``: each
    task's own parameters, by task name, in the order of the losses given to ``backward``.
    ``settings``: hyperparameters, e.g. ``{"nashmtl.update_every": 5}``. ``seed`` seeds
    the method's random numbers (RLW, GradDrop, PCGrad's order)."""

    def __init__(self, spec: str, shared: Iterable[Tensor],
                 heads: Mapping[str, Iterable[Tensor]], *,
                 settings: Mapping[str, Any] | None = None,
                 last_shared: Iterable[Tensor] | None = None, seed: int = 0):
        composition = parse_method(spec)
        self.name = canonical_name(spec)
        self.needs = composition.needs
        if self.needs.separate_encoders:
            raise UserError(f"{composition.primary} trains one model per task: there is "
                            f"nothing to combine; train each task with its own loss")
        if self.needs.extra_batches:
            raise UserError(f"{composition.primary} needs {self.needs.extra_batches} extra "
                            f"independent batches per step, which MethodStep does not take; "
                            f"train it with the harness's trainer (run_bench.py)")
        if not isinstance(heads, Mapping) or not heads:
            raise UserError("heads: expected a mapping of task name -> that head's parameters")
        self.task_names = tuple(heads)
        shared = _trainable(shared, "shared")
        if not shared:
            raise UserError("shared: no trainable parameters; a multi-task method combines "
                            "the tasks' gradients of shared parameters")
        head_params = {t: _trainable(ps, f"heads[{t!r}]") for t, ps in heads.items()}
        seen = {id(p) for p in shared}
        for task, params in head_params.items():
            if any(id(p) in seen for p in params):
                raise UserError(f"heads[{task!r}]: a parameter is also shared or in another "
                                f"head; each head's parameters are its task's alone")
            seen |= {id(p) for p in params}
        if last_shared is not None:
            last_shared = _trainable(last_shared, "last_shared")
            shared_ids = {id(p) for p in shared}
            if any(id(p) not in shared_ids for p in last_shared):
                raise UserError("last_shared: expected parameters of the shared encoder")
        per = _split_settings(composition, settings or {})
        device = shared[0].device
        self.primary: Method = METHODS.get(composition.primary)(
            method_config(composition.primary, per[composition.primary]), self.task_names)
        self.regularizers: list[Regularizer] = [
            METHODS.get(name)(method_config(name, per[name]), self.task_names)
            for name in composition.regularizers]
        self.methods = nn.ModuleDict({composition.primary: self.primary,
                                      **{r.name: r for r in self.regularizers}}).to(device)
        if last_shared is None and any(m.needs.task_grads for m in self.methods.values()):
            raise UserError(f"{self.name} takes the gradients of the last shared layer: pass "
                            f"last_shared=<that layer's parameters>")
        self._method_params = [p for m in self.methods.values() for p in m.trainable_parameters()]
        self.engine = GradientEngine(_Parameters(shared, head_params, last_shared),
                                     self.task_names, "auto", 0, device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.wants_features = (bool(self.regularizers) or self.needs.rep_grads
                               or self.needs.shared_representation
                               or (isinstance(self.primary, Aggregator)
                                   and self.primary.space == "rep"))
        self.duties = self._duties()
        for duty in self.duties:
            warnings.warn(f"{self.name}: {duty}", stacklevel=2)
        self.step = 0
        self.epoch = 0
        self._stats = EpochStats()
        self._ctx: TrainStepContext | None = None

    def _duties(self) -> tuple[str, ...]:
        """What this method needs from the loop beyond one batch's losses, one line each."""
        duties = []
        if self.needs.after_step:
            duties.append("re-evaluates the losses after the optimizer step: pass "
                          "recompute=<function returning the T losses of the same batch> "
                          "to backward() and call after_optimizer_step() after "
                          "optimizer.step()")
        if any(type(m).on_epoch_end is not Method.on_epoch_end for m in self.methods.values()):
            duties.append("weighs by the epoch's mean losses: call end_epoch() after "
                          "each epoch")
        if self._method_params:
            duties.append("has learnable parameters: add parameters() to the optimizer")
        return tuple(duties)

    # ------------------------------------------------------------------ the step
    def parameters(self) -> list[nn.Parameter]:
        """The method's own learnable parameters (UW's log-variances), for the optimizer."""
        return list(self._method_params)

    def backward(self, losses: Sequence[Tensor] | Tensor, features: Features | None = None,
                 recompute: Callable[[], Tensor] | None = None) -> StepOutcome:
        """Leave the method's update in ``.grad`` of the shared parameters, the heads and
        the method's own parameters (set, not accumulated). ``losses``: the T task
        losses (scalars with their graphs, in the order of ``heads``); ``features``: the
        shared representation Z the heads consumed (one tensor; or one per task, by name
        or in order, when each task has its own batch), needed by representation-level
        methods and regularizers."""
        parts = self._losses(losses)
        reps = self._features(features)
        if self.needs.after_step and recompute is None:
            raise UserError(f"{self.name} re-evaluates the losses after the optimizer step: "
                            f"pass recompute=<function returning the T losses of this batch>")
        raw = torch.stack(parts)
        transformed = raw
        for reg in self.regularizers:
            transformed = reg.transform_losses(transformed)
        ctx = TrainStepContext(
            engine=self.engine, batch=None, representations=reps, raw_losses=raw,
            losses=transformed, step=self.step, epoch=self.epoch, generator=self.generator,
            stats=self._stats, loss_fn=lambda _batch: _without_graph(recompute),
            raw_parts=parts, parts=parts if transformed is raw else None)
        self.engine.zero_grad(self._method_params)
        weights, penalty = apply_update(self.primary, self.regularizers, ctx,
                                        self._method_params)
        self._stats.add_losses(raw.detach())
        if weights is not None:
            self._stats.add_weights(weights)
        if penalty is not None:
            self._stats.log("penalty", penalty)
        self._ctx = ctx
        self.step += 1
        return StepOutcome(weights, penalty)

    def after_optimizer_step(self) -> None:
        """Call after ``optimizer.step()``: the hook of methods that look at the effect of
        the step they took (FAMO). Does nothing for the others."""
        if self._ctx is None:
            raise UserError("after_optimizer_step() before any backward()")
        for m in self.methods.values():
            if m.needs.after_step:
                with self._ctx.asked_by(m):
                    m.after_step(self._ctx)
        self._ctx = None  # the step's graph is no longer needed

    def end_epoch(self) -> dict[str, Any]:
        """Close an epoch: methods that weigh by the epoch's mean losses (DWA, IGBv2) get
        them; returns the epoch's means (losses, weights, what the methods logged)."""
        if self._stats.steps == 0:
            raise UserError("end_epoch() without any backward() in the epoch")
        means = self._stats.means()
        for m in self.methods.values():
            m.on_epoch_end(self.epoch, self._stats.loss_sum / self._stats.steps)
        self.epoch += 1
        self._stats = EpochStats()
        return {"losses": dict(zip(self.task_names, means["loss"])),
                "weights": (dict(zip(self.task_names, means["weights"]))
                            if means["weights"] is not None else None),
                "logged": means["logged"]}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything the method carries across steps (torch.save-able, weights_only)."""
        return {"name": self.name, "step": self.step, "epoch": self.epoch,
                "methods": portable(self.methods.state_dict()),
                "generator": self.generator.get_state(),
                "epoch_losses": (self._stats.loss_sum.detach().cpu()
                                 if self._stats.loss_sum is not None else None),
                "epoch_steps": self._stats.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            raise UserError(f"state of {state.get('name')!r} cannot be loaded into {self.name}")
        self.methods.load_state_dict(restore(state["methods"]))
        self.generator.set_state(state["generator"])
        self.step, self.epoch = state["step"], state["epoch"]
        self._stats = EpochStats()
        if state["epoch_losses"] is not None:
            self._stats.loss_sum = state["epoch_losses"].to(self.engine.shared[0].device)
            self._stats.steps = state["epoch_steps"]

    # ------------------------------------------------------------------ inputs
    def _losses(self, losses: Sequence[Tensor] | Tensor) -> list[Tensor]:
        parts = list(losses.unbind()) if isinstance(losses, Tensor) else list(losses)
        if len(parts) != len(self.task_names):
            raise UserError(f"backward: expected {len(self.task_names)} losses (one per task "
                            f"of heads: {', '.join(self.task_names)}), got {len(parts)}")
        if any(not isinstance(p, Tensor) or p.numel() != 1 for p in parts):
            raise UserError("backward: every loss must be a scalar tensor")
        return [p.reshape(()).float() for p in parts]

    def _features(self, features: Features | None) -> dict[str, Tensor]:
        if features is None:
            if self.wants_features:
                raise UserError(f"{self.name} works on the shared representation: pass "
                                f"features=<the tensor the heads consumed>")
            return {}
        if isinstance(features, Tensor):
            return {t: features for t in self.task_names}
        if isinstance(features, Mapping):
            if set(features) != set(self.task_names):
                raise UserError(f"features: expected one tensor per task "
                                f"({', '.join(self.task_names)}), got {', '.join(features)}")
            reps = dict(features)
        else:
            features = list(features)
            if len(features) != len(self.task_names):
                raise UserError(f"features: expected {len(self.task_names)} tensors, one per "
                                f"task, got {len(features)}")
            reps = dict(zip(self.task_names, features))
        if self.needs.shared_representation and len({id(z) for z in reps.values()}) > 1:
            raise UserError(f"{self.name} needs one representation shared by all tasks; "
                            f"got one per task")
        return reps


def _without_graph(recompute: Callable[[], Sequence[Tensor] | Tensor]) -> Tensor:
    """The user's re-evaluated losses as one [T] vector, computed without a graph."""
    with torch.no_grad():
        losses = recompute()
    if isinstance(losses, Tensor):
        return losses.detach().reshape(-1).float()
    return torch.stack([loss.detach().reshape(()) for loss in losses]).float()

