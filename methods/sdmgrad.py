"""SDMGrad: stochastic direction-oriented multi-objective gradient descent.

Paper: P. Xiao, H. Ban, K. Ji, "Direction-oriented Multi-objective Learning: Simple and
Provable Stochastic Algorithms", NeurIPS 2023 (official code: OptMN-Lab/sdmgrad; LibMTL's
``SDMGrad.py`` is taken from it).

What it does: looks for the update closest to a preferred direction (the mean gradient
g₀ = Jᵀw̃, w̃ = 1/T) that still improves the tasks together, by solving for simplex
weights w with a few projected SGD steps on ½‖Jᵀ(w + λ w̃)‖², whose Hessian JJᵀ is estimated
without bias from two independent batches ξ, ξ' (A = J_ξ J_ξ'ᵀ). The update uses a third
batch ζ, the step's own:

    A ← A / ((mean_t √max(A_tt, 0))² + 1e-8)        (scale normalisation)
    n_iter times: v ← μ v + A (w + λ w̃) (v = the first gradient at the start),
                  w ← Π_Δ(w − lr·v)
    d = J_ζᵀ (w + λ w̃) / (1 + λ).

w starts at 1/T and carries over from step to step (warm start); the momentum starts anew
at every step. Batches ξ, ξ' are the engine's two extra batches (``Needs.extra_batches``),
ζ the batch every other method sees at that step.

Hyperparameters: ``lamda`` λ = 0.3 (LibMTL's and the authors' experiments; the official
class default is 0.6), ``n_iter`` = 20, ``lr`` = 5 and ``momentum`` = 0.5 (LibMTL's inner
SGD; TorchJD's SDMGradWeighting uses lr 10). w is kept in float64 and saved with the method.

Weight scale: the recorded weights are (w + λ/T)/(1 + λ), on the raw task gradients of the
step's batch; they sum to 1.

Deviations: the heads get their own task's gradient from the step's own batch ζ; LibMTL's
heads accumulate (sum) their gradients over the three batches. The extra batches' forward
passes update batch-norm statistics as LibMTL's do. The same weights as TorchJD's
SDMGradWeighting given A (tests/test_modo_sdmgrad.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import param
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.moco import project_simplex
from methods.registry import register_method


@dataclass
class SDMGradConfig(MethodConfig):
    lamda: float = param(0.3, low=0.0)
    """λ, the pull towards the mean gradient (LibMTL and the authors' experiments: 0.3)."""
    n_iter: int = param(20, low=1)
    """Projected SGD steps on w per training step (LibMTL: 20)."""
    lr: float = param(5.0, low=0.0, low_open=True)
    """Step size of the inner SGD (LibMTL: 5)."""
    momentum: float = param(0.5, low=0.0, high=1.0, high_open=True)
    """Momentum of the inner SGD (LibMTL: 0.5)."""


def sdmgrad_solve(w: Tensor, product: Tensor, lamda: float, n_iter: int, lr: float,
                  momentum: float) -> Tensor:
    """The inner solve: w after ``n_iter`` projected SGD steps with momentum on the
    scale-normalised A = J_ξ J_ξ'ᵀ (see the module docstring)."""
    T = w.shape[0]
    diag = torch.diagonal(product).clamp(min=0)
    scale = diag.sqrt().mean()
    a = product / (scale.square() + 1e-8)
    target = lamda * torch.full_like(w, 1.0 / T)
    velocity = None
    for _ in range(n_iter):
        grad = a @ (w + target)
        velocity = grad if velocity is None else momentum * velocity + grad
        w = project_simplex(w - lr * velocity)
    return w


def sdmgrad_weights(w: Tensor, lamda: float) -> Tensor:
    """(w + λ/T)/(1 + λ): the weights of the step's task gradients."""
    return (w + lamda / w.shape[0]) / (1 + lamda)


@register_method("sdmgrad")
class SDMGrad(Aggregator):
    description = ("SDMGrad (Xiao et al. 2023): direction-oriented MGDA; simplex weights by "
                   "projected SGD on J_ξJ_ξ'ᵀ of two independent batches, pulled to the mean "
                   "(sum 1)")
    needs = Needs(jacobian=True, extra_batches=2)
    Config = SDMGradConfig

    def __init__(self, config: SDMGradConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.register_buffer("w", torch.full((self.num_tasks,), 1.0 / self.num_tasks,
                                             dtype=torch.float64))

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        cfg = self.config
        product = (ctx.extra_jacobian(0) @ ctx.extra_jacobian(1).T).to(self.w.dtype)
        w = sdmgrad_solve(self.w, product, cfg.lamda, cfg.n_iter, cfg.lr, cfg.momentum)
        self.w.copy_(w)
        weights = sdmgrad_weights(w, cfg.lamda).to(device=grads.device, dtype=grads.dtype)
        return Aggregated(direction=weights @ grads, weights=weights)
