"""The min-norm point of the convex hull of the task gradients, from their Gramian.

Solves  min_w ||Σ_t w_t g_t||² = wᵀGw  subject to  w ≥ 0, Σ_t w_t = 1  (Sener & Koltun,
"Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, Sec. 3.2):

- two points: the analytic solution of min_γ ||γ a + (1-γ) b||² (their Algorithm 1);
- more: Frank-Wolfe with exact line search (their Algorithm 2), started, as the authors'
  code does, from the best two-task solution over all pairs, with away steps added
  (Guélat & Marcotte 1986; Lacoste-Julien & Jaggi 2015). Deviation: plain Frank-Wolfe
  converges only as O(1/k) when the optimum lies inside a face of the simplex (in a test on
  random 3-8 task Gramians, one solve in seven missed a 1e-5 gap after 250 iterations);
  away steps converge linearly to the same point, so the authors' 250-iteration budget
  suffices (at most ~110 iterations on the same problems).

Convergence is judged by the Frank-Wolfe duality gap  wᵀGw - min_t (Gw)_t, which bounds the
distance of the objective to its optimum, relative to the largest squared gradient norm;
the authors' code stops when the weights move by less than 1e-5 (L1), which is no
certificate of optimality. Everything works on the small T×T Gramian (float64, host).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class MinNormResult:
    weights: Tensor
    """[T] weights on the simplex."""
    converged: bool
    iterations: int
    gap: float
    """Final Frank-Wolfe duality gap, relative to max_t ||g_t||² (0 for T <= 2)."""


def min_norm_two(aa: float, ab: float, bb: float) -> float:
    """γ in [0, 1] minimising ||γ a + (1-γ) b||², given ⟨a,a⟩, ⟨a,b⟩, ⟨b,b⟩."""
    denom = aa + bb - 2.0 * ab
    if denom <= 0.0:  # a == b: every γ gives the same point
        return 1.0
    return min(max((bb - ab) / denom, 0.0), 1.0)


def _pair_cost(aa: float, ab: float, bb: float, gamma: float) -> float:
    return gamma * gamma * aa + 2.0 * gamma * (1.0 - gamma) * ab + (1.0 - gamma) ** 2 * bb


def min_norm_element(gramian: Tensor, max_iter: int = 250, tol: float = 1e-5) -> MinNormResult:
    """Weights of the min-norm point of conv{g_t}, given G = [⟨g_i, g_j⟩] (any device/dtype)."""
    G = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    w, converged, iterations, gap = _solve(G, max_iter, tol)
    return MinNormResult(torch.from_numpy(w), converged, iterations, gap)


def _solve(G: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, bool, int, float]:
    T = G.shape[0]
    if T == 1:
        return np.ones(1), True, 0, 0.0
    best = None
    for i in range(T):
        for j in range(i + 1, T):
            aa, ab, bb = float(G[i, i]), float(G[i, j]), float(G[j, j])
            gamma = min_norm_two(aa, ab, bb)
            cost = _pair_cost(aa, ab, bb, gamma)
            if best is None or cost < best[0]:
                best = (cost, i, j, gamma)
    _, i, j, gamma = best
    w = np.zeros(T)
    w[i], w[j] = gamma, 1.0 - gamma
    if T == 2:
        return w, True, 0, 0.0
    scale = float(G.diagonal().max())
    if scale <= 0.0:  # every gradient is zero: every point of the simplex is optimal
        return w, True, 0, 0.0
    gap = float("inf")
    for it in range(max_iter + 1):
        Gw = G @ w
        obj = float(w @ Gw)
        t = int(np.argmin(Gw))
        gap = (obj - float(Gw[t])) / scale
        if gap <= tol:
            return w, True, it, gap
        if it == max_iter:
            break
        a = int(np.argmax(np.where(w > 0, Gw, -np.inf)))
        if obj - float(Gw[t]) >= float(Gw[a]) - obj or w[a] >= 1.0:
            # Frank-Wolfe step towards the vertex g_t, exact line search (the paper's step)
            gamma = min_norm_two(obj, float(Gw[t]), float(G[t, t]))
            w = gamma * w
            w[t] += 1.0 - gamma
        else:
            # away step: move weight off the worst active vertex g_a, which the paper's
            # plain Frank-Wolfe cannot do (it then converges only as O(1/k))
            d = w.copy()
            d[a] -= 1.0
            curv = float(d @ G @ d)
            slope = float(d @ Gw)
            eta_max = float(w[a] / (1.0 - w[a]))
            eta = eta_max if curv <= 0.0 else min(max(-slope / curv, 0.0), eta_max)
            w = w + eta * d
            if eta == eta_max:
                w[a] = 0.0  # exactly: the vertex leaves the active set
            w = np.clip(w, 0.0, None)
            w = w / w.sum()
    return w, False, max_iter, gap
