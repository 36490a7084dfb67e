"""Domains of scikit-learn's bundled 8×8 digits for the digits_domains benchmark: the same
kind of images seen through clearly different, deterministic renderings (an Office-31 /
Office-Home analogue without a download).

Every domain places the digit (values in [0, 1]) on a 12×12 canvas with a random shift of
up to one pixel, then renders it as 3 channels:

- ``ink``       grey digit on black (the original look)
- ``negative``  inverted (dark digit on white) with Gaussian pixel noise (std 0.2)
- ``tilted``    rotated by 20°–40° either way, thickened (2×2 grey dilation) and blurred
- ``colour``    a random foreground colour on a random background colour of opposite tone
"""
from __future__ import annotations

import numpy as np

DOMAINS = ("ink", "negative", "tilted", "colour")
CANVAS = 12


def place(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, 8, 8] -> [N, 12, 12]: each digit centred, then shifted by −1..1 pixel per axis."""
    n = len(images)
    out = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    shifts = rng.integers(-1, 2, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
        out[i, 2 + dy:10 + dy, 2 + dx:10 + dx] = images[i]
    return out


def grey(canvas: np.ndarray) -> np.ndarray:
    return np.repeat(canvas[:, None], 3, axis=1)


def render(domain: str, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Digits [N, 8, 8] in [0, 1] -> domain images [N, 3, 12, 12] in [0, 1] (float32)."""
    canvas = place(images, rng)
    if domain == "ink":
        out = grey(canvas)
    elif domain == "negative":
        out = grey(1.0 - canvas) + rng.normal(0.0, 0.2, size=(len(canvas), 3, CANVAS, CANVAS))
    elif domain == "tilted":
        from scipy import ndimage  # imported when used: `list` stays light

        angles = rng.uniform(20.0, 40.0, size=len(canvas)) * rng.choice([-1.0, 1.0], size=len(canvas))
        turned = np.stack([ndimage.rotate(c, a, reshape=False, order=1, mode="constant")
                           for c, a in zip(canvas, angles)])
        bold = ndimage.grey_dilation(turned, size=(1, 2, 2))
        out = grey(ndimage.gaussian_filter(bold, sigma=(0, 0.5, 0.5)))
    elif domain == "colour":
        background = rng.uniform(0.0, 1.0, size=(len(canvas), 3, 1, 1))
        # Opposite tone keeps the digit visible whatever the background.
        foreground = np.clip(1.0 - background + rng.normal(0.0, 0.15, size=background.shape), 0, 1)
        alpha = canvas[:, None]
        out = background * (1.0 - alpha) + foreground * alpha
    else:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)
