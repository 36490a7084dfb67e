"""DB-MTL: Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Kwok, "Dual-Balancing for Multi-Task
Learning", arXiv 2308.12029 (2023); code: LibMTL (LibMTL/weighting/DB_MTL.py), by the same
authors.

Balances the tasks twice: the losses by a logarithm (each task's gradient becomes
∇log L_t = ∇L_t / L_t, scale-free in the loss), and the gradients by norm: an exponential
moving average of each task's log-loss gradient is rescaled to the largest EMA norm, and the
rescaled EMAs are summed:

    ĝ_t ← β_k ĝ_t + (1 − β_k) ∇log(L_t + ε)      β_k = β / k^{β_σ}   (k from 1, ĝ = 0 at start)
    d   = Σ_t (max_s ‖ĝ_s‖ / (‖ĝ_t‖ + ε)) ĝ_t                          ε = 1e-8

The log-loss gradients come from the chain rule on the task Jacobian (∇L_t / (L_t + ε)),
not from another backward pass.

Hyperparameters (LibMTL's ``DB_beta`` and ``DB_beta_sigma``): ``beta`` = 0.9 (LibMTL's
default too) and ``beta_sigma`` = 0.5. LibMTL's default ``DB_beta_sigma`` is 0 (its
LibMTL/config.py), a constant β_k = β; with each side's defaults the updates differ by up
to 250% within the first 6 steps. The value the paper's experiments used was not found in
its text; ``method.dbmtl.beta_sigma=0`` reproduces LibMTL's default runs.

Weight scale: the direction combines the EMAs, not the current gradients, so no per-step
weights of the task gradients are recorded; the scale factors max_s‖ĝ_s‖/‖ĝ_t‖ (≥ 1, the
largest task at 1) are logged as ``scale/<task>``. The update has the magnitude of
T log-loss gradients of the largest task.

State (``state_dict``): the EMAs ĝ [T, P] and the step count k.

Task heads are trained on the log losses too, as in the paper and LibMTL: head t receives
∇log(L_t + ε) = ∇L_t / (L_t + ε) (``head_scales``). The losses must be positive (the
logarithm). With ``beta_sigma = 0`` no deviation from LibMTL's DB_MTL is known.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import param
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method

EPS = 1e-8


def dbmtl_update(ema: Tensor, log_grads: Tensor, step: int, beta: float,
                 beta_sigma: float) -> tuple[Tensor, Tensor, Tensor]:
    """One DB-MTL step at k = ``step`` (from 1): the new EMAs [T, D], the scale factors [T]
    and the update direction [D]."""
    decay = beta / step ** beta_sigma
    ema = log_grads + decay * (ema - log_grads)
    norms = torch.linalg.vector_norm(ema, dim=1)
    scales = norms.max() / (norms + EPS)
    return ema, scales, ema.T @ scales


@dataclass
class DBMTLConfig(MethodConfig):
    beta: float = param(0.9, low=0, high=1, high_open=True)
    beta_sigma: float = param(0.5, low=0)


@register_method("dbmtl")
class DBMTL(Aggregator):
    description = "DB-MTL: log losses, EMA task gradients rescaled to the largest EMA norm"
    needs = Needs(jacobian=True)
    Config = DBMTLConfig

    def __init__(self, config: DBMTLConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.ema: Tensor | None = None
        self.steps_seen = 0

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        losses = ctx.losses.detach().to(grads.dtype)
        log_grads = grads / (losses + EPS).unsqueeze(1)
        ema = torch.zeros_like(grads) if self.ema is None else self.ema.to(grads)
        self.steps_seen += 1
        self.ema, scales, direction = dbmtl_update(ema, log_grads, self.steps_seen,
                                                   self.config.beta, self.config.beta_sigma)
        for name, value in zip(self.task_names, scales):
            ctx.log(f"scale/{name}", value)
        return Aggregated(direction=direction, weights=None, head_scales=1.0 / (losses + EPS))

    def get_extra_state(self) -> dict:
        state: dict = {"steps_seen": self.steps_seen}
        if self.ema is not None:
            state["ema"] = self.ema
        return state

    def set_extra_state(self, state: dict) -> None:
        self.steps_seen = int(state["steps_seen"])
        self.ema = state.get("ema")
