"""Single-task learning (STL): one model per task, trained through the same pipeline.

The engine builds one encoder per task (``needs.separate_encoders``), so every task trains
its own network on the same batches, with the same optimizer, schedule and seed; the loss
of the run is the sum of the task losses, whose parameters are disjoint, so each network
gets exactly the gradient it would get alone. Its per-task metrics are the baseline of the
Δ measures in the comparison tables.

Deviation from training T separate runs: none for the optimizers offered (SGD, Adam,
AdamW act per parameter), since the learning-rate schedule depends only on the epoch.
"""
from __future__ import annotations

import torch

from methods.base import Needs, StepContext, Weighted, Weighting
from methods.registry import register_method


@register_method("stl")
class SingleTask(Weighting):
    description = "Single-task learning: one independent model per task (the Δ baseline)"
    needs = Needs(separate_encoders=True)

    def weigh(self, ctx: StepContext) -> Weighted:
        return Weighted(weights=torch.ones_like(ctx.losses.detach()))
