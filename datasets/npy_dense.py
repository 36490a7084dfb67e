"""Reader of the preprocessed dense-prediction layout of MTAN (Liu, Johns, Davison, CVPR
2019) and LibMTL (Lin & Zhang, JMLR 2023), used for NYUv2 and Cityscapes:

    ROOT/{train,val}/{image,label,depth,normal}/{i}.npy,   i = 0 … N−1 contiguous

one HWC array per file: image ×3 in [0, 1], label (H×W or H×W×1) with −1 = ignore, depth ×1
with 0 = invalid, normal ×3 unit vectors with the zero vector = invalid. Every file is read
once at start-up and checked (shape, dtype, finite values, label range); the arrays are held
in memory as NCHW tensors: image/depth/normal float32, label int16.

Optionally the arrays are resized at load (quick profiles: smaller inputs): bilinear with
antialiasing for the image, nearest for label, depth and normal (so ignore labels, invalid
depths and invalid normals stay exact).

The training augmentation of MTAN/LibMTL (``scale_crop_flip``): random scale-crop with the
scale drawn from {1.0, 1.2, 1.5} (a crop of (H/s, W/s) resized back to (H, W): bilinear with
align_corners=True for image and normal, nearest for label and depth, depth divided by s),
then a horizontal flip with probability 1/2 that negates the normal's x component.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.errors import DataError

KINDS = ("image", "label", "depth", "normal")
CHANNELS = {"image": 3, "label": 1, "depth": 1, "normal": 3}
SCALES = (1.0, 1.2, 1.5)
_INDEX_NAME = re.compile(r"^(0|[1-9][0-9]*)\.npy$")
# Unit vectors: a component beyond 1 (plus float slack) means the folder holds something else.
_NORMAL_BOUND = 1.0 + 1e-3


@dataclass
class DenseArrays:
    """One on-disk split in memory: kind -> tensor [N, C, H, W] (label: [N, H, W])."""

    tensors: dict[str, Tensor]
    folders: dict[str, Path]
    disk_size: tuple[int, int]

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.tensors["image"].shape[-2:])


def find_folder(split_dir: Path, names: Sequence[str]) -> Path:
    """The first of ``names`` that exists under ``split_dir``."""
    for name in names:
        if (split_dir / name).is_dir():
            return split_dir / name
    expected = " or ".join(f"{split_dir / n}/" for n in names)
    raise DataError(f"missing folder {expected} (expected ROOT/<split>/<kind>/<i>.npy)")


def count_indexed_files(folder: Path) -> int:
    """N for a folder holding exactly 0.npy … (N−1).npy; hidden files are ignored."""
    indices = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        match = _INDEX_NAME.match(path.name)
        if match is None or not path.is_file():
            raise DataError(f"{path}: unexpected entry; {folder} must hold only files "
                            f"0.npy, 1.npy, … (one array per item)")
        indices.append(int(match.group(1)))
    if not indices:
        raise DataError(f"{folder} holds no .npy files (expected 0.npy, 1.npy, …)")
    indices.sort()
    gaps = sorted(set(range(indices[-1] + 1)) - set(indices))
    if gaps:
        shown = ", ".join(f"{i}.npy" for i in gaps[:5]) + (" …" if len(gaps) > 5 else "")
        raise DataError(f"{folder}: indices are not contiguous from 0; missing {shown}")
    return len(indices)


def read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as a .npy array (truncated or not a .npy "
                        f"file: {exc})") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: expected one array, found an archive of several (.npz)")
    return array


def check_array(path: Path, array: np.ndarray, kind: str, num_classes: int) -> np.ndarray:
    """``array`` checked for ``kind`` and returned as HWC (label: HW), float32 or int16."""
    if array.ndim == 2 and CHANNELS[kind] == 1:
        array = array[:, :, None]
    channels = CHANNELS[kind]
    if array.ndim != 3 or array.shape[2] != channels:
        raise DataError(f"{path}: shape {array.shape}; expected a {kind} array of shape "
                        f"(H, W, {channels})" + (" or (H, W)" if channels == 1 else ""))
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.floating)
                                        or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{path}: dtype {array.dtype}; expected a real numeric {kind} array")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(f"{path}: the {kind} array contains NaN or infinite values")
    if kind == "label":
        return _check_label(path, array[:, :, 0], num_classes)
    if kind == "image" and array.max() > 2.0:
        raise DataError(f"{path}: image values up to {array.max():g}; expected values in "
                        f"[0, 1] (the preprocessed layout stores images scaled to [0, 1])")
    if kind == "depth" and array.min() < 0:
        raise DataError(f"{path}: negative depth {array.min():g}; expected depth >= 0 with "
                        f"0 = invalid (a -1 invalid marker comes from another preprocessing)")
    if kind == "normal" and np.abs(array).max() > _NORMAL_BOUND:
        raise DataError(f"{path}: normal component {np.abs(array).max():g}; expected unit "
                        f"vectors (components in [-1, 1]; the zero vector = invalid)")
    return array.astype(np.float32, copy=False)


def _check_label(path: Path, label: np.ndarray, num_classes: int) -> np.ndarray:
    if np.issubdtype(label.dtype, np.floating) and not (label == np.round(label)).all():
        raise DataError(f"{path}: non-integer label values; expected class ids")
    bad = (label != -1) & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = np.unique(label[bad])[:5]
        raise DataError(f"{path}: label values {', '.join(f'{v:g}' for v in values)} out of "
                        f"range; expected 0…{num_classes - 1} or -1 (ignore)")
    return label.astype(np.int16)


def _resize(array: np.ndarray, kind: str, size: tuple[int, int]) -> Tensor:
    """HWC (label: HW) numpy -> CHW (label: HW) tensor at ``size``."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if kind == "label":
        if tuple(t.shape) == size:
            return t
        return F.interpolate(t[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.int16)
    t = t.permute(2, 0, 1)
    if tuple(t.shape[-2:]) == size:
        return t
    if kind == "image":
        return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False,
                             antialias=True)[0]
    return F.interpolate(t[None], size=size, mode="nearest")[0]


def read_split(split_dir: Path, folders: dict[str, Sequence[str]], num_classes: int,
               size: tuple[int, int] | None, workers: int) -> DenseArrays:
    """Every item of ``split_dir`` (kind -> accepted folder names), checked, in memory.
    ``size`` None keeps the size on disk (which must be the same for every item)."""
    if not split_dir.is_dir():
        raise DataError(f"missing folder {split_dir}/ (expected ROOT/{{train,val}}/<kind>/<i>.npy)")
    found = {kind: find_folder(split_dir, names) for kind, names in folders.items()}
    counts = {kind: count_indexed_files(folder) for kind, folder in found.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{found[k]}: {n}" for k, n in counts.items())
        raise DataError(f"{split_dir}: the folders hold different numbers of items ({listing})")
    n = next(iter(counts.values()))

    def load(i: int) -> dict[str, np.ndarray]:
        return {kind: check_array(folder / f"{i}.npy", read_npy(folder / f"{i}.npy"), kind,
                                  num_classes) for kind, folder in found.items()}

    first = load(0)
    disk_size = tuple(first["image"].shape[:2])
    target = tuple(size) if size is not None else disk_size
    tensors = {kind: torch.empty((n, *target) if kind == "label" else (n, CHANNELS[kind], *target),
                                 dtype=torch.int16 if kind == "label" else torch.float32)
               for kind in found}

    def store(i: int, arrays: dict[str, np.ndarray]) -> None:
        for kind, array in arrays.items():
            if array.shape[:2] != disk_size:
                raise DataError(f"{found[kind] / f'{i}.npy'}: size {array.shape[:2]}; expected "
                                f"{disk_size} like {found['image'] / '0.npy'}")
            tensors[kind][i] = _resize(array, kind, target)

    store(0, first)
    pool = ThreadPoolExecutor(max(workers, 1))
    try:
        for i, arrays in enumerate(pool.map(load, range(1, n)), start=1):
            store(i, arrays)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return DenseArrays(tensors, found, disk_size)


def scale_crop_flip(batch: dict[str, Tensor], generator: torch.Generator,
                    scales: Sequence[float] = SCALES) -> dict[str, Tensor]:
    """MTAN/LibMTL's augmentation of one batch (see the module docstring), with every draw
    taken from ``generator`` (on the CPU). ``batch``: image/normal [B, 3, H, W], depth
    [B, 1, H, W], label [B, H, W]; any subset but the image may be absent."""
    image = batch["image"]
    b, _, height, width = image.shape
    choice = torch.randint(len(scales), (b,), generator=generator)
    offsets = torch.rand((b, 2), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    out = {k: v.clone() for k, v in batch.items()}
    for s in range(b):
        scale = scales[int(choice[s])]
        h, w = int(height / scale), int(width / scale)
        i = int(offsets[s, 0] * (height - h + 1))
        j = int(offsets[s, 1] * (width - w + 1))
        for kind, value in batch.items():
            crop = value[s:s + 1, ..., i:i + h, j:j + w]
            if kind in ("image", "normal"):
                crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=True)
            elif kind == "label":
                crop = F.interpolate(crop[:, None].float(), size=(height, width),
                                     mode="nearest")[:, 0].to(value.dtype)
            else:
                crop = F.interpolate(crop, size=(height, width), mode="nearest") / scale
            if flips[s]:
                crop = crop.flip(-1)
                if kind == "normal":
                    crop[:, 0] = -crop[:, 0]
            out[kind][s] = crop[0]
    return out
