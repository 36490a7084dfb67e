"""The synthetic regression family of GradNorm (Chen, Badrinarayanan, Lee, Rabinovich,
"GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks",
ICML 2018, §4): T tasks with targets

    f_i(x) = σ_i · tanh((B + ε_i) x),   x ∈ ℝ^d_in, f_i(x) ∈ ℝ^d_out,

B with i.i.d. entries of std ``b_std`` (shared by the tasks), ε_i with i.i.d. entries of std
``eps_std`` (one per task). The scales σ_i make the tasks' losses differ by orders of
magnitude while their structure is alike.

The paper does not fix the input distribution; both public choices are offered:
``uniform_normalised`` (x ~ U(−1, 1)^d_in scaled to unit length) and ``normal``
(x ~ N(0, input_std²) per entry).
"""
from __future__ import annotations

import numpy as np

INPUT_DISTRIBUTIONS = ("uniform_normalised", "normal")


def make_maps(num_tasks: int, d_in: int, d_out: int, b_std: float, eps_std: float,
              rng: np.random.Generator) -> np.ndarray:
    """The task matrices B + ε_i as one array [T, d_out, d_in]."""
    shared = rng.normal(0.0, b_std, size=(d_out, d_in))
    return shared[None] + rng.normal(0.0, eps_std, size=(num_tasks, d_out, d_in))


def sample_inputs(count: int, d_in: int, distribution: str, input_std: float,
                  rng: np.random.Generator) -> np.ndarray:
    if distribution == "uniform_normalised":
        x = rng.uniform(-1.0, 1.0, size=(count, d_in))
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    if distribution == "normal":
        return rng.normal(0.0, input_std, size=(count, d_in))
    raise ValueError(f"input distribution {distribution!r}; expected one of {INPUT_DISTRIBUTIONS}")


def targets(x: np.ndarray, maps: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """[T, N, d_out]: σ_i · tanh((B + ε_i) x) for every task and input."""
    return sigmas[:, None, None] * np.tanh(np.einsum("tod,nd->tno", maps, x))
