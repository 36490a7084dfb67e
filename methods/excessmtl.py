"""ExcessMTL: robust multi-task learning with excess risks.

Paper: Y. He, S. Zhou, G. Zhang, H. Yun, Y. Xu, B. Zeng, T. Chilimbi, H. Zhao, "Robust
Multi-Task Learning with Excess Risks", ICML 2024 (official code: yifei-he/ExcessMTL, whose
weighting is the one in LibMTL, ``LibMTL/weighting/ExcessMTL.py``).

What it does: weighs the tasks by how far each is from its own optimum (its excess risk)
rather than by its loss, so that a task with high irreducible noise does not take over.
The excess risk of task i is estimated by a second-order expansion, E_i ≈ g_iᵀ H_i⁻¹ g_i,
with g_i the task's gradient of the shared parameters and H_i an AdaGrad-style diagonal
estimate of its Hessian (paper, Eqs. 6-7): per task, S_i += g_i² (element-wise, summed over
the steps) and

    w_i = Σ_p g_ip² / sqrt(S_ip + 1e-7).

The value of the first step is the baseline w_i⁰ (scale processing, Section 3.2); from the
second step on the ratio r_i = w_i / w_i⁰ drives an exponentiated-gradient update of the
task weights (Eq. 9), α_i ← α_i·exp(η r_i), renormalised to sum to T.

Defaults (LibMTL's, which are the official code's): the weights start at 1 each (sum T),
stay there on the first step (it only sets the baseline), the ratio divides by the baseline
exactly and the weights are normalised to sum T; ``robust_step_size`` η = 1e-2.

Options, for what TorchJD's ``ExcessMTLWeighting`` does differently:
- ``warmup_steps`` (TorchJD's ``n_warmup_steps``; 0 = LibMTL): the first ``warmup_steps``
  steps keep the initial weights and only collect statistics; the baseline is then the mean
  of their w_i, and the step after them already updates (with r_i = w_i / baseline);
- ``update_first_step`` (TorchJD with no warm-up: True; LibMTL: False): with no warm-up the
  first step also updates the weights, with the raw w_i (not a ratio) as TorchJD does;
- ``divisor_eps`` (TorchJD: 1e-7; LibMTL: 0): added to the baseline in the ratio.
With ``update_first_step=True`` and ``divisor_eps=1e-7`` the weights are exactly T times
TorchJD's (which start at 1/T and sum to 1); the factor T is a scale of the update that
the run's learning rate absorbs, and the harness keeps LibMTL's (tests/test_excessmtl.py).

State: the weights (a buffer), the accumulated squared gradients S [T, P] (P: the shared
parameters; as large as T copies of the model's shared part, as in both references), the
baseline, the warm-up sum and the step count, all saved with the method.

Numerics: the exponentiated update is done in log space, α ← T·softmax(log α + η r), which
is LibMTL's product-then-normalise exactly but saturates instead of overflowing to inf (and
then NaN weights for good) on a very large ratio. Where a task's baseline is 0 (its
gradient of the first step was exactly zero) its ratio is taken as 0: LibMTL divides by
zero there. Deviations: none other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.errors import param
from methods.base import MethodConfig, Needs, StepContext, Weighted, Weighting
from methods.registry import register_method

HESSIAN_EPS = 1e-7
"""Added to the accumulated squared gradients under the square root (both references)."""


@dataclass
class ExcessMTLConfig(MethodConfig):
    robust_step_size: float = param(1e-2, low=0.0, low_open=True)
    """η, the step size of the exponentiated update of the task weights (LibMTL: 1e-2)."""
    warmup_steps: int = param(0, low=0)
    """Steps that only collect statistics (TorchJD's n_warmup_steps); 0: LibMTL's rule."""
    update_first_step: bool = False
    """With no warm-up, update on the first step with the raw excess risk (TorchJD)."""
    divisor_eps: float = param(0.0, low=0.0)
    """Added to the baseline in the ratio w / baseline (TorchJD: 1e-7; LibMTL: 0)."""


def excess_risk(sq_sum: Tensor, grads: Tensor) -> Tensor:
    """[T] w_i = Σ_p g_ip² / sqrt(S_ip + 1e-7), with S already holding this step's g²."""
    return (grads.square() / torch.sqrt(sq_sum + HESSIAN_EPS)).sum(dim=1)


def excess_ratio(w: Tensor, baseline: Tensor, eps: float) -> Tensor:
    """w / (baseline + eps), 0 where that divisor is 0."""
    divisor = baseline + eps
    safe = torch.where(divisor > 0, divisor, torch.ones_like(divisor))
    return torch.where(divisor > 0, w / safe, torch.zeros_like(w))


def exponentiated_update(weights: Tensor, signal: Tensor, step_size: float) -> Tensor:
    """α·exp(η s) renormalised to sum T, computed as T·softmax(log α + η s)."""
    logits = torch.log(weights) + step_size * signal
    logits = torch.nan_to_num(logits, posinf=torch.finfo(logits.dtype).max)
    return torch.softmax(logits, dim=0) * weights.shape[0]


@register_method("excessmtl")
class ExcessMTL(Weighting):
    description = ("ExcessMTL (He et al. 2024): exponentiated-gradient task weights driven by "
                   "each task's excess-risk estimate (sum to T)")
    needs = Needs(jacobian=True)
    Config = ExcessMTLConfig

    def __init__(self, config: ExcessMTLConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.register_buffer("weights", torch.ones(self.num_tasks))
        self.sq_sum: Tensor | None = None
        self.baseline: Tensor | None = None
        self.warmup_sum: Tensor | None = None
        self.steps = 0

    def weigh(self, ctx: StepContext) -> Weighted:
        grads = ctx.jacobian().detach()
        cfg = self.config
        if self.sq_sum is None:
            self.sq_sum = torch.zeros_like(grads)
            self.warmup_sum = grads.new_zeros(self.num_tasks)
        self.sq_sum.add_(grads.square())
        w = excess_risk(self.sq_sum, grads)
        weights = self.weights.to(w.dtype)
        step = self.steps
        self.steps += 1
        if step < cfg.warmup_steps:
            self.warmup_sum.add_(w)
            return Weighted(weights=weights.clone())
        if self.baseline is None:
            if cfg.warmup_steps > 0:
                self.baseline = self.warmup_sum / cfg.warmup_steps
                signal = excess_ratio(w, self.baseline, cfg.divisor_eps)
            else:
                self.baseline = w.clone()
                if not cfg.update_first_step:
                    return Weighted(weights=weights.clone())
                signal = w
        else:
            signal = excess_ratio(w, self.baseline, cfg.divisor_eps)
        weights = exponentiated_update(weights, signal, cfg.robust_step_size)
        self.weights.copy_(weights)
        return Weighted(weights=weights.clone())

    def get_extra_state(self) -> Any:
        return {"sq_sum": self.sq_sum, "baseline": self.baseline,
                "warmup_sum": self.warmup_sum, "steps": self.steps}

    def set_extra_state(self, state: Any) -> None:
        device = self.weights.device
        move = (lambda t: None if t is None else t.to(device))
        self.sq_sum = move(state["sq_sum"])
        self.baseline = move(state["baseline"])
        self.warmup_sum = move(state["warmup_sum"])
        self.steps = int(state["steps"])

    def _apply(self, fn, *args, **kwargs):
        # .to()/.double() also move the lazily created state, which is not a buffer.
        out = super()._apply(fn, *args, **kwargs)
        for name in ("sq_sum", "baseline", "warmup_sum"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))
        return out
