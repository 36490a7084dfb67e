"""Shared machinery of the Office-31 and Office-Home benchmarks (domain shift).

Multi-input: one task per domain (task name = domain name), each with its own images, all
classifying the same classes; metric ``acc`` (%), loss cross-entropy. Splits from LibMTL's
list files (``data.split_dir``) or, when none are given, a deterministic stratified 60/20/20
split (datasets/image_folders.py) that is recorded with the run (``extra_record``).

Batches come from a DataLoader (``data.workers`` processes, pinned memory on CUDA). The
training order is drawn from the generator the trainer passes, in the main process: an
epoch has as many steps as the largest domain needs, smaller domains start a new shuffled
pass when theirs is used up (each pass drops its incomplete last batch), the protocol of
LibMTL's multi-input loaders and of MultiInputTensorBenchmark.

Model (benchmarks/_models.py): ResNet-18 → pool → Linear(512, 512) → BatchNorm → ReLU →
Dropout(0.5) shared, one Linear(512, classes) head per domain.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks._models import RESNETS, OfficeEncoder, check_train_batch, load_state, resolve_weights
from benchmarks.base import Batch, Benchmark, TaskSpec, num_batches
from benchmarks.metrics import ACCURACY, AccuracyMeter, cross_entropy
from datasets.checks import Departures
from datasets.image_folders import (
    IMAGE_SUFFIXES, Entry, ImageItems, check_headers, collate_by_task, file_digest, list_lines,
    parse_list_file, read_class_names, scan_class_folders, stratified_split,
)
from engine.errors import DataError, check_choice, check_range

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class OfficeConfig:
    """Data and model options shared by Office-31 and Office-Home."""

    split_dir: str = ""
    """Folder of LibMTL's list files <domain>_{train,val,test}.txt; "" = a stratified
    60/20/20 split generated from the class folders (recorded with the run)."""
    split_seed: int = 0
    """Seed of the generated split (fixed by the profile, independent of the run seed)."""
    image_size: int = 224
    backbone: str = "resnet18"
    weights: str = "imagenet"
    """none | imagenet (torchvision's local cache; never downloaded) | path to a .pth file."""
    strict: bool = False
    """Make departures from the official dataset (split counts) errors, not warnings."""
    workers: int = 4
    """DataLoader worker processes (0 = decode in the training process)."""

    def validate(self) -> None:
        check_range("data.split_seed", self.split_seed, 0)
        check_range("data.image_size", self.image_size, 32)
        check_choice("data.backbone", self.backbone, RESNETS)
        check_range("data.workers", self.workers, 0)


class OfficeBenchmark(Benchmark):
    """A multi-input image-folder benchmark: one classification task per domain."""

    setting = "domain shift"
    multi_input = True
    needs_data_root = True
    dataset: ClassVar[str] = ""            # datasets/office_classes/<dataset>.txt
    domains: ClassVar[tuple[str, ...]] = ()
    class_subdir: ClassVar[str] = ""       # between the domain and the class folders
    official_counts: ClassVar[dict[str, tuple[int, int, int]]] = {}

    def __init__(self, config: OfficeConfig, data_root: Path | None, device: torch.device):
        super().__init__(config, data_root, device)
        if data_root is None or not data_root.is_dir():
            raise DataError(f"{self.name}: data root {data_root} is not a folder; expected "
                            f"ROOT/<domain>/... for the domains {', '.join(self.domains)}")
        self.classes = read_class_names(self.dataset)
        self.tasks = tuple(TaskSpec(d, cross_entropy, (ACCURACY,), AccuracyMeter,
                                    f"classify the {d} images ({len(self.classes)} classes)")
                           for d in self.domains)
        weights = resolve_weights(config.weights, config.backbone)
        self.backbone_state = load_state(weights, config.backbone) if weights else None
        self.weights_file = str(weights) if weights else None
        self.departures = Departures(config.strict)
        self.splits = self._read_splits(data_root)
        check_headers(data_root, [e for d in self.splits.values() for s in d.values() for e in s],
                      config.workers)

    @classmethod
    def reads_data_file(cls, config: OfficeConfig, path: PurePosixPath) -> bool:
        # the images, wherever a list file may point inside the data root
        return path.suffix.lower() in IMAGE_SUFFIXES

    # ------------------------------------------------------------------ splits
    def _read_splits(self, root: Path) -> dict[str, dict[str, list[Entry]]]:
        """domain -> split -> entries."""
        splits: dict[str, dict[str, list[Entry]]] = {}
        if self.config.split_dir:
            list_dir = Path(self.config.split_dir).expanduser()
            if not list_dir.is_dir():
                raise DataError(f"data.split_dir={self.config.split_dir!r} is not a folder; "
                                f"expected a folder of <domain>_{{train,val,test}}.txt lists")
            for domain in self.domains:
                splits[domain] = {s: parse_list_file(list_dir / f"{domain}_{s}.txt", root,
                                                     self.classes) for s in SPLIT_NAMES}
                for s, official in zip(SPLIT_NAMES, self.official_counts[domain], strict=True):
                    self.departures.count(f"{list_dir / f'{domain}_{s}.txt'}",
                                          len(splits[domain][s]), official)
                self._check_disjoint(domain, splits[domain], list_dir)
            return splits
        for i, domain in enumerate(self.domains):
            entries = scan_class_folders(root, domain, self.class_subdir, self.classes)
            self.departures.count(f"{root / domain}", len(entries), sum(self.official_counts[domain]))
            splits[domain] = stratified_split(entries, seed=[self.config.split_seed, i])
            empty = [s for s in SPLIT_NAMES if not splits[domain][s]]
            if empty:
                raise DataError(f"{root / domain}: the generated split leaves no {' or '.join(empty)} "
                                f"images ({len(entries)} images; a class needs at least 3 to "
                                f"reach every split)")
        return splits

    @staticmethod
    def _check_disjoint(domain: str, splits: dict[str, list[Entry]], list_dir: Path) -> None:
        seen: dict[str, str] = {}
        for split, entries in splits.items():
            for e in entries:
                if seen.get(e.path, split) != split:
                    raise DataError(f"{list_dir}: {e.path} is in both the {seen[e.path]} and the "
                                    f"{split} list of {domain}; the splits must not overlap")
                seen[e.path] = split

    def extra_record(self) -> dict:
        record = {"classes": f"datasets/office_classes/{self.dataset}.txt (the reference "
                             f"lists' order)",
                  "weights_file": self.weights_file,
                  "counts": {d: {s: len(v) for s, v in sp.items()} for d, sp in self.splits.items()},
                  "data_departures": list(self.departures.messages)}
        if self.config.split_dir:
            list_dir = Path(self.config.split_dir).expanduser()
            record["split_source"] = f"list files in {list_dir}"
            record["split_files_sha256"] = {
                f"{d}_{s}.txt": file_digest(list_dir / f"{d}_{s}.txt")
                for d in self.domains for s in SPLIT_NAMES}
        else:
            record["split_source"] = (f"generated: stratified 60/20/20 per class, "
                                      f"split_seed={self.config.split_seed}")
            record["split"] = {d: {s: list_lines(v) for s, v in sp.items()}
                               for d, sp in self.splits.items()}
        return record

    # ------------------------------------------------------------------ batches
    def split_size(self, split: str) -> dict[str, int]:
        return {d: len(self.splits[d][split]) for d in self.domains}

    def batches_per_epoch(self, split: str, batch_size: int) -> int:
        return max(num_batches(n, batch_size, drop_last=split == "train")
                   for n in self.split_size(split).values())

    def _step_indices(self, split: str, batch_size: int,
                      generator: torch.Generator | None) -> list[list[int]]:
        """Per step, the positions in the split's flat item list (domains in task order)."""
        sizes = self.split_size(split)
        offsets, total = {}, 0
        for d in self.domains:
            offsets[d], total = total, total + sizes[d]
        steps = self.batches_per_epoch(split, batch_size)
        if generator is not None:
            check_train_batch(batch_size, {f"the {d} training split": sizes[d] for d in self.domains})
        chunks: dict[str, list[list[int]]] = {}
        for d in self.domains:
            n = sizes[d]
            if generator is None:
                chunks[d] = [list(range(k, min(k + batch_size, n))) for k in range(0, n, batch_size)]
                continue
            chunks[d] = []
            while len(chunks[d]) < steps:
                order = torch.randperm(n, generator=generator).tolist()
                chunks[d] += [order[k:k + batch_size] for k in range(0, n - batch_size + 1, batch_size)]
        return [[offsets[d] + i for d in self.domains if s < len(chunks[d]) for i in chunks[d][s]]
                for s in range(steps)]

    def batches(self, split: str, batch_size: int,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        items = [(d, e) for d in self.domains for e in self.splits[d][split]]
        pin = self.device.type == "cuda"
        loader = DataLoader(ImageItems(self.data_root, items, self.config.image_size),
                            batch_sampler=self._step_indices(split, batch_size, generator),
                            num_workers=self.config.workers, collate_fn=collate_by_task,
                            pin_memory=pin)
        for step in loader:
            if step["errors"]:
                raise DataError(step["errors"][0])
            yield Batch(step["inputs"], step["targets"]).to(self.device, non_blocking=pin)

    # ------------------------------------------------------------------ model
    def make_encoder(self) -> nn.Module:
        return OfficeEncoder(self.config.backbone, self.backbone_state)

    def make_head(self, task: TaskSpec) -> nn.Module:
        return nn.Linear(512, len(self.classes))
