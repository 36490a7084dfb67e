"""The mathematics of Rep-MTL's two regularizers, as small pure functions of the task
saliencies (Wang, Li, Xu, "Rep-MTL", ICCV 2025, arXiv 2507.21049; Eqs. 3-9).

Every function takes the saliencies ``S`` as T tensors of shape [B, C, N], one per task
(sample b, channel c, position n: the H'W' positions flattened; N = 1 for vector
features), or stacked as one [T, B, C, N] tensor. Dense saliencies are never copied into
one stack here (on the paper's NYUv2 model at batch 8 one copy of all T saliencies is
340 MB); small ones are, in bounded chunks (CHUNK_ELEMENTS).
Nothing here knows about the engine; ``methods/repmtl.py`` builds ``S`` and combines the
terms. See docs/repmtl.md for the formulation and the reasoning behind every option.

Cost. The channel affinities M_t[b] = S_t[b] S_t[b]ᵀ and the anchor affinity
Â_b = A_b A_bᵀ are C×C (C = 2048 on the paper's dense-prediction encoder); they are never
formed. Cosine similarities of Gram matrices only need

    ⟨S Sᵀ, A Aᵀ⟩_F = ‖Aᵀ S‖_F²     ([K, N] per sample, K = T or 1 anchor columns)
    ‖S Sᵀ‖_F = ‖Sᵀ S‖_F          (the Gram in the smaller of C and N; its gradient
                                  4·(S Sᵀ)·S reuses that Gram: one product, not two)
    ⟨A_b A_bᵀ, A_k A_kᵀ⟩_F = ‖A_bᵀ A_k‖_F²   (one [B·K, B·K] product for all pairs, or the
                                          C×C affinities when that is cheaper: many tasks)

all batched over samples (and over the tasks of a chunk), with no Python loop over samples.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

from engine.errors import ConfigError, UserError

TINY = 1e-30
"""Guards a norm or a scale that is exactly zero (a vanished saliency); far below any
value a real saliency produces, so it never changes a result that is defined."""

ANCHORS = ("stacked", "mean")
POSITIVES = ("mean", "sum", "joint")
DENOMINATORS = ("negatives", "with_positive")


Saliencies = Union[Tensor, Sequence[Tensor]]


def flatten_saliencies(grads: list[Tensor]) -> list[Tensor]:
    """The T saliencies as [B, C, N] views of T tensors shaped like Z ([B, C, *spatial] or
    [B, C]); no copy.

    On multi-input benchmarks the T tensors come from T different batches: the terms pair
    the b-th sample of every task's batch (see docs/repmtl.md), which needs the tasks'
    batches to have one shape."""
    shapes = {tuple(g.shape) for g in grads}
    if len(shapes) != 1:
        raise UserError(f"Rep-MTL compares the tasks' saliencies position by position (on a "
                         f"multi-input benchmark: sample b of every task's batch); the "
                         f"representations have different shapes {sorted(shapes)}")
    (shape,) = shapes
    if len(shape) < 2:
        raise UserError(f"Rep-MTL needs a representation of shape [B, C, ...]; got {list(shape)}")
    return [g.reshape(shape[0], shape[1], -1) for g in grads]


def _per_task(S: Saliencies) -> list[Tensor]:
    return list(S.unbind(0)) if isinstance(S, Tensor) else list(S)


CHUNK_ELEMENTS = 1 << 16
"""Consecutive tasks whose saliencies hold at most this many elements together (256 KB in
float32) are stacked and processed by one batched operation; a larger task is processed
alone, without a copy. Many tasks on small features thus take few operations (a Python
loop over 64 tasks tripled Rep-MTL's step on synthetic), dense features no extra memory."""


def _chunks(S: list[Tensor]) -> list[Tensor]:
    """S as [k, B, C, N] stacks of consecutive tasks (see CHUNK_ELEMENTS)."""
    chunks, group, size = [], [], 0
    for s in S:
        if group and size + s.numel() > CHUNK_ELEMENTS:
            chunks.append(group)
            group, size = [], 0
        group.append(s)
        size += s.numel()
    chunks.append(group)
    return [g[0].unsqueeze(0) if len(g) == 1 else torch.stack(g) for g in chunks]


def channel_means(S: Saliencies) -> Tensor:
    """[T, B, N]: Ŝ_t, the signed channel mean of every task's saliency at every (sample,
    position) (Eq. 4)."""
    return torch.cat([c.mean(dim=2) for c in _chunks(_per_task(S))])


def task_distribution(S: Saliencies, eps: float) -> Tensor:
    """[T, B, N]: P_t, the distribution over tasks at every (sample, position) (Eq. 5).

    P_t = |Ŝ_t| / (Σ_k |Ŝ_k| + ε·s̄), an L1 normalisation over tasks of the absolute
    channel means. s̄, the batch's mean |Ŝ| (detached), makes ε dimensionless: saliencies
    of batch-mean losses scale with 1/B and with the network, and an absolute ε would be
    large for some models and lost in others."""
    mag = channel_means(S).abs()                                               # [T, B, N]
    # Floor: ε·s̄ stays a normal float when every saliency is 0; NaN stays NaN.
    scale = mag.detach().mean().clamp_min(torch.finfo(mag.dtype).tiny / eps)
    return mag / (mag.sum(dim=0) + eps * scale)


def distribution_entropy(p: Tensor, eps: float) -> Tensor:
    """[B, N]: H = -Σ_t P_t log(P_t + ε) of a [T, B, N] distribution over tasks."""
    return -(p * torch.log(p + eps)).sum(dim=0)


def task_entropy(S: Saliencies, eps: float) -> Tensor:
    """[B, N]: the entropy over tasks at every (sample, position) (Eqs. 4-5): H of
    ``task_distribution``."""
    return distribution_entropy(task_distribution(S, eps), eps)


def tsr_loss(S: Saliencies, eps: float) -> Tensor:
    """L_tsr (Eq. 6): the mean over all B·N positions of the entropy over tasks."""
    return task_entropy(S, eps).mean()


def anchors(S: Saliencies, anchor: str, chunks: list[Tensor] | None = None) -> Tensor:
    """[B, C, K]: each sample's anchor A_b, the spatial means of its saliencies, one
    column per task (``stacked``, the paper's figure; K = T) or averaged over the tasks
    (``mean``; K = 1). ``chunks``: S already as _chunks(S)."""
    chunks = _chunks(_per_task(S)) if chunks is None else chunks
    a = torch.cat([c.mean(dim=3) for c in chunks]).permute(1, 2, 0)   # [B, C, T]
    return a.mean(dim=2, keepdim=True) if anchor == "mean" else a


class _GramSquaredNorm(torch.autograd.Function):
    """‖X Xᵀ‖_F² of every [C, N] matrix in a batch [..., C, N], with the Gram formed in
    the smaller of C and N (‖X Xᵀ‖_F = ‖Xᵀ X‖_F).

    Autograd through ``(X @ Xᵀ).square().sum()`` takes two more batched products in the
    backward pass (one per factor); the gradient is 4·G·X (or 4·X·G) with G the Gram
    already formed, one product. On the paper's NYUv2 model (C = 2048, N = 1728) these
    products are the largest cost of CSA."""

    @staticmethod
    def forward(ctx, X: Tensor, scale: Tensor) -> Tensor:
        channels_first = X.shape[-2] <= X.shape[-1]
        Xs = X * scale  # a temporary: only X itself (alive anyway) is kept for backward
        Xt = Xs.transpose(-1, -2)
        gram = Xs @ Xt if channels_first else Xt @ Xs
        ctx.save_for_backward(X, gram, scale)
        ctx.channels_first = channels_first
        return gram.square().sum(dim=(-2, -1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        # f = ‖G‖², G = (sX)(sX)ᵀ (or (sX)ᵀ(sX)): ∂f/∂X = 4 s G (sX) (or 4 s (sX) G). The
        # scale enters once per factor, so s² never overflows when S vanishes (s = 1/TINY).
        X, gram, scale = ctx.saved_tensors
        Xs = X * scale
        product = gram @ Xs if ctx.channels_first else Xs @ gram
        return product * (4 * scale * grad)[..., None, None], None


def gram_norm(X: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """‖(sX)(sX)ᵀ‖_F for every [C, N] matrix X in the batch [..., C, N], s = ``scale`` (a
    constant, not differentiated; see _GramSquaredNorm)."""
    scale = torch.as_tensor(scale, dtype=X.dtype, device=X.device)
    return _GramSquaredNorm.apply(X, scale).clamp_min(TINY).sqrt()


def anchor_cross(A: Tensor) -> Tensor:
    """[B, B]: ⟨A_b A_bᵀ, A_k A_kᵀ⟩_F = ‖A_bᵀ A_k‖_F² for every pair of the anchors [B, C, K],
    by whichever exact route is cheaper: all K×K blocks of one [B·K, B·K] product
    (B²K²C multiply-adds, the choice for few tasks and wide features), or the C×C anchor
    affinities themselves (B·K·C² + B²·C², linear in K: the choice when C(K + B) < B·K²,
    e.g. many tasks on narrow features)."""
    B, C, K = A.shape
    if C * (K + B) < B * K * K:
        affinity = (A @ A.transpose(1, 2)).reshape(B, C * C)               # [B, C²]
        return affinity @ affinity.T
    flat = A.transpose(1, 2).reshape(B * K, C)
    return (flat @ flat.T).reshape(B, K, B, K).square().sum(dim=(1, 3))


def _anchor_inner(At: Tensor, chunk: Tensor, scale: Tensor) -> Tensor:
    """[k, B]: ‖s·A_bᵀ S_t[b]‖_F² for the k tasks of ``chunk`` [k, B, C, N], as one [B]-batched
    product (a copy of the chunk into [B, C, k·N]; a view for one task). Broadcasting A over
    the tasks instead would expand it k-fold."""
    k, B, C, N = chunk.shape
    columns = chunk.permute(1, 2, 0, 3).reshape(B, C, k * N)
    products = (At @ columns * scale).reshape(B, At.shape[1], k, N)
    return products.square().sum(dim=(1, 3)).T


def csa_similarities(S: Saliencies, anchor: str) -> tuple[Tensor, Tensor]:
    """Cosine similarities of the flattened affinity maps (Eqs. 7-8).

    Returns ``pos`` [B, T] = sim(z_b^a, z_b^t) and ``neg`` [B, B] = sim(z_b^a, z_k^a)."""
    chunks = _chunks(_per_task(S))
    # Cosines of Gram matrices do not change when every saliency is scaled by one
    # constant; scaling by 1/max keeps the 4th powers below far from underflow. The scale
    # is applied to the small factors, never to a copy of S.
    scale = 1 / torch.stack([c.detach().abs().amax() for c in chunks]).amax().clamp_min(TINY)
    A = anchors(S, anchor, chunks) * scale                        # [B, C, K]
    cross = anchor_cross(A)                                                # [B, B]
    a_norm = cross.diagonal().clamp_min(TINY).sqrt()                       # ‖A_b A_bᵀ‖_F
    neg = cross / (a_norm[:, None] * a_norm[None, :])
    # A chunk of tasks at a time (bounding the temporaries): ‖A_bᵀ S_t[b]‖_F² [T, B] and
    # the norms of the task Gram matrices.
    At = A.transpose(1, 2)
    inner = torch.cat([_anchor_inner(At, c, scale) for c in chunks])
    norms = torch.cat([gram_norm(c, scale) for c in chunks])
    pos = inner / (a_norm[None, :] * norms)
    return pos.T, neg


def csa_loss(S: Saliencies, tau: float, anchor: str = "stacked", positives: str = "mean",
             denominator: str = "negatives") -> Tensor:
    """L_csa (Eq. 9), an InfoNCE over the samples of the batch.

    For sample b and task t: ℓ_bt = -log[exp(pos_bt/τ) / D_b], with D_b the sum of
    exp(neg_bk/τ) over the other samples k ≠ b (``negatives``, as printed) or that plus
    the positive's own term (``with_positive``, the usual InfoNCE). The T positives of a
    sample combine as the ``mean`` or the ``sum`` of the ℓ_bt, or ``joint``ly, with all T
    positives in one numerator (-log[Σ_t exp(pos_bt/τ) / D_b]). Averaged over b."""
    S = _per_task(S)
    B = S[0].shape[0]
    if B < 2:
        raise ConfigError(f"Rep-MTL's CSA contrasts each sample with the other samples of its "
                          f"batch, so it needs a training batch of at least 2 samples; got "
                          f"{B} (train.batch_size)")
    pos, neg = csa_similarities(S, anchor)
    pos, neg = pos / tau, neg / tau
    self_pair = torch.eye(B, dtype=torch.bool, device=pos.device)
    neg_lse = torch.logsumexp(neg.masked_fill(self_pair, -math.inf), dim=1)     # [B]
    if positives == "joint":
        pos_lse = torch.logsumexp(pos, dim=1)
        denom = neg_lse if denominator == "negatives" else torch.logaddexp(pos_lse, neg_lse)
        return (denom - pos_lse).mean()
    denom = neg_lse[:, None] if denominator == "negatives" else torch.logaddexp(pos, neg_lse[:, None])
    per_positive = denom - pos                                                  # [B, T]
    per_sample = per_positive.mean(dim=1) if positives == "mean" else per_positive.sum(dim=1)
    return per_sample.mean()
