"""The method contract: what a multi-task optimization method gets and what it returns.

Three kinds of method, combined by the engine into one update per training step:

=============  ==============================================  ==============================
kind           gets (through the step context)                 returns
=============  ==============================================  ==============================
Weighting      losses [T] (and, on demand, the Jacobian)       weights w [T] (+ objective)
Aggregator     per-task gradients [T, D] of the shared          one direction [D]
               parameters (space "param") or of the shared
               representation Z (space "rep")
Regularizer    Z, losses, per-task gradients w.r.t. Z           a scalar penalty added to the
               (differentiable when declared)                   objective before backward
=============  ==============================================  ==============================

A method never runs its own backward over the network: it asks the context for what it
needs (``ctx.jacobian()``, ``ctx.rep_grads()``, ...), which the engine computes once per
step and caches. ``needs`` declares those requests so that an impossible combination is
refused when the run is built, not in the middle of training.

Methods are ``nn.Module`` so that learnable parameters (UW's log-variances) and buffers
(EMAs) land in ``state_dict()`` and so in checkpoints; anything else goes through
``get_extra_state``/``set_extra_state``. ``trainable_parameters()`` are trained by the run's
optimizer; a method with an optimizer of its own (FAMO) returns none there.

This module imports nothing from the engine but ``engine.errors`` (which plugins import
too), and nothing from the benchmarks or the datasets.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

from engine.errors import check_config


@dataclass(frozen=True)
class Needs:
    """What a method asks of the engine at each step."""

    jacobian: bool = False
    """Per-task gradients of the shared parameters, a [T, P] matrix."""
    rep_grads: bool = False
    """Per-task gradients of the loss w.r.t. the shared representation Z."""
    task_grads: bool = False
    """Per-task gradients of some shared parameters (``ctx.task_grads``, e.g. GradNorm's
    last shared layer): T backward passes through the heads to those parameters."""
    second_order: bool = False
    """The representation gradients are needed with a differentiable graph."""
    shared_representation: bool = False
    """One Z for all tasks: refused on multi-input benchmarks (each task its own batch)."""
    separate_encoders: bool = False
    """One encoder per task (single-task learning): nothing is shared."""
    after_step: bool = False
    """An extra hook after the optimizer step (e.g. FAMO re-evaluates the losses)."""
    extra_batches: int = 0
    """Independent training batches beside the step's own, k of them per step (MoDo,
    SDMGrad): ``ctx.extra_losses(i)`` and ``ctx.extra_jacobian(i)`` for i < k. The trainer
    draws them from a stream of its own, so the step's own batch is the one every other
    method sees."""

    lookahead: bool = False
    """The losses at parameter values of the method's own (bilevel methods: a virtual step
    and the losses after it): ``ctx.model_parameters()``, ``ctx.losses_at(values, batch)``,
    ``ctx.virtual_step(grads)``. The model's parameters are never modified."""

    def describe(self) -> str:
        parts = [f.name if value is True else f"{f.name}={value}"
                 for f in dataclasses.fields(self) if (value := getattr(self, f.name))]
        return ", ".join(parts) if parts else "losses only"

    def __or__(self, other: Needs) -> Needs:
        def either(a, b):
            return max(a, b) if isinstance(a, int) and not isinstance(a, bool) else a or b
        return Needs(**{f.name: either(getattr(self, f.name), getattr(other, f.name))
                        for f in dataclasses.fields(self)})


@dataclass
class MethodConfig:
    """Base of every method's hyperparameters. Subclasses add fields with the paper's
    defaults, each with its domain where it has one (``engine.errors.param``:
    ``c: float = param(0.4, low=0)``); a value outside it is refused, named
    ``method.<name>.<field>``, wherever a config is checked (``engine.errors.check_config``:
    resolving a run's config, building the method) without any code of the method's.
    ``validate`` is for what no domain says: relations between fields, a tuple's values."""

    late_fields: ClassVar[tuple[str, ...]] = ()
    """Fields added after runs were recorded: each is left out of the run's config hash while
    it holds its default, so that the folders (and resumption) of earlier runs stay valid."""

    def validate(self) -> None:
        """Raise ConfigError (one line, naming the key) for a value that the fields'
        domains let through but the method cannot take; runs after the domain checks."""

    def check_training(self, train) -> None:
        """Raise ConfigError, in one line with the reason, where the run's training settings
        (``train``: optimizer, learning-rate schedule, ...) are ones the method does not
        support; called when a run is built, after ``validate``. Accepts everything by
        default."""


class StepContext(Protocol):
    """What the engine offers a method during one training step. Lazy and cached: the
    Jacobian is computed on the first call to ``jacobian()``, and so on."""

    task_names: tuple[str, ...]
    step: int
    """Global optimisation step, counted from 0."""
    epoch: int
    generator: torch.Generator
    """The run's seeded generator for method randomness, on the training device."""

    @property
    def losses(self) -> Tensor:
        """[T] task losses with their graph (after any regularizer's loss transform)."""

    @property
    def raw_losses(self) -> Tensor:
        """[T] task losses exactly as the tasks computed them, with their graph."""

    @property
    def shared_sizes(self) -> list[int]:
        """Number of elements of each shared parameter, in the Jacobian's column order
        (for methods that act per layer, e.g. MTAdam)."""

    def jacobian(self) -> Tensor:
        """[T, P] per-task gradients of the shared parameters (no graph)."""

    def rep_grads(self, create_graph: bool = False, raw: bool = False) -> list[Tensor]:
        """S_t = dL_t/dZ_t for every task, each shaped like Z_t (of the raw losses when
        ``raw``, else of ``losses``)."""

    def reps(self) -> list[Tensor]:
        """Z_t, the shared representation each task's head consumed (the same tensor for
        every task on single-input benchmarks)."""

    def last_shared_params(self) -> list[Tensor]:
        """Parameters of the last layer of the shared encoder (GradNorm's choice)."""

    def task_grads(self, params: list[Tensor], create_graph: bool = False) -> Tensor:
        """[T, P'] per-task gradients w.r.t. the given parameters. For shared parameters
        (below Z) without ``create_graph`` the same passes give the heads their own
        gradients and the representation gradients, and a weighting's update is formed
        from them (no further backward pass through the heads)."""

    world_size: int
    """Number of data-parallel processes (1 for a single process)."""

    def gather_samples(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """Data parallel: ``tensor`` of every process concatenated along its sample
        dimension ``dim``, in process order, with the gradient flowing back to each
        process's own slice. In a single process: ``tensor`` itself. For statistics that
        couple the samples of a batch (contrastive negatives)."""

    def log(self, name: str, value: Tensor) -> None:
        """Record a scalar statistic; the engine averages it over the epoch's steps."""

    def recompute_losses(self) -> Tensor:
        """[T] losses on the same batch with the current parameters, without graph
        (for methods that look at the effect of the step they just took)."""

    def extra_losses(self, index: int) -> Tensor:
        """[T] task losses (no graph) of the step's extra batch ``index`` (0 ≤ index <
        ``needs.extra_batches``): an independent training batch, evaluated with the
        parameters of this step."""

    def extra_jacobian(self, index: int) -> Tensor:
        """[T, P] per-task gradients of the shared parameters on extra batch ``index``
        (no graph; its own tensor, valid for this step)."""

    def model_parameters(self) -> list[Tensor]:
        """Every trainable parameter of the model (shared and task-specific), in a fixed
        order: the order of ``losses_at``'s values and ``virtual_step``'s gradients."""

    def losses_at(self, values: list[Tensor] | None, batch: int | None = None) -> Tensor:
        """[T] losses (as ``losses``: after any regularizer's transform) with the model's
        parameters replaced by ``values`` (None: their current values), differentiable
        w.r.t. ``values``, on the step's own batch (``batch=None``) or on extra batch
        ``batch``. A new forward pass; batch-norm statistics are left as they were."""

    def virtual_step(self, grads: list[Tensor | None], lr: float | None = None) -> list[Tensor]:
        """θ − α (m + g + λθ) per parameter: the run's optimizer step in SGD form (α its
        current learning rate unless ``lr`` is given, λ its weight decay, m its SGD momentum
        term; Auto-λ's unrolled step)."""

    @property
    def learning_rate(self) -> float:
        """The current learning rate of the model's parameters."""


class Method(nn.Module):
    """Base of every method. Subclasses set the class attributes and implement their kind's
    hook (``weigh``, ``aggregate`` or ``penalty``)."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    min_batch: ClassVar[int] = 1
    """The fewest samples a training batch may hold (a contrastive term compares samples
    within the batch); checked when a run is built, against the benchmark's batch."""
    permutation_equivariant: ClassVar[bool] = True
    """Relabelling the tasks relabels the output: the weights (and head scales) follow their
    tasks, the direction or the penalty does not change (tests/test_method_contract.py).
    False where the definition singles out a task by its position or draws random numbers
    per position; the class says why."""

    def __init__(self, config: MethodConfig, task_names: tuple[str, ...]):
        super().__init__()
        check_config(config, f"method.{type(self).name or type(self).__name__}")
        self.needs = type(self).needs_for(config)
        self.config = config
        self.task_names = tuple(task_names)
        self.num_tasks = len(self.task_names)

    @classmethod
    def min_tasks(cls, config: MethodConfig) -> int:
        """The fewest tasks the method is defined for under ``config`` (1 by default). The
        method's constructor refuses fewer; the leaderboard leaves it out of a benchmark
        with fewer."""
        return 1

    @classmethod
    def needs_for(cls, config: MethodConfig) -> Needs:
        """What the method asks of the engine under ``config`` (default: the class's
        ``needs``). Override where an option changes it (GradNorm's ``layer``); the step
        context refuses any request outside it."""
        return cls.needs

    def run_report(self) -> dict:
        """What the run's summary.json records about the method after training, under its
        name (e.g. how often a solver fell back); nothing by default."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that the run's optimizer trains beside the model's."""
        return list(self.parameters())

    def after_step(self, ctx: StepContext) -> None:
        """Called after the optimizer step when ``needs.after_step`` is set."""

    def on_epoch_end(self, epoch: int, mean_train_losses: Tensor) -> None:
        """Called at the end of every training epoch with the epoch's mean task losses."""


@dataclass
class Aggregated:
    """An aggregator's output: the update direction and, where the direction is a linear
    combination of the task gradients, the weights of that combination (for the record)."""

    direction: Tensor
    weights: Tensor | None = None
    head_scales: Tensor | None = None
    """Optional [T] factors on each head's gradient of its own loss (head t gets
    head_scales[t]·∇L_t), for methods whose reference code weighs or transforms the losses
    the heads see (Nash-MTL: α_t; DB-MTL: the log loss, 1/L_t). None: unscaled."""


@dataclass
class Weighted:
    """A weighting's output. ``weights`` [T] are applied to the task losses and recorded;
    ``objective`` (default: sum of weights * losses) is what gets backpropagated. When the
    method used the Jacobian, the shared parameters receive Jᵀ·weights without another
    backward pass, and ``objective`` reaches only the heads and the method's parameters."""

    weights: Tensor
    objective: Tensor | None = None


class Weighting(Method):
    """Turns the task losses into weights; the engine backpropagates the weighted sum."""

    kind = "weighting"

    def weigh(self, ctx: StepContext) -> Weighted:
        raise NotImplementedError


class Aggregator(Method):
    """Turns per-task gradients [T, D] into one direction [D]. ``space`` says whether the
    gradients are taken w.r.t. the shared parameters ("param") or the shared
    representation ("rep"; then the direction is backpropagated through the encoder)."""

    kind = "aggregator"
    space: ClassVar[str] = "param"
    """Derived from ``needs`` when the class is defined: "rep" when the aggregator declares
    ``rep_grads`` (its gradients are taken w.r.t. Z), else "param"."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        derived = "rep" if cls.needs.rep_grads else "param"
        declared = cls.__dict__.get("space")
        if declared is not None and declared != derived:
            raise TypeError(f"{cls.__name__}: space={declared!r} contradicts its needs "
                            f"(rep_grads={cls.needs.rep_grads}); the space follows from the "
                            f"needs, leave it out")
        cls.space = derived

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        raise NotImplementedError


class GramianAggregator(Aggregator):
    """An aggregator whose direction is a combination of the task gradients, d = wᵀJ, with
    weights w [T] computed from the T×T Gramian G = J Jᵀ (MGDA, CAGrad, UPGrad, ...).
    Subclasses implement ``weights(gramian, ctx)``; the base forms G once per step, casts
    the weights to the gradients' dtype and device (a no-op where they already are), and
    returns ``Aggregated(direction=w @ grads, weights=w)``. A solver's accounting or a
    logged statistic (``ctx.log``) goes in ``weights``, which gets the step context.

    Hooks, for what some aggregators need beyond that: ``gramian`` (the matrix the weights
    are solved on, e.g. of the representation gradients summed over the batch),
    ``combine`` (how wᵀJ is computed) and ``head_scales``."""

    def weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        """[T] weights of the task gradients from the [T, T] Gramian."""
        raise NotImplementedError

    def gramian(self, grads: Tensor, ctx: StepContext) -> Tensor:
        """The Gramian the weights are computed from: G = J Jᵀ of the gradients [T, D]."""
        return grads @ grads.T

    def combine(self, weights: Tensor, grads: Tensor) -> Tensor:
        """The direction wᵀJ [D]."""
        return weights @ grads

    def head_scales(self, weights: Tensor, ctx: StepContext) -> Tensor | None:
        """Factors on each head's gradient of its own loss (``Aggregated.head_scales``);
        None: the heads' gradients are left as they are."""
        return None

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        w = self.weights(self.gramian(grads, ctx), ctx).to(device=grads.device,
                                                            dtype=grads.dtype)
        return Aggregated(direction=self.combine(w, grads), weights=w,
                          head_scales=self.head_scales(w, ctx))


class Regularizer(Method):
    """Adds a penalty on the shared representation to the objective. Composes with any
    weighting or aggregator: the penalty's gradient is added to the primary update."""

    kind = "regularizer"

    def transform_losses(self, losses: Tensor) -> Tensor:
        """The task losses the primary method sees (identity unless an option says so)."""
        return losses

    def penalty(self, ctx: StepContext) -> Tensor | None:
        """The scalar term added to the objective (None: nothing this step)."""
        raise NotImplementedError
