"""Equal weighting (EW): the sum of the task losses.

Every task's loss has weight 1, so the weights sum to T (LibMTL's convention). This is the
baseline that every comparison table starts from, and the primary method of a composition
that names only regularizers (``repmtl`` = ``ew+repmtl``).
"""
from __future__ import annotations

import torch

from methods.base import StepContext, Weighted, Weighting
from methods.registry import register_method


@register_method("ew")
class EqualWeighting(Weighting):
    description = "Equal weighting: minimise the sum of the task losses (weights sum to T)"

    def weigh(self, ctx: StepContext) -> Weighted:
        return Weighted(weights=torch.ones_like(ctx.losses.detach()))
