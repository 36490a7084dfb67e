"""GradDrop: Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov, "Just Pick a Sign:
Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020.

At the shared representation Z, each coordinate keeps either the positive or the negative
parts of the task gradients, chosen at random with probability given by their sign purity
P = ½(1 + Σ_t ∇_t / Σ_t |∇_t|); the encoder receives the sum of the kept parts.

With ∇_t = Σ_batch sign(Z) ∘ ∂L_t/∂Z (the paper's sign correction by the input activation,
summed over the batch because Z is batch-separated), U ~ Uniform(0, 1) per coordinate and
M_t = 1[P > U]·1[∇_t > 0] + 1[P < U]·1[∇_t < 0], the gradient sent to Z is
Σ_t (ℓ + (1 - ℓ) M_t) ∘ ∂L_t/∂Z, the mask broadcast over the batch.

Hyperparameters (``method.graddrop.*``): ``leak`` ℓ in [0, 1], default 0 (the paper's leak
for purely multi-task learning; 1 recovers equal weighting).

Weight scale: no per-task weights (the mask acts per coordinate); none are recorded.
Randomness: U is drawn from the run's method generator. Applied at Z as in LibMTL (the
paper inserts the GradDrop layer between the shared trunk and the heads, which is Z here).
Single-input benchmarks only. Deviations: none known.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import param
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, StepContext
from methods.registry import register_method


def graddrop_direction(grads: Tensor, rep: Tensor, uniform: Tensor, leak: float = 0.0) -> Tensor:
    """GradDrop's gradient for Z.

    grads: [T, B, F] per-task gradients w.r.t. Z; rep: [B, F] the representation Z;
    uniform: [F] draws of U(0, 1). Returns [B, F]."""
    signed = (grads * rep.sign().unsqueeze(0)).sum(1)                      # [T, F]
    purity = 0.5 * (1 + signed.sum(0) / (signed.abs().sum(0) + 1e-7))      # [F]
    keep = ((purity > uniform) & (signed > 0)) | ((purity < uniform) & (signed < 0))
    mask = leak + (1 - leak) * keep.to(grads.dtype)                        # [T, F]
    return (grads * mask.unsqueeze(1)).sum(0)


@register_method("graddrop")
class GradDrop(Aggregator):
    description = ("GradDrop (Chen et al. 2020): per coordinate of the representation, keep "
                   "the positive or negative task gradients at random by sign purity")
    needs = Needs(rep_grads=True, shared_representation=True)

    @dataclass
    class Config(MethodConfig):
        leak: float = param(0.0, low=0, high=1)
        """Fraction of every task gradient that passes the mask (0: pure GradDrop)."""

    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregated:
        rep = ctx.reps()[0].detach()
        batch = rep.shape[0]
        rep = rep.reshape(batch, -1)
        per_task = grads.reshape(grads.shape[0], batch, -1)
        uniform = torch.rand(rep.shape[1], generator=ctx.generator, device=ctx.generator.device,
                             dtype=grads.dtype).to(grads.device)
        direction = graddrop_direction(per_task, rep, uniform, self.config.leak)
        return Aggregated(direction=direction.reshape(-1))
