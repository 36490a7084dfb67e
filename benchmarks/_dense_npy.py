"""Shared machinery of the NYUv2 and Cityscapes benchmarks (datasets/npy_dense.py layout).

Splits. The preprocessed data has a train and a val folder and no third split; the val
folder is the test split. Two protocols choose the validation split:

- ``holdout`` (default): a deterministic ``val_fraction`` of the train folder, drawn with
  ``split_seed``, is held out for validation and not trained on; its indices are recorded
  with the run.
- ``libmtl``: LibMTL's protocol, as behind the published tables: training on the whole
  train folder and validation = the test split, so any selection on val is a selection on
  test. The run records it (``extra_record``) so that analysis can say so.

Model: a dilated ResNet trunk (output stride 8) shared by the tasks and one ASPP head per
task (benchmarks/_models.py). Inputs are the images as stored, in [0, 1], without mean/std
normalisation, as MTAN and LibMTL feed them.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks._models import (
    RESNETS, ASPPHead, check_train_batch, load_state, resnet_trunk, resolve_weights, trunk_channels,
)
from benchmarks.base import Batch, Benchmark, TaskSpec, num_batches
from datasets.checks import Departures
from datasets.npy_dense import DenseArrays, read_split, scale_crop_flip
from engine.errors import ConfigError, DataError, check_choice, check_range

PROTOCOLS = ("holdout", "libmtl")
TASK_KIND = {"seg": "label", "depth": "depth", "normal": "normal"}


@dataclass
class DenseNpyConfig:
    """Data and model options shared by NYUv2 and Cityscapes."""

    protocol: str = "holdout"
    """holdout (val carved from the train folder) | libmtl (val = test, LibMTL's protocol)."""
    val_fraction: float = 0.1
    """holdout: the fraction of the train folder held out for validation."""
    split_seed: int = 0
    """holdout: seed of the held-out draw (fixed by the profile, independent of the run seed)."""
    height: int = 0
    """Input height; 0 = the size on disk. Another size resizes every array at load."""
    width: int = 0
    augment: bool = False
    """Random scale-crop {1.0, 1.2, 1.5} and horizontal flip on training batches (LibMTL's
    --aug; off in LibMTL's default)."""
    backbone: str = "resnet50"
    weights: str = "imagenet"
    """none | imagenet (torchvision's local cache; never downloaded) | path to a .pth file."""
    head_channels: int = 256
    aspp_rates: tuple[int, ...] = (12, 24, 36)
    strict: bool = False
    """Make departures from the official dataset (counts, size) errors, not warnings."""
    workers: int = 4
    """Threads that read the .npy files at start-up."""

    def validate(self) -> None:
        check_choice("data.protocol", self.protocol, PROTOCOLS)
        check_range("data.val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        check_range("data.split_seed", self.split_seed, 0)
        check_range("data.height", self.height, 0)
        check_range("data.width", self.width, 0)
        if (self.height == 0) != (self.width == 0):
            raise ConfigError(f"data.height={self.height}, data.width={self.width}: set both "
                              f"(to resize the inputs) or neither (0 = the size on disk)")
        check_choice("data.backbone", self.backbone, RESNETS)
        check_range("data.head_channels", self.head_channels, 1)
        if not self.aspp_rates or any(r < 1 for r in self.aspp_rates):
            raise ConfigError(f"data.aspp_rates={list(self.aspp_rates)!r}: expected a non-empty "
                              f"list of dilation rates >= 1, e.g. [12, 24, 36]")
        check_range("data.workers", self.workers, 1)


class DenseNpyBenchmark(Benchmark):
    """A single-input dense benchmark read from the preprocessed .npy layout."""

    setting = "task shift"
    needs_data_root = True
    label_folders: ClassVar[tuple[str, ...]] = ("label",)
    num_classes: ClassVar[int] = 0
    official_counts: ClassVar[dict[str, int]] = {}
    official_size: ClassVar[tuple[int, int]] = (0, 0)

    def __init__(self, config: DenseNpyConfig, data_root: Path | None, device: torch.device):
        super().__init__(config, data_root, device)
        if data_root is None or not data_root.is_dir():
            raise DataError(f"{self.name}: data root {data_root} is not a folder; expected "
                            f"ROOT/{{train,val}}/{{{','.join(self.folders())}}}/<i>.npy")
        weights = resolve_weights(config.weights, config.backbone)
        self.backbone_state = load_state(weights, config.backbone) if weights else None
        self.weights_file = str(weights) if weights else None
        self.departures = Departures(config.strict)
        size = (config.height, config.width) if config.height else None
        self.arrays: dict[str, DenseArrays] = {}
        for folder in ("train", "val"):
            arrays = read_split(data_root / folder, self.folders(), self.num_classes, size,
                                config.workers)
            self.departures.count(f"{data_root / folder}", len(arrays), self.official_counts[folder])
            self.arrays[folder] = arrays
        self.disk_size = self.arrays["train"].disk_size
        if self.arrays["val"].disk_size != self.disk_size:
            raise DataError(f"{data_root}: train arrays are {self.disk_size}, val arrays "
                            f"{self.arrays['val'].disk_size}; expected one size")
        if self.disk_size != self.official_size:
            self.departures.report(f"{data_root}: arrays of size {self.disk_size}, the official "
                                   f"preprocessed data is {self.official_size}")
        self.index = self._split_indices()

    @classmethod
    def reads_data_file(cls, config: DenseNpyConfig, path: PurePosixPath) -> bool:
        # ROOT/{train,val}/<kind>/<i>.npy; any other entry of a kind folder is refused
        return len(path.parts) == 3 and path.parts[0] in ("train", "val") \
            and path.suffix == ".npy"

    # ------------------------------------------------------------------ data
    def folders(self) -> dict[str, tuple[str, ...]]:
        kinds = {"image": ("image",)}
        for task in self.task_names:
            kinds[TASK_KIND[task]] = self.label_folders if task == "seg" else (TASK_KIND[task],)
        return kinds

    def _split_indices(self) -> dict[str, tuple[str, Tensor]]:
        """split -> (on-disk folder, indices into it)."""
        n_train = len(self.arrays["train"])
        test = ("val", torch.arange(len(self.arrays["val"])))
        if self.config.protocol == "libmtl":
            return {"train": ("train", torch.arange(n_train)), "val": test, "test": test}
        n_val = int(round(self.config.val_fraction * n_train))
        if not 0 < n_val < n_train:
            raise DataError(f"data.val_fraction={self.config.val_fraction} of {n_train} training "
                            f"items leaves {n_val} for validation and {n_train - n_val} for "
                            f"training; both must be at least 1")
        order = np.random.default_rng(self.config.split_seed).permutation(n_train)
        return {"train": ("train", torch.from_numpy(np.sort(order[n_val:]))),
                "val": ("train", torch.from_numpy(np.sort(order[:n_val]))), "test": test}

    def split_size(self, split: str) -> int:
        return len(self.index[split][1])

    def batches_per_epoch(self, split: str, batch_size: int) -> int:
        return num_batches(self.split_size(split), batch_size, drop_last=split == "train")

    def batches(self, split: str, batch_size: int,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        folder, index = self.index[split]
        tensors = self.arrays[folder].tensors
        training = generator is not None
        n = len(index)
        if training:
            check_train_batch(batch_size, {"the training split": n})
        order = torch.randperm(n, generator=generator) if training else torch.arange(n)
        for b in range(num_batches(n, batch_size, drop_last=training)):
            rows = index[order[b * batch_size:(b + 1) * batch_size]]
            data = {kind: t[rows].to(self.device) for kind, t in tensors.items()}
            if training and self.config.augment:
                data = scale_crop_flip(data, generator)
            targets = {task: data[TASK_KIND[task]] for task in self.task_names}
            if "seg" in targets:
                targets["seg"] = targets["seg"].long()
            yield Batch(data["image"], targets)

    def extra_record(self) -> dict:
        record = {"protocol": self.config.protocol,
                  "test_split": "the val folder on disk",
                  "label_folder": self.arrays["train"].folders["label"].name,
                  "size_on_disk": list(self.disk_size),
                  "input_size": list(self.arrays["train"].size),
                  "weights_file": self.weights_file,
                  "data_departures": list(self.departures.messages)}
        if self.config.protocol == "libmtl":
            record["val_split"] = "the test split (LibMTL's protocol: selection on val is on test)"
            record["selection_on_test"] = True
        else:
            record["val_split"] = (f"held out from the train folder (val_fraction="
                                   f"{self.config.val_fraction}, split_seed={self.config.split_seed})")
            record["val_indices"] = self.index["val"][1].tolist()
            record["selection_on_test"] = False
        return record

    # ------------------------------------------------------------------ model
    def make_encoder(self) -> nn.Module:
        return resnet_trunk(self.config.backbone, dilated=True, state=self.backbone_state)

    def encoder_blocks(self, encoder: nn.Sequential) -> list[nn.Module]:
        """The ResNet's stem and its four stages."""
        return list(encoder)

    def out_channels(self, task: TaskSpec) -> int:
        return {"seg": self.num_classes, "depth": 1, "normal": 3}[task.name]

    def make_head(self, task: TaskSpec) -> nn.Module:
        return ASPPHead(trunk_channels(self.config.backbone), self.out_channels(task),
                        self.config.aspp_rates, self.config.head_channels)
