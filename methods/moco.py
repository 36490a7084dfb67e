"""MoCo: Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR 2023 (openreview
dLAYGdKTi2); authors' code: github.com/heshandevaka/MoCo (LibMTL fork, weighting/Tracking.py);
LibMTL's MoCo, "implemented based on the authors' shared code".

Multi-objective gradient correction: a tracking variable y_t,i follows each task's stochastic
gradient, and the weights λ follow a projected gradient step on the min-norm objective of
the tracked gradients (Algorithm 1):

    y_{t+1} = y_t − β_t (y_t − ∇L(x_t))                     β_t = β / t^{β_σ}
    λ_{t+1} = Π_Δ(λ_t − γ_t (Y_{t+1} Y_{t+1}ᵀ + ρ I) λ_t)    γ_t = γ / t^{γ_σ}
    d_t     = Y_{t+1}ᵀ λ_{t+1}

(t counted from 1, y_0 = 0 and λ_0 = 1/T, as in both codes).

Hyperparameters (LibMTL's defaults, from the authors' shared code): ``beta`` = 0.5,
``beta_sigma`` = 0.5, ``gamma`` = 0.1, ``gamma_sigma`` = 0.5, ``rho`` = 0;
``lambda_update`` = "projection" (Π_Δ, the Euclidean projection onto the simplex: the paper
and the authors' Tracking code) or "softmax" (LibMTL: λ ← softmax(·));
``grad_normalization`` = "none" (the paper) or "loss" (LibMTL: each task gradient is
rescaled to norm L_t, g_t / (‖g_t‖ + 1e-8) · L_t, before tracking).
``lambda_update="softmax", grad_normalization="loss"`` reproduces LibMTL's MoCo, which the
DB-MTL and Rep-MTL comparison tables ran.

Weight scale: λ lies on the simplex (sums to 1) and weighs the tracked gradients, not the
current ones, so no per-step weights of the task gradients are recorded; λ is logged as
``lambda/<task>``. The direction is not multiplied by T (the authors' NYUv2 script
multiplies every aggregated gradient by 3 "to match the sum loss"; their Tracking code and
LibMTL do not).

State (``state_dict``): y [T, P], λ [T] and the step count t.

Deviations: the authors' Tracking code doubles the λ step (2 YYᵀλ, the exact gradient of
‖Yᵀλ‖²); this module follows Algorithm 1 and LibMTL (no factor 2). Heads receive the
gradient of their own loss, as in both codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import param
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of v [T] onto the probability simplex (sort-based).

    The projection is the same for v and v + c·1, so v is first shifted to a maximum of 0:
    the largest entry then always passes the active test exactly (0 − (0 − 1)/1 = 1), where
    for entries of 1e16 and more the 1 of the simplex was lost to rounding and no entry was
    active (a division by zero)."""
    v = v - v.max()
    u, _ = torch.sort(v, descending=True)
    cumulative = u.cumsum(0) - 1.0
    index = torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype)
    active = u - cumulative / index > 0
    # the last active index (the condition holds for a prefix of the sorted entries)
    count = active.to(v.dtype).sum()
    theta = cumulative.gather(0, (count.long() - 1).clamp(min=0).reshape(1)) / count
    return (v - theta).clamp(min=0)


@dataclass
class MoCoConfig(MethodConfig):
    beta: float = param(0.5, low=0, high=1, low_open=True)
    beta_sigma: float = param(0.5, low=0)
    gamma: float = param(0.1, low=0, low_open=True)
    gamma_sigma: float = param(0.5, low=0)
    rho: float = param(0.0, low=0)
    lambda_update: str = param("projection", choices=("projection", "softmax"))
    grad_normalization: str = param("none", choices=("none", "loss"))


def moco_update(y: Tensor, lambd: Tensor, grads: Tensor, step: int,
                cfg: MoCoConfig) -> tuple[Tensor, Tensor]:
    """One MoCo step at t = ``step`` (from 1): the new tracking variables y [T, D] and
    weights λ [T]; the update direction is yᵀλ."""
    y = y - cfg.beta / step ** cfg.beta_sigma * (y - grads)
    gamma = cfg.gamma / step ** cfg.gamma_sigma
    gram = y @ y.T + cfg.rho * torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
    moved = lambd - gamma * (gram @ lambd)
    lambd = torch.softmax(moved, 0) if cfg.lambda_update == "softmax" else project_simplex(moved)
    return y, lambd


@register_method("moco")
class MoCo(Aggregator):
    description = "MoCo: tracked task gradients, simplex weights by projected gradient steps"
    needs = Needs(jacobian=True)
    Config = MoCoConfig

    def __init__(self, config: MoCoConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.y: Tensor | None = None
        self.lambd = torch.full((self.num_tasks,), 1.0 / self.num_tasks)
        self.steps_seen = 0

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        cfg: MoCoConfig = self.config
        if cfg.grad_normalization == "loss":
            norms = torch.linalg.vector_norm(grads, dim=1, keepdim=True)
            grads = grads / (norms + 1e-8) * ctx.losses.detach().to(grads.dtype).unsqueeze(1)
        y = torch.zeros_like(grads) if self.y is None else self.y.to(grads)
        self.steps_seen += 1
        self.y, self.lambd = moco_update(y, self.lambd.to(grads), grads, self.steps_seen, cfg)
        for name, value in zip(self.task_names, self.lambd):
            ctx.log(f"lambda/{name}", value)
        return Aggregated(direction=self.y.T @ self.lambd, weights=None)

    def get_extra_state(self) -> dict:
        state = {"lambd": self.lambd, "steps_seen": self.steps_seen}
        if self.y is not None:
            state["y"] = self.y
        return state

    def set_extra_state(self, state: dict) -> None:
        self.lambd = state["lambd"]
        self.steps_seen = int(state["steps_seen"])
        self.y = state.get("y")
