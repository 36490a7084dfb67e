"""FORUM: a first-order multi-gradient method for multi-objective bilevel optimisation.

Paper: F. Ye, B. Lin, X. Cao, Y. Zhang, I. W. Tsang, "A First-Order Multi-Gradient Algorithm
for Multi-Objective Bi-Level Optimization", ECAI 2024. Reference implementation: LibMTL's
``Trainer.bacth_forward_FORUM`` (the authors' library).

What it does: the task weights a = softmax(α) are the upper-level variable, the model θ the
lower-level one, and the lower-level problem is turned into a constraint on the value-function
gap q(α, θ) = f(α, θ) − f(α, θ_K) ≤ 0, with f(α, θ) = Σ_t a_t L_t(θ; B) on the step's own batch
B and θ_K the result of K plain SGD steps on f from θ. One step of (α, θ):

    ∇q = (∇_α f(α, θ) − ∇_α f(α, θ_K), ∇_θ f(α, θ))
    ĝ_t = (0, ∇_θ L_t(θ; B') / ‖∇_θ L_t(θ; B')‖)                (B': another training batch)
    π_t = φ − ⟨∇q, ĝ_t⟩ / (‖∇q‖² + 1e-8)
    w = argmin_{w ≥ 0, Σ_{t<T} w_t = 1, w_T ≥ Σ_t w_t π_t} ‖[ĝ; ∇q]ᵀ w‖² − w_T φ (‖∇q‖² + 1e-8)
    λ ← λ + (e + 1)^(−3/4) (w_{<T} − λ)                        (e: the epoch, from 0; λ starts at 0)
    ν = max(Σ_t λ_t π_t, 0),   update = Σ_t λ_t ĝ_t + ν ∇q

α moves by its own Adam along the first T entries of the update (ν times the value-function
gap's gradient); θ gets the rest, applied by the run's optimizer. B' is drawn by the engine
(``Needs.extra_batches``); θ_K is computed at lookahead values, the model is not modified.

Hyperparameters (LibMTL's defaults): ``phi`` φ = 0.1, ``inner_lr`` 0.1 and ``inner_steps``
K = 5 of the lower-level SGD (no weight decay; it stops early, as LibMTL's, when f exceeds
1e5), ``outer_lr`` 1e-3 of α's Adam (α starts at 1/T).

Weight scale: the recorded weights are ν·a, the weights of the own batch's losses in the
update; λ (the normalised upper-level gradients' weights) is logged as ``forum.lambda.<task>``.

Cost per step: K + 1 forwards and K backward passes for θ_K, T backward passes on B' for the
normalised gradients, and one backward of the combined objective; the gradients of the T
upper-level losses (every model parameter) are kept during the step.

Deviations: B' has the run's batch size (LibMTL halves the batch of B and B'). The quadratic
programme is solved with SciPy's SLSQP (LibMTL: CVXPY) to 1e-12. LibMTL's heads and
encoder get the update through ``.grad`` directly; here it is backpropagated as the
objective Σ_t (λ_t/‖∇L_t(B')‖) L_t(B') + ν Σ_t a_t L_t(B), which has the same gradient
(one more backward pass).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine.errors import param
from methods._bilevel import LogitWeights, flat_grad, softmax_jacobian, task_grads, unflatten
from methods.base import MethodConfig, Needs, StepContext, Weighted, Weighting
from methods.registry import register_method

DIVERGED_INNER_LOSS = 1e5
"""The lower-level steps stop once f exceeds this (LibMTL's guard against a too large
inner learning rate)."""


@dataclass
class FORUMConfig(MethodConfig):
    phi: float = param(0.1, low=0.0, low_open=True)
    """φ, the fraction of the constraint's decrease required (LibMTL: 0.1)."""
    inner_lr: float = param(0.1, low=0.0, low_open=True)
    """Step size of the lower-level SGD steps (LibMTL: 0.1)."""
    inner_steps: int = param(5, low=1)
    """K, the number of lower-level SGD steps giving θ_K (LibMTL: 5)."""
    outer_lr: float = param(1e-3, low=0.0, low_open=True)
    """Learning rate of the weight logits' Adam (LibMTL: 1e-3)."""


def forum_weights(gramian: np.ndarray, pi: np.ndarray, reward: float) -> np.ndarray:
    """w ∈ R^{T+1} minimising wᵀGw − w_T·reward subject to w ≥ 0, Σ_{t<T} w_t = 1 and
    w_T ≥ Σ_t w_t π_t (G: the Gramian of [ĝ_1..ĝ_T; ∇q])."""
    from scipy.optimize import minimize  # here: listing the methods must not load SciPy

    T = len(pi)
    G = 0.5 * (gramian + gramian.T)
    linear = np.zeros(T + 1)
    linear[-1] = -reward
    constraints = [
        {"type": "eq", "fun": lambda w: w[:T].sum() - 1.0,
         "jac": lambda w: np.r_[np.ones(T), 0.0]},
        {"type": "ineq", "fun": lambda w: w[T] - pi @ w[:T],
         "jac": lambda w: np.r_[-pi, 1.0]},
    ]
    start = np.r_[np.full(T, 1.0 / T), max(pi.mean(), 0.0)]
    result = minimize(lambda w: w @ G @ w + linear @ w, start,
                      jac=lambda w: 2.0 * G @ w + linear, method="SLSQP",
                      bounds=[(0.0, None)] * (T + 1), constraints=constraints,
                      options={"ftol": 1e-12, "maxiter": 500})
    return np.clip(result.x, 0.0, None)


@register_method("forum")
class FORUM(Weighting):
    description = ("FORUM (Ye et al. 2024): first-order multi-objective bilevel update of the "
                   "model and softmax task weights (value-function constraint; weights ν·a)")
    needs = Needs(extra_batches=1, lookahead=True)
    Config = FORUMConfig

    def __init__(self, config: FORUMConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        self.task_weights = LogitWeights(self.num_tasks, config.outer_lr)
        self.register_buffer("lambd", torch.zeros(self.num_tasks, dtype=torch.float64))

    def trainable_parameters(self):
        return []  # the logits have their own Adam

    def weigh(self, ctx: StepContext) -> Weighted:
        cfg = self.config
        params = ctx.model_parameters()
        losses = ctx.losses
        a = self.task_weights.weights().to(losses.dtype)
        jac_softmax = softmax_jacobian(a)
        # ∇q: the α part in closed form (f is linear in a), the θ part by one backward.
        q_alpha = jac_softmax @ (losses.detach() - self.inner_losses(ctx, params, a))
        q_theta = flat_grad((a * losses).sum(), params)
        outer_losses = ctx.losses_at(None, batch=0)
        outer = task_grads(outer_losses, params)
        norms = outer.norm(dim=1)
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        unit = outer / norms[:, None]

        q_sq = float(q_alpha.double().square().sum() + q_theta.double().square().sum()) + 1e-8
        pi = cfg.phi - (unit.double() @ q_theta.double()).cpu().numpy() / q_sq
        gramian = np.empty((self.num_tasks + 1,) * 2)
        gramian[:-1, :-1] = (unit @ unit.T).double().cpu().numpy()
        gramian[:-1, -1] = gramian[-1, :-1] = (unit @ q_theta).double().cpu().numpy()
        gramian[-1, -1] = q_sq - 1e-8
        w = forum_weights(gramian, pi, cfg.phi * q_sq)

        rate = (ctx.epoch + 1) ** -0.75
        self.lambd.add_(rate * (torch.from_numpy(w[:-1]).to(self.lambd) - self.lambd))
        lambd = self.lambd.cpu().numpy()
        nu = max(float(lambd @ pi), 0.0)
        for t, task in enumerate(self.task_names):
            ctx.log(f"forum.lambda.{task}", self.lambd[t].float())
        ctx.log("forum.nu", torch.tensor(nu))

        self.task_weights.step(nu * q_alpha)
        scale = self.lambd.to(norms) / norms
        weights = nu * a
        objective = (scale * outer_losses).sum() + (weights * losses).sum()
        return Weighted(weights=weights.detach(), objective=objective)

    def inner_losses(self, ctx: StepContext, params: list[Tensor], a: Tensor) -> Tensor:
        """[T] losses of the own batch at θ_K, K plain SGD steps on f = Σ_t a_t L_t from θ."""
        values = [p.detach().requires_grad_() for p in params]
        for _ in range(self.config.inner_steps):
            f = (a * ctx.losses_at(values)).sum()
            if f.item() > DIVERGED_INNER_LOSS:
                break
            step = unflatten(flat_grad(f, values, retain_graph=False), values)
            values = [(v - self.config.inner_lr * s).detach().requires_grad_()
                      for v, s in zip(values, step)]
        with torch.no_grad():
            return ctx.losses_at(values).detach()
