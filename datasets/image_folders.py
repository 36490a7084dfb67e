"""Image-folder classification data of the domain-shift benchmarks (Office-31, Office-Home).

Layout: ``ROOT/<domain>/[<sub>/]<class>/<image>`` (Office-31: ``amazon/images/back_pack/
frame_0001.jpg``; Office-Home: ``Art/Alarm_Clock/00001.jpg``). Splits come either from
LibMTL's list files ``<domain>_{train,val,test}.txt`` (one ``relative/path.jpg <label>`` a
line, paths relative to ROOT) or from ``stratified_split``: a deterministic 60/20/20 split
of every class of every domain. Label ids follow the reference lists' order, shipped as data
in ``datasets/office_classes/<dataset>.txt`` (not alphabetical).

Images are decoded when a batch is built, as LibMTL does: RGB, resized to size×size
(bilinear, no crop; PIL's resize, as torchvision's Resize applies it to PIL images), scaled
to [0, 1] and normalised with the ImageNet mean/std; no augmentation. A file that cannot be
decoded is reported (as a value, not an exception, so that DataLoader workers hand it back
intact) and the batch is refused with a DataError naming it.
"""
from __future__ import annotations

import hashlib
import math
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch import Tensor

from engine.errors import DataError

CLASS_DIR = Path(__file__).parent / "office_classes"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Entry:
    """One image: its path relative to the data root (POSIX) and its class id."""

    path: str
    label: int


def read_class_names(dataset: str) -> tuple[str, ...]:
    """Class folder names in label-id order (line k = id k; ``#`` lines are comments)."""
    lines = (CLASS_DIR / f"{dataset}.txt").read_text().splitlines()
    return tuple(s.strip() for s in lines if s.strip() and not s.startswith("#"))


def safe_relative(text: str) -> str | None:
    """``text`` as a normalised relative POSIX path, or None when it is absolute or climbs
    out of the root (``../``)."""
    norm = posixpath.normpath(text.replace("\\", "/"))
    if norm.startswith("/") or norm in (".", "..") or norm.startswith("../"):
        return None
    return norm


def parse_list_file(list_path: Path, root: Path, classes: Sequence[str]) -> list[Entry]:
    """The entries of one LibMTL list file, each line checked: two fields, an integer label
    in range, a path inside the data root that exists, and (when the image's folder is a
    known class) a label that agrees with the folder's class."""
    if not list_path.is_file():
        raise DataError(f"missing split list {list_path} (expected lines "
                        f"'relative/path.jpg <label>')")
    try:
        text = list_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{list_path}: cannot be read as text ({exc})") from None
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{list_path}:{lineno}"
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise DataError(f"{where}: malformed line {line!r}; expected 'relative/path.jpg <label>'")
        raw_path, raw_label = fields
        try:
            label = int(raw_label)
        except ValueError:
            raise DataError(f"{where}: label {raw_label!r} is not an integer; expected "
                            f"'relative/path.jpg <label>'") from None
        if not 0 <= label < len(classes):
            raise DataError(f"{where}: label {label} out of range; expected 0…{len(classes) - 1}")
        rel = safe_relative(raw_path.strip())
        if rel is None:
            raise DataError(f"{where}: path {raw_path!r} points outside the data root {root}; "
                            f"expected a path relative to it, without '..'")
        if not (root / rel).is_file():
            raise DataError(f"{where}: image {root / rel} does not exist")
        folder = PurePosixPath(rel).parent.name
        if folder in classes and classes.index(folder) != label:
            raise DataError(f"{where}: label {label} ({classes[label]}) but the image is in "
                            f"folder {folder!r}, class {classes.index(folder)} in the reference "
                            f"order (datasets/office_classes)")
        entries.append(Entry(rel, label))
    if not entries:
        raise DataError(f"{list_path}: the split list is empty")
    return entries


def scan_class_folders(root: Path, domain: str, sub: str, classes: Sequence[str]) -> list[Entry]:
    """Every image under ``ROOT/<domain>/<sub>/<class>/`` (any depth below the class
    folder), labelled by its class folder, sorted by path. Hidden files and files that are
    not images (by suffix) are skipped; an unknown class folder is an error."""
    base = root / domain / sub if sub else root / domain
    if not base.is_dir():
        layout = f"ROOT/{domain}/{sub + '/' if sub else ''}<class>/<image>"
        raise DataError(f"missing folder {base}/ (expected {layout})")
    entries = []
    for folder in sorted(p for p in base.iterdir() if not p.name.startswith(".")):
        if not folder.is_dir():
            continue
        if folder.name not in classes:
            raise DataError(f"{folder}: unknown class folder {folder.name!r}; expected one of the "
                            f"{len(classes)} classes of datasets/office_classes")
        label = classes.index(folder.name)
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                    rel = (Path(dirpath) / name).relative_to(root).as_posix()
                    entries.append(Entry(rel, label))
    if not entries:
        raise DataError(f"{base}: no images found (expected {base}/<class>/<image>.jpg)")
    return sorted(entries, key=lambda e: e.path)


def split_counts(n: int, fractions: Sequence[float] = SPLIT_FRACTIONS) -> tuple[int, int, int]:
    """(train, val, test) sizes of one class of n images: val and test rounded half up,
    train the rest (so every class with an image trains on at least one)."""
    n_val = math.floor(fractions[1] * n + 0.5)
    n_test = math.floor(fractions[2] * n + 0.5)
    return n - n_val - n_test, n_val, n_test


def stratified_split(entries: Sequence[Entry], seed: int | Sequence[int]) -> dict[str, list[Entry]]:
    """A deterministic stratified 60/20/20 split: each class's images (sorted by path) are
    permuted with ``numpy.random.default_rng(seed)`` and cut into train/val/test."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Entry]] = {"train": [], "val": [], "test": []}
    for label in sorted({e.label for e in entries}):
        members = sorted((e for e in entries if e.label == label), key=lambda e: e.path)
        order = rng.permutation(len(members))
        n_train, n_val, _ = split_counts(len(members))
        cuts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
                "test": order[n_train + n_val:]}
        for split, idx in cuts.items():
            out[split].extend(members[i] for i in idx)
    return {split: sorted(items, key=lambda e: e.path) for split, items in out.items()}


def list_lines(entries: Sequence[Entry]) -> list[str]:
    """Entries in LibMTL's list-file format."""
    return [f"{e.path} {e.label}" for e in entries]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_headers(root: Path, entries: Sequence[Entry], workers: int) -> None:
    """Open every image's header (cheap; no decoding): refuses missing, empty or non-image
    files before training. Truncated pixel data is found when the image is decoded."""
    from PIL import Image, UnidentifiedImageError

    def probe(entry: Entry) -> str | None:
        path = root / entry.path
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018  (reading the header is the check)
        except Image.DecompressionBombError as exc:
            return f"{path}: {_bomb(exc)}"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return f"{path}: not a readable image ({exc})"
        return None

    with ThreadPoolExecutor(max(workers, 1)) as pool:
        for problem in pool.map(probe, entries):
            if problem is not None:
                raise DataError(problem)


def _bomb(exc: Exception) -> str:
    """The reason for an image that PIL's decompression-bomb guard refuses."""
    return (f"too large to decode safely ({exc}); an image of this size is not expected in "
            f"the data set: replace it, or raise PIL.Image.MAX_IMAGE_PIXELS in a plugin if it "
            f"is genuine")


def load_image(path: Path, size: int) -> Tensor:
    """[3, size, size] float32: RGB, resized (bilinear), in [0, 1], ImageNet-normalised."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


@dataclass(frozen=True)
class Item:
    """What a worker returns for one image: its task, the image (None if it failed to
    decode, with the reason in ``error``) and its label."""

    task: str
    image: Tensor | None
    label: int
    error: str | None = None


class ImageItems(torch.utils.data.Dataset):
    """A flat list of (task, entry) images, decoded on access."""

    def __init__(self, root: Path, items: Sequence[tuple[str, Entry]], size: int):
        self.root = root
        self.items = list(items)
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        task, entry = self.items[i]
        path = self.root / entry.path
        from PIL import Image

        try:
            return Item(task, load_image(path, self.size), entry.label)
        except Image.DecompressionBombError as exc:
            return Item(task, None, entry.label, f"{path}: {_bomb(exc)}")
        except (OSError, ValueError, SyntaxError) as exc:
            return Item(task, None, entry.label, f"{path}: cannot be decoded (truncated or "
                                                 f"corrupt image: {exc})")


def collate_by_task(items: list[Item]) -> dict:
    """Group a step's images by task: {"inputs": {task: [B,3,S,S]}, "targets": {task: [B]},
    "errors": [...]}, tasks in order of first appearance."""
    errors = [it.error for it in items if it.error is not None]
    if errors:
        return {"inputs": {}, "targets": {}, "errors": errors}
    tasks = list(dict.fromkeys(it.task for it in items))
    inputs = {t: torch.stack([it.image for it in items if it.task == t]) for t in tasks}
    targets = {t: torch.tensor([it.label for it in items if it.task == t], dtype=torch.long)
               for t in tasks}
    return {"inputs": inputs, "targets": targets, "errors": []}
