"""MTAdam: an Adam variant that balances the gradients of several loss terms per layer.

Paper: I. Malkiel, L. Wolf, "MTAdam: Automatic Balancing of Multiple Training Loss Terms",
EMNLP 2021 (arXiv:2006.14683; official code: ItzikMalkiel/MTAdam, ``mtadam.py``).

What it does, for every shared parameter tensor ("layer") and task t, at step k:
1. n_t = ‖∇ L_t‖ on the layer, averaged over steps (n_t ← β3·n_t + (1 − β3)·‖∇ L_t‖; the
   first step takes ‖∇ L_t‖ itself);
2. the task's gradient is rescaled to the anchor's magnitude, g_t ← ρ_t·(n_a / n_t)·g_t,
   where the anchor a is the first task whose n exceeds 1e-10 (normally the first task) and
   ρ_t is the task's rank (1 by default); a task with n_t ≤ 1e-10 is left as it is;
3. each task keeps its own Adam moments m_t, v_t of the rescaled gradient;
4. the step is −lr·Σ_t m̂_t / max_t(√v̂_t + ε), elementwise: the tasks share the largest
   second-moment denominator.

Kind and how to run it: MTAdam is an optimizer, so here it is an aggregator in parameter
space whose direction is MTAdam's step per unit learning rate,
d = Σ_t m_t / (1 − β1^k) / max_t(√(v_t / (1 − β2^k)) + ε). The run's optimizer then applies
d: with ``train.optimizer=sgd``, ``train.momentum=0`` and ``train.weight_decay=0`` the shared
parameters move by exactly MTAdam's step with lr = ``train.lr``. Any other optimizer,
momentum or weight decay would transform d again (Adam would normalise it a second time):
that is not MTAdam, so a run under other settings is refused when it is built
(``MTAdamConfig.check_training``). In a loop of one's own (``mtl_harness.MethodStep``)
nothing checks the optimizer.
Layer boundaries are the shared parameter tensors (``ctx.shared_sizes``), as in the code,
which iterates over each ``p`` of the parameter groups.

Hyperparameters (the code's defaults): ``beta1`` 0.9, ``beta2`` 0.999, ``beta3`` 0.9,
``eps`` 1e-8, ``ranks`` (empty: 1 for every task).

Weight scale: no loss weights are applied; the mean rescaling factor per task over the
layers is logged as ``scale/<task>``.

Deviations: (i) in the code every parameter, heads included, is updated by MTAdam; for a
head only its own task's gradient is non-zero, so MTAdam reduces to Adam there. Here the
heads get their own task's gradient from the engine and the run's optimizer steps them (with
SGD as above, plain SGD rather than Adam). (ii) The code's weight decay and AMSGrad options
(both off by default) are not offered. The moments and averaged norms ([T, P] and [T, L]
tensors) and the step count are kept in the state dict.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.errors import ConfigError, param
from methods._weighting_utils import expand_layers, layer_norms, log_per_task, per_task_vector
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method

NORM_FLOOR = 1e-10


@dataclass
class MTAdamConfig(MethodConfig):
    beta1: float = param(0.9, low=0.0, high=1.0, high_open=True)
    beta2: float = param(0.999, low=0.0, high=1.0, high_open=True)
    beta3: float = param(0.9, low=0.0, high=1.0, high_open=True)
    """Moving-average factor of the per-layer gradient norms."""
    eps: float = param(1e-8, low=0.0, low_open=True)
    ranks: tuple[float, ...] = ()
    """Rank ρ_t > 0 of each task (its magnitude relative to the anchor); empty: all 1."""

    def check_training(self, train) -> None:
        wrong = []
        if train.optimizer != "sgd":
            wrong.append(f"train.optimizer={train.optimizer}")
        elif train.momentum != 0:  # momentum is SGD's only
            wrong.append(f"train.momentum={train.momentum}")
        if train.weight_decay != 0:
            wrong.append(f"train.weight_decay={train.weight_decay}")
        if wrong:
            raise ConfigError(f"mtadam returns MTAdam's own step, which the run's optimizer must "
                              f"apply unchanged: it needs train.optimizer=sgd, "
                              f"train.momentum=0 and train.weight_decay=0 (got "
                              f"{', '.join(wrong)}; any other setting would transform the step "
                              f"again)")


@dataclass
class MTAdamState:
    step: int
    """Number of updates made, this one included (1 at the first)."""
    exp_avg: Tensor
    exp_avg_sq: Tensor
    norms: Tensor


def balance_scales(norms: Tensor, ranks: Tensor) -> Tensor:
    """[T, L] factors ρ_t·n_anchor/n_t (anchor: first task with n > 1e-10 on that layer);
    1 where n_t ≤ 1e-10."""
    valid = norms > NORM_FLOOR
    anchor = valid.to(torch.int8).argmax(dim=0, keepdim=True)  # first valid task per layer
    anchor_norm = norms.gather(0, anchor)
    safe = torch.where(valid, norms, 1.0)
    return torch.where(valid, ranks[:, None] * anchor_norm / safe, 1.0)


def mtadam_step(grads: Tensor, sizes: Sequence[int], state: MTAdamState | None, ranks: Tensor,
                beta1: float, beta2: float, beta3: float, eps: float
                ) -> tuple[Tensor, MTAdamState, Tensor]:
    """One MTAdam update from the task gradients [T, P]: the direction [P] (the step per
    unit learning rate), the new state and the balancing factors [T, L]."""
    current = layer_norms(grads, sizes)
    if state is None:
        step = 1
        norms = current
        exp_avg = torch.zeros_like(grads)
        exp_avg_sq = torch.zeros_like(grads)
    else:
        step = state.step + 1
        norms = beta3 * state.norms + (1.0 - beta3) * current
        exp_avg, exp_avg_sq = state.exp_avg, state.exp_avg_sq
    scales = balance_scales(norms, ranks.to(grads))
    balanced = expand_layers(scales, sizes) * grads
    exp_avg = beta1 * exp_avg + (1.0 - beta1) * balanced
    exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * balanced * balanced
    denom = exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2 ** step) + eps
    direction = exp_avg.sum(dim=0) / (1.0 - beta1 ** step) / denom.max(dim=0).values
    return direction, MTAdamState(step, exp_avg, exp_avg_sq, norms), scales


@register_method("mtadam")
class MTAdam(Aggregator):
    description = "MTAdam: per-layer magnitude balancing with per-task Adam moments (use with plain SGD)"
    needs = Needs(jacobian=True)
    Config = MTAdamConfig
    # Each layer is balanced to an anchor, the first task (in order) whose gradient there is
    # not negligible, as in the authors' code.
    permutation_equivariant = False

    def __init__(self, config: MTAdamConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.register_buffer("ranks", per_task_vector("method.mtadam.ranks", config.ranks,
                                                      self.num_tasks, 1.0, low=0.0, low_open=True))
        self.state: MTAdamState | None = None

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        cfg = self.config
        if self.state is not None and self.state.exp_avg.device != grads.device:
            s = self.state
            self.state = MTAdamState(s.step, s.exp_avg.to(grads.device),
                                     s.exp_avg_sq.to(grads.device), s.norms.to(grads.device))
        direction, self.state, scales = mtadam_step(grads, ctx.shared_sizes, self.state,
                                                    self.ranks, cfg.beta1, cfg.beta2, cfg.beta3,
                                                    cfg.eps)
        log_per_task(ctx, "scale", scales.mean(dim=1))
        return Aggregated(direction=direction)

    def get_extra_state(self) -> Any:
        if self.state is None:
            return {"step": 0}
        s = self.state
        return {"step": s.step, "exp_avg": s.exp_avg, "exp_avg_sq": s.exp_avg_sq,
                "norms": s.norms}

    def set_extra_state(self, state: Any) -> None:
        if state["step"] == 0:
            self.state = None
        else:
            self.state = MTAdamState(int(state["step"]), state["exp_avg"], state["exp_avg_sq"],
                                     state["norms"])
