"""Rep-MTL: representation-level task saliency regularization.

Wang, Li, Xu, "Rep-MTL: Unleashing the Power of Representation-level Task Saliency for
Multi-Task Learning", ICCV 2025, arXiv 2507.21049. No official code has been published;
this follows the paper's equations, and every point the paper leaves open is an option of
the config below (docs/repmtl.md gives the formulation and the reasons for each default).

Task saliency (Eq. 3): S_t = ∂L_t/∂Z, the signed gradient of task t's loss w.r.t. the
shared representation Z (B×C×H'×W'), per sample, from T backward passes through the heads
with a differentiable graph, so both regularizers send second-order gradients into the
encoder (through Z) and into the heads.

- TSR, task-specific saliency regulation (Eqs. 4-6): at each (sample, position), the
  distribution over tasks of the absolute channel-mean saliencies (L1-normalised); L_tsr is
  its entropy averaged over positions, minimised so that each position serves few tasks.
- CSA, cross-task saliency alignment (Eqs. 7-9): per sample, the channel affinities
  M_t[b] = S_t[b] S_t[b]ᵀ of each task are pulled towards an anchor affinity Â_b = A_b A_bᵀ
  built from the spatial means of the saliencies, with the other samples' anchors as
  negatives (an InfoNCE on cosine similarities of the flattened, L2-normalised maps).

The objective is Eq. 10, L = Σ_t L_t + λ_tsr·L_tsr + λ_csa·L_csa, with the task term left to
the primary method: ``repmtl`` is ``ew+repmtl`` (the paper's setting), and ``pcgrad+repmtl``,
``famo+repmtl``... add the penalty's gradient to that method's update. ``repmtl_tsr`` and
``repmtl_csa`` penalise one term only (the paper's Table 4); every variant logs L_tsr, L_csa
and the normalised task entropy each step (the term it does not penalise is computed
without a graph).

Choices where the paper is silent (all options; defaults in parentheses):
- ``tau`` (0.1): the temperature of Eq. 9 is never given; 0.1 is the common InfoNCE value.
- ``positives`` (mean): how the T positives of a sample combine in Eq. 9.
- ``denominator`` (negatives): Eq. 9 as printed sums over the negatives only.
- ``anchor`` (stacked): the task columns of A_b stacked (C×T), as the paper's figure draws.
- ``eps`` (1e-8): ε in P's denominator (relative to the batch's mean |Ŝ|) and in log P.
- ``log_losses`` (false) and ``saliency`` (loss): where the appendix's logarithmic
  transformation sits. Defaults follow Eq. 10 and Eq. 3; the ablation's "neither" row of
  Table 4 equals plain EW's row, which suggests the plain sum.
- ``lambda_tsr``, ``lambda_csa`` (0.9 each): the paper grid-searches {0.7, ..., 1.5} without
  printing the chosen values; its sensitivity study holds the other λ at 0.9.

Multi-input benchmarks (each task its own images, so Z_t differs per task): the b-th
sample of every task's batch is treated as "the same sample" of Eqs. 4-9 (the tasks'
training batches have one size). The pairing is arbitrary but the terms are not constant:
each depends on every task's saliency at the paired positions. Deviation: the paper does
not say what it computed on Office-31/Office-Home.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from engine.errors import ConfigError, param
from methods import _saliency as sal
from methods.base import MethodConfig, Needs, Regularizer, StepContext
from methods.registry import register_method

SALIENCY_OF = ("loss", "log_loss")


@dataclass
class SaliencyConfig(MethodConfig):
    """Options shared by every Rep-MTL variant."""

    log_losses: bool = False
    """Give the primary method log L_t instead of L_t (the appendix's "logarithmic
    transformation" applied to the task term). Off: Eq. 10 sums the plain losses."""
    saliency: str = param("loss", choices=SALIENCY_OF)
    """loss: S_t = ∂L_t/∂Z (Eq. 3); log_loss: S_t = ∂log L_t/∂Z = (∂L_t/∂Z)/L_t, which
    rescales each task's saliency by its loss. Independent of ``log_losses``."""
    eps: float = param(1e-8, low=0, high=1, low_open=True)
    """ε of TSR: P = |Ŝ|/(Σ|Ŝ| + ε·mean|Ŝ|) and log(P + ε); needed where every task's
    saliency vanishes at a position."""
    warmup_epochs: int = param(0, low=0)
    """Epochs trained without the penalty before it starts (its terms are still recorded).
    0: from the first step, as the paper. A warm-up lets the primary method shape Z
    before the saliencies are regularised (the paper fine-tunes a pretrained encoder)."""
    gather: bool = True
    """Data-parallel runs: compute both terms on the saliencies of the whole global batch
    (gathered from every process, gradients flowing back to each), so CSA's negatives are
    all the other samples of the global batch and the run equals a single process on it.
    Off: each process uses its own samples only (fewer negatives, less communication)."""


@dataclass
class TSRConfig(SaliencyConfig):
    lambda_tsr: float = param(0.9, low=0)
    """Weight of L_tsr (paper grid {0.7, 0.9, 1.1, 1.3, 1.5})."""


@dataclass
class CSAConfig(SaliencyConfig):
    lambda_csa: float = param(0.9, low=0)
    """Weight of L_csa (paper grid {0.7, 0.9, 1.1, 1.3, 1.5})."""
    tau: float = param(0.1, low=0, low_open=True)
    """Temperature of the InfoNCE of Eq. 9 (not given in the paper)."""
    anchor: str = param("stacked", choices=sal.ANCHORS)
    """stacked: A_b = the T spatial-mean saliencies as columns (C×T, the paper's figure);
    mean: their average over tasks (C×1)."""
    positives: str = param("mean", choices=sal.POSITIVES)
    """How a sample's T positive pairs combine: mean (or sum) of the T per-task InfoNCE
    terms, or joint (one term with the T positives in the numerator)."""
    denominator: str = param("negatives", choices=sal.DENOMINATORS)
    """negatives: Eq. 9 as printed (the other samples' anchors only); with_positive: the
    positive pair's term is added to the denominator (the usual InfoNCE)."""


@dataclass
class RepMTLConfig(CSAConfig):
    lambda_tsr: float = param(0.9, low=0)
    """Weight of L_tsr (paper grid {0.7, 0.9, 1.1, 1.3, 1.5})."""


class _RepMTLBase(Regularizer):
    """Shared machinery of the variants: saliencies, terms, logging. ``penalised`` names
    the terms the variant adds to the objective."""

    needs = Needs(rep_grads=True, second_order=True)
    penalised: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: SaliencyConfig, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        if self.num_tasks < 2:
            raise ConfigError(f"{self.name} regularizes how the tasks share the representation; "
                              f"it needs at least 2 tasks, got {self.num_tasks}")

    def transform_losses(self, losses: Tensor) -> Tensor:
        return losses.log() if self.config.log_losses else losses

    def saliencies(self, ctx: StepContext, differentiable: bool = True) -> list[Tensor]:
        """S_t of every task as T tensors [B, C, N], differentiable (second order) unless
        ``differentiable`` is off (the warm-up only records the terms)."""
        grads = ctx.rep_grads(create_graph=differentiable, raw=True)
        if self.config.saliency == "log_loss":
            raw = ctx.raw_losses
            grads = [g / raw[i] for i, g in enumerate(grads)]
        S = sal.flatten_saliencies(grads)
        if self.config.gather and ctx.world_size > 1:
            S = [ctx.gather_samples(s, dim=0) for s in S]
        return S

    def _tsr(self, S: list[Tensor]) -> Tensor:
        return sal.tsr_loss(S, self.config.eps)

    def _csa(self, S: list[Tensor]) -> Tensor:
        c = self.config
        return sal.csa_loss(S, c.tau, c.anchor, c.positives, c.denominator)

    def _lambda(self, term: str) -> float:
        return getattr(self.config, f"lambda_{term}")

    def penalty(self, ctx: StepContext) -> Tensor | None:
        active = ctx.epoch >= self.config.warmup_epochs
        S = self.saliencies(ctx, differentiable=active)
        total = None
        for term, fn in (("tsr", self._tsr), ("csa", self._csa)):
            if term in self.penalised and active:
                value = fn(S)
                weighted = self._lambda(term) * value
                total = weighted if total is None else total + weighted
            elif term == "csa" and S[0].shape[0] < 2:
                continue  # undefined on a batch of one; only recorded, so not an error here
            else:
                with torch.no_grad():
                    value = fn([s.detach() for s in S])
            ctx.log(f"{self.name}.L_{term}", value)
            if term == "tsr":
                ctx.log(f"{self.name}.task_entropy", value.detach() / math.log(self.num_tasks))
        return total


@register_method("repmtl")
class RepMTL(_RepMTLBase):
    description = ("Rep-MTL (ICCV 2025): task-saliency entropy (TSR) + cross-task saliency "
                   "alignment (CSA) on the shared representation")
    Config = RepMTLConfig
    penalised = ("tsr", "csa")
    min_batch = 2  # CSA contrasts each sample with the others of its batch


@register_method("repmtl_tsr")
class RepMTLTSR(_RepMTLBase):
    description = "Rep-MTL ablation: task-specific saliency regulation (TSR) only"
    Config = TSRConfig
    penalised = ("tsr",)

    def _csa(self, S: list[Tensor]) -> Tensor:
        # Recorded with Rep-MTL's default CSA options, so that the ablations' logs compare.
        defaults = CSAConfig()
        return sal.csa_loss(S, defaults.tau, defaults.anchor, defaults.positives,
                            defaults.denominator)


@register_method("repmtl_csa")
class RepMTLCSA(_RepMTLBase):
    description = "Rep-MTL ablation: cross-task saliency alignment (CSA) only"
    Config = CSAConfig
    penalised = ("csa",)
    min_batch = 2
