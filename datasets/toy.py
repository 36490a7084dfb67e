"""The two-objective toy problem of CAGrad (Liu et al., NeurIPS 2021), also used by
Nash-MTL (Navon et al., ICML 2022), FAMO (Liu et al., NeurIPS 2023) and Aligned-MTL
(Senushkin et al., CVPR 2023): two non-convex losses of a point x = (x1, x2) ∈ ℝ².

    g1 = log(max(|0.5(−x1 − 7) − tanh(−x2)|, ε)) + 6
    g2 = log(max(|0.5(−x1 + 3) + tanh(−x2) + 2|, ε)) + 6
    h1 = ((−x1 + 7)² + 0.1(−x2 − 8)²)/10 − 20
    h2 = ((−x1 − 7)² + 0.1(−x2 − 8)²)/10 − 20
    c1 = max(tanh(x2/2), 0),  c2 = max(tanh(−x2/2), 0)
    L1 = c1·g1 + c2·h1,       L2 = c1·g2 + c2·h2,       ε = 5e-6

The Pareto set is close to the segment x1 ∈ [−7, 7], x2 = −8.3552; each loss's minimum is
about −19.989.
"""
from __future__ import annotations

import torch
from torch import Tensor

EPS = 5e-6
PARETO_X2 = -8.3552
PARETO_X1 = 7.0

# Published starting points.
STARTS = {
    "cagrad": ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)),
    "nashmtl": ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)),
}
STARTS["famo"] = STARTS["nashmtl"]


def toy_losses(x: Tensor) -> Tensor:
    """[..., 2] points -> [..., 2] losses (L1, L2)."""
    x1, x2 = x[..., 0], x[..., 1]
    eps = torch.tensor(EPS, dtype=x.dtype, device=x.device)
    g1 = torch.log(torch.maximum((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), eps)) + 6
    g2 = torch.log(torch.maximum((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), eps)) + 6
    h1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    h2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.tanh(x2 / 2).clamp_min(0)
    c2 = torch.tanh(-x2 / 2).clamp_min(0)
    return torch.stack([c1 * g1 + c2 * h1, c1 * g2 + c2 * h2], dim=-1)


def pareto_distance(x: Tensor) -> Tensor:
    """Euclidean distance of [..., 2] points to the segment x1 ∈ [−7, 7], x2 = −8.3552
    (the approximate Pareto set)."""
    dx = (x[..., 0].abs() - PARETO_X1).clamp_min(0)
    dy = x[..., 1] - PARETO_X2
    return torch.sqrt(dx ** 2 + dy ** 2)


def grid(lo: float = -10.0, hi: float = 10.0, n: int = 201) -> tuple[Tensor, Tensor]:
    """Points of a square grid and their losses, for contour plots: ([n, n, 2], [n, n, 2])."""
    axis = torch.linspace(lo, hi, n, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)
    return points, toy_losses(points)


def pareto_front(n: int = 200) -> Tensor:
    """[n, 2] losses (L1, L2) along the Pareto set, for plots in loss space."""
    x1 = torch.linspace(-PARETO_X1, PARETO_X1, n, dtype=torch.float64)
    points = torch.stack([x1, torch.full_like(x1, PARETO_X2)], dim=-1)
    return toy_losses(points)

