"""Mean: minimise the mean of the task losses, (1/T) Σ_t L_t.

TorchJD's ``Mean`` aggregator (the rows of the Jacobian averaged): the shared parameters
get the mean task gradient (1/T) Σ_t g_t. Equal weighting (``ew``, LibMTL's EW and TorchJD's
``Sum``) uses weights 1 (sum T): the two differ by the factor 1/T, which changes the
effective learning rate under SGD and, under Adam, only the relative size of Adam's ε.

Computed as a weighting (one backward pass of the weighted losses, no Jacobian): the update
of the shared parameters is exactly TorchJD's. Heads: as for every weighting, head t gets
the gradient of the objective, ∇L_t / T; TorchJD's aggregators act on the shared parameters
only, and its ``mtl_backward`` gives each head ∇L_t.

Hyperparameters: none. Weight scale: 1/T each (sum 1).
"""
from __future__ import annotations

import torch

from methods.base import StepContext, Weighted, Weighting
from methods.registry import register_method


@register_method("mean")
class MeanWeighting(Weighting):
    description = "Mean of the task losses: weights 1/T each (sum 1; TorchJD's Mean)"

    def weigh(self, ctx: StepContext) -> Weighted:
        losses = ctx.losses.detach()
        return Weighted(weights=torch.full_like(losses, 1.0 / losses.shape[0]))
