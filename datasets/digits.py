"""scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download), and the
two-digit canvases of the digits_tasks benchmark (MultiMNIST's construction, scaled down).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1] as float32 [N, 8, 8] and labels as int64 [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_indices(n: int, fractions: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """A deterministic permutation of range(n) cut into train/val/test by ``fractions``."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}


@dataclass(frozen=True)
class PairCanvases:
    images: torch.Tensor  # [N, 1, S, S] in [0, 1]
    first: torch.Tensor   # label of the top-left digit
    second: torch.Tensor  # label of the bottom-right digit


def pair_canvases(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, count: int,
                  shift: int, rng: np.random.Generator) -> PairCanvases:
    """``count`` canvases of two digits drawn from ``pool``: one at the top-left, one shifted
    by ``shift`` pixels down and right, overlapping it; pixel-wise max where they overlap
    (as MultiMNIST does with a 36×36 canvas and a shift of 6 for 28×28 digits)."""
    size = images.shape[-1] + shift
    a = rng.choice(pool, size=count)
    b = rng.choice(pool, size=count)
    canvas = np.zeros((count, size, size), dtype=np.float32)
    canvas[:, :8, :8] = images[a]
    canvas[:, shift:shift + 8, shift:shift + 8] = np.maximum(
        canvas[:, shift:shift + 8, shift:shift + 8], images[b])
    return PairCanvases(torch.from_numpy(canvas).unsqueeze(1), torch.from_numpy(labels[a]),
                        torch.from_numpy(labels[b]))
