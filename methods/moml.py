"""MOML: multi-objective meta learning of the task weights.

Paper: F. Ye, B. Lin, Z. Yue, P. Guo, Q. Xiao, Y. Zhang, "Multi-Objective Meta Learning",
NeurIPS 2021 (AIJ 2024). Reference implementation: LibMTL's ``Trainer.bacth_forward_MOML``
(the authors' library), its one-inner-step form.

What it does: the task weights a = softmax(α) set a lower-level training step, and every
task's loss after that step is an upper-level objective; α follows the min-norm (MGDA)
combination of the upper-level hypergradients:

    G_f = [∇_θ L_s(θ; B_in)]_s                           (T × N, every model parameter)
    θ' = θ − η (aᵀ G_f)                                   (η: ``inner_lr``, plain SGD)
    h_t = −η ∇_θ' L_t(θ'; B_out) G_fᵀ J_softmax(α)        (T hypergradients of α)
    ĥ_t = h_t / ‖h_t‖,  γ = argmin_{γ∈Δ} ‖Σ γ_t ĥ_t‖,  α ← Adam(α, Σ γ_t ĥ_t)

and the model is trained on Σ_t a_t L_t of the step's own batch with the new weights. B_in
and B_out are two independent training batches drawn by the engine (``Needs.extra_batches``),
so a step sees three batches, as LibMTL's does.

Hyperparameters (LibMTL's defaults): ``inner_lr`` η = 0.1, ``outer_lr`` 1e-3 (α's Adam);
α starts at 1/T (equal weights).

Weight scale: softmax weights (sum 1).

Cost per step: beside the step's own forward and backward, two forwards and 2T backward
passes (T per-task gradients of every parameter on each of B_in and B_out), and a T × N
matrix of those gradients (N: every model parameter) kept during the step.

Deviations: the inner and outer batches have the run's batch size (LibMTL halves it for
them); the lookahead forwards leave batch-norm statistics unchanged (LibMTL's run on a copy
of the model and so do not move them either). The min-norm solver is the harness's MGDA
solver (methods/_min_norm.py), the algorithm of LibMTL's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import param
from methods._bilevel import LogitWeights, softmax_jacobian, task_grads, unflatten
from methods._min_norm import min_norm_element
from methods.base import MethodConfig, Needs, StepContext, Weighted, Weighting
from methods.registry import register_method


@dataclass
class MOMLConfig(MethodConfig):
    inner_lr: float = param(0.1, low=0.0, low_open=True)
    """Step size η of the lower-level (virtual) SGD step (LibMTL: 0.1)."""
    outer_lr: float = param(1e-3, low=0.0, low_open=True)
    """Learning rate of the weight logits' Adam (LibMTL: 1e-3)."""


def normalised_rows(rows: Tensor) -> Tensor:
    """Each row divided by its ℓ2 norm (a zero row stays zero)."""
    norms = rows.norm(dim=1, keepdim=True)
    return rows / torch.where(norms > 0, norms, torch.ones_like(norms))


@register_method("moml")
class MOML(Weighting):
    description = ("MOML (Ye et al. 2021): softmax weights whose logits follow the min-norm "
                   "combination of the tasks' hypergradients after a virtual step (sum 1)")
    needs = Needs(extra_batches=2, lookahead=True)
    Config = MOMLConfig

    def __init__(self, config: MOMLConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.task_weights = LogitWeights(self.num_tasks, config.outer_lr)

    def trainable_parameters(self):
        return []  # the logits have their own Adam

    def weigh(self, ctx: StepContext) -> Weighted:
        eta = self.config.inner_lr
        params = ctx.model_parameters()
        a = self.task_weights.weights()
        inner = task_grads(ctx.losses_at(None, batch=0), params)  # G_f: T × N
        step = unflatten(a.to(inner.dtype) @ inner, params)
        ahead = [(p.detach() - eta * s).requires_grad_() for p, s in zip(params, step)]
        outer = task_grads(ctx.losses_at(ahead, batch=1), ahead)  # ∇L_t(θ'), T × N
        hyper = -eta * (outer @ inner.T) @ softmax_jacobian(a).to(inner.dtype)
        hyper = normalised_rows(hyper.double())
        gamma = min_norm_element(hyper @ hyper.T).weights.to(hyper)
        self.task_weights.step(gamma @ hyper)
        return Weighted(weights=self.task_weights.weights().to(ctx.losses.dtype))
