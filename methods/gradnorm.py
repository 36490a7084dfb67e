"""GradNorm: gradient normalization for adaptive loss balancing.

Paper: Z. Chen, V. Badrinarayanan, C.-Y. Lee, A. Rabinovich, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

What it does: learns loss weights w_t so that each task's weighted gradient norm
G_t = ‖∇_W w_t L_t‖ on the shared weights W tracks the mean norm times the task's relative
inverse training rate: it minimises L_grad = Σ_t |G_t − Ḡ·r_t^α| over w (target held
constant), with r_t = L̃_t / mean(L̃), L̃_t = L_t / L_t(0); then renormalises Σ_t w_t = T.

Hyperparameters: ``alpha`` (the asymmetry α, default 1.5 as in LibMTL; the paper tunes α per
dataset); ``layer``: "last" (the paper: W is the last shared
layer, via ``ctx.last_shared_params()``) or "all" (every shared parameter, LibMTL's variant,
via the full Jacobian, whose Jᵀw is then the shared parameters' gradient: no extra backward).

The weights are an ``nn.Parameter`` (initialised to 1) trained by the run's optimizer on
∂L_grad/∂w only (the weighted loss Σ w_t L_t is backpropagated with w held constant), and
renormalised to sum to T before each use, i.e. after each optimizer step, as in the paper's
Algorithm 1.

Weight scale: the weights sum to T.

Deviations from the paper: none known. L_t(0) is the loss of the first training step
(kept in the state dict). LibMTL deviates in three ways, not followed here by default:
(i) it parameterises w = T·softmax(ξ) instead of renormalising; (ii) it trains with equal
weights through the first epoch and takes L_t(0) as that epoch's mean loss; (iii) it uses the
gradient over all shared parameters (offered as ``layer = "all"``). The paper puts no sign
constraint on w; neither does this implementation.

Task heads: head t gets the gradient of the weighted loss, w_t ∇L_t, as in the paper
(which backpropagates Σ w_t L_t through the whole network). LibMTL gives the heads ∇L_t:
its per-task backward passes leave the unweighted gradients in the heads, and only the
shared parameters' gradient is replaced by the weighted combination.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import param
from methods.base import MethodConfig, Needs, StepContext, Weighted, Weighting
from methods.registry import register_method

LAYERS = ("last", "all")


@dataclass
class GradNormConfig(MethodConfig):
    alpha: float = param(1.5, low=0.0)
    """Asymmetry α ≥ 0 of the restoring force (LibMTL's default: 1.5)."""
    layer: str = param("last", choices=LAYERS)
    """Where the gradient norms are measured: last (the paper) or all (LibMTL)."""


def gradnorm_loss(weights: Tensor, grad_norms: Tensor, losses: Tensor, initial_losses: Tensor,
                  alpha: float) -> Tensor:
    """L_grad = Σ_t |G_t − mean(G)·r_t^α| with G_t = ‖w_t·g_t‖ = |w_t|·‖g_t‖ and the target
    held constant; differentiable in ``weights`` only (the norms and losses are data)."""
    weighted = weights.abs() * grad_norms
    ratio = losses / initial_losses
    rate = ratio / ratio.mean()
    target = (weighted.mean() * rate ** alpha).detach()
    return (weighted - target).abs().sum()


def renormalise(weights: Tensor) -> Tensor:
    """Scale the weights to sum to T."""
    return weights * (weights.shape[0] / weights.sum())


@register_method("gradnorm")
class GradNorm(Weighting):
    description = ("GradNorm: learn weights equalising weighted gradient norms (last shared layer "
                   "or all shared parameters) by training rate (sum to T)")
    Config = GradNormConfig
    needs = Needs(task_grads=True)  # layer="all" takes the Jacobian instead

    @classmethod
    def needs_for(cls, config: GradNormConfig) -> Needs:
        return Needs(jacobian=True) if config.layer == "all" else cls.needs

    def __init__(self, config: GradNormConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.ones(self.num_tasks))
        self.has_initial = False

    def weigh(self, ctx: StepContext) -> Weighted:
        with torch.no_grad():
            self.weights.copy_(renormalise(self.weights))
        losses = ctx.losses
        if not self.has_initial:
            self.initial_losses.copy_(losses.detach())
            self.has_initial = True
        if self.config.layer == "last":
            grads = ctx.task_grads(ctx.last_shared_params())
        else:
            grads = ctx.jacobian()
        weights = self.weights.to(losses.dtype)
        grad_loss = gradnorm_loss(weights, grads.detach().norm(dim=1).to(losses.dtype),
                                  losses.detach(), self.initial_losses.to(losses.dtype),
                                  self.config.alpha)
        ctx.log("gradnorm_loss", grad_loss.detach())
        objective = (weights.detach() * losses).sum() + grad_loss
        return Weighted(weights=weights.detach(), objective=objective)

    def get_extra_state(self) -> Any:
        return {"has_initial": self.has_initial}

    def set_extra_state(self, state: Any) -> None:
        self.has_initial = bool(state["has_initial"])
