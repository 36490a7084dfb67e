"""digits_tasks: task shift on two-digit canvases built from scikit-learn's bundled digits.

Each 11×11 input holds two 8×8 digits, the second shifted 3 pixels down and right so that
they overlap (MultiMNIST's construction, scaled to the 8×8 digits). Three heterogeneous
tasks on the same input, so that methods differ:

- ``first``  classify the top-left digit (10 classes, cross-entropy; accuracy %)
- ``second`` classify the bottom-right digit (10 classes, cross-entropy; accuracy %)
- ``sum``    regress the sum of the two digits, 0..18 (squared error; MAE, RMSE, always in
  the sum's own units).

``data.sum_target`` sets the units the sum is trained in. ``standardized`` (the default)
trains on (sum − mean) / std of the training split, so all three losses start near the same
size (the squared error near 1, the cross-entropies near ln 10 ≈ 2.3) and the comparison is
about multi-task optimization, not about one loss dwarfing the others. ``raw`` trains on the
sum itself: its squared error starts about 40× the cross-entropies, the loss-scale imbalance
that loss-weighting methods were designed for (the ``imbalanced`` profile).

The digit images are split 60/20/20 into train/val/test before pairing, so no image is
seen in two splits. Everything is deterministic from ``data.seed``, which is fixed by the
profile and independent of the run seed: every run and method sees the same data.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.base import TaskSpec, TensorBenchmark, TensorSplit
from benchmarks.metrics import (ACCURACY, MAE, RMSE, AccuracyMeter, RegressionMeter,
                                StandardizedMSE, cross_entropy, mse)
from benchmarks.registry import register_benchmark
from datasets.digits import load_digit_images, pair_canvases, split_indices
from engine.errors import check_choice, check_range

SUM_TARGETS = ("standardized", "raw")


@dataclass
class DigitsTasksConfig:
    seed: int = 0
    """Seed of the data generation (not the run seed): fixes the canvases."""
    train_size: int = 4000
    val_size: int = 1000
    test_size: int = 1000
    shift: int = 3
    """Offset of the second digit, in pixels (overlap = 8 - shift)."""
    width: int = 32
    """Channels of the shared representation Z (B × width × 5 × 5)."""
    sum_target: str = "standardized"
    """Units the sum is trained in: standardized (balanced losses) or raw (imbalanced)."""

    def validate(self) -> None:
        check_choice("data.sum_target", self.sum_target, SUM_TARGETS)
        for name in ("train_size", "val_size", "test_size"):
            check_range(f"data.{name}", getattr(self, name), 1)
        check_range("data.shift", self.shift, 0, 8)
        check_range("data.width", self.width, 1)


class DigitsEncoder(nn.Module):
    """Two conv blocks: 1×S×S -> width × 5 × 5 (for the default S = 11)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3), nn.ReLU(),
            nn.AdaptiveAvgPool2d(5),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_benchmark("digits_tasks")
class DigitsTasks(TensorBenchmark):
    description = ("Task shift on two overlapping 8x8 digits: classify each digit and regress "
                   "their sum (sklearn's bundled digits, no download)")
    setting = "task shift"
    Config = DigitsTasksConfig

    @classmethod
    def task_count(cls, config: DigitsTasksConfig) -> int:
        return 3  # first, second, sum

    def __init__(self, config: DigitsTasksConfig, data_root: Path | None, device: torch.device):
        super().__init__(config, data_root, device)
        images, labels = load_digit_images()
        pools = split_indices(len(images), (0.6, 0.2, 0.2), config.seed)
        sizes = {"train": config.train_size, "val": config.val_size, "test": config.test_size}
        self.splits = {}
        for i, split in enumerate(("train", "val", "test")):
            rng = np.random.default_rng([config.seed, i])
            pairs = pair_canvases(images, labels, pools[split], sizes[split], config.shift, rng)
            targets = {"first": pairs.first, "second": pairs.second,
                       "sum": (pairs.first + pairs.second).float()}
            self.splits[split] = TensorSplit(pairs.images, targets).to(device)
        self.tasks = (
            TaskSpec("first", cross_entropy, (ACCURACY,), AccuracyMeter, "top-left digit"),
            TaskSpec("second", cross_entropy, (ACCURACY,), AccuracyMeter, "bottom-right digit"),
            self._sum_task(self.splits["train"].targets["sum"]),
        )

    def _sum_task(self, train_sums: torch.Tensor) -> TaskSpec:
        if self.config.sum_target == "raw":
            return TaskSpec("sum", mse, (MAE, RMSE), RegressionMeter, "sum of the two digits")
        mean, std = float(train_sums.mean()), float(train_sums.std())
        return TaskSpec("sum", StandardizedMSE(std, mean), (MAE, RMSE),
                        partial(RegressionMeter, scale=std, offset=mean),
                        "sum of the two digits (trained standardized)")

    def make_encoder(self) -> nn.Module:
        return DigitsEncoder(self.config.width)

    def encoder_blocks(self, encoder: DigitsEncoder) -> list[nn.Module]:
        """The three conv layers, each with its activation (and the pooling after the second)."""
        net = encoder.net
        return [net[0:2], net[2:5], net[5:7]]

    def make_head(self, task: TaskSpec) -> nn.Module:
        out = 1 if task.name == "sum" else 10
        width = self.config.width
        return nn.Sequential(nn.Flatten(), nn.Linear(width * 25, 64), nn.ReLU(), nn.Linear(64, out))
