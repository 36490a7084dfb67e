"""scenes: task shift on dense prediction, an NYUv2 in miniature. The NYUv2 protocol of MTAN
(Liu, Johns, Davison, CVPR 2019), LibMTL and the Rep-MTL paper (Wang, Li, Xu, ICCV 2025) —
semantic segmentation, depth and surface normals on the same image, scored with exactly
its losses and metrics (``benchmarks/dense.py``) — on procedurally generated rooms
(``datasets/scenes.py``), so that it trains on a CPU and needs no download.

Tasks: ``seg`` (6 classes: floor, wall, ceiling, sphere, box, cylinder; −1 = ignore; mIoU,
pixel accuracy), ``depth`` (0 = invalid; absolute and relative error), ``normal`` (zero
vector = invalid; mean and median angle, % within 11.25°, 22.5°, 30°).

Model: a small convolutional encoder-decoder (BatchNorm, one dilated block, a skip
connection) whose output Z, at half the input resolution, is the shared representation;
each head is a 3×3 conv block and a 1×1 conv, predicting at Z's resolution. As with the
paper's output-stride-8 networks, predictions are upsampled to the targets' size (bilinear,
align_corners=True) inside the losses and metrics. Images are RGB in [0, 1] without
mean/std normalisation, as in the NYUv2 arrays.

Splits are generated independently (train, val, test) from ``data.seed``; val exists here,
unlike NYUv2's LibMTL protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.base import TaskSpec, TensorBenchmark, TensorSplit
from benchmarks.dense import depth_task, normal_task, segmentation_task
from benchmarks.registry import register_benchmark
from datasets.scenes import CLASSES, generate_scenes
from engine.errors import ConfigError, check_range

SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}


@dataclass
class ScenesConfig:
    seed: int = 0
    """Seed of the data generation (not the run seed)."""
    size: int = 48
    """Image side in pixels (a multiple of 4)."""
    train_size: int = 400
    val_size: int = 100
    test_size: int = 100
    max_depth: float = 9.0
    """Depth beyond this range (metres) is invalid, as for a depth sensor."""
    width: int = 16
    """Channels of the first conv block; Z has 2 × width channels."""

    def validate(self) -> None:
        check_range("data.size", self.size, 8, 256)
        if self.size % 4:
            raise ConfigError(f"data.size={self.size} must be a multiple of 4")
        for name in ("train_size", "val_size", "test_size", "width"):
            check_range(f"data.{name}", getattr(self, name), 1)
        check_range("data.max_depth", self.max_depth, 0, low_open=True)


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation,
                                   dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ScenesEncoder(nn.Module):
    """3 × S × S -> Z: 2w × S/2 × S/2 (down to S/4, back up to S/2 with a skip)."""

    def __init__(self, width: int):
        super().__init__()
        w = width
        self.stem = conv_bn_relu(3, w)
        self.down1 = nn.Sequential(conv_bn_relu(w, 2 * w, stride=2), conv_bn_relu(2 * w, 2 * w))
        self.down2 = nn.Sequential(conv_bn_relu(2 * w, 4 * w, stride=2),
                                   conv_bn_relu(4 * w, 4 * w, dilation=2))
        self.fuse = conv_bn_relu(6 * w, 2 * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down1(self.stem(x))
        deep = self.down2(skip)
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([up, skip], dim=1))


@register_benchmark("scenes")
class Scenes(TensorBenchmark):
    description = ("Dense task shift, NYUv2 in miniature: procedurally rendered rooms with "
                   "segmentation, depth and surface normals, scored with the NYUv2 metrics")
    setting = "task shift"
    Config = ScenesConfig

    def __init__(self, config: ScenesConfig, data_root: Path | None, device: torch.device):
        super().__init__(config, data_root, device)
        self.tasks = (segmentation_task("seg", len(CLASSES)), depth_task("depth"),
                      normal_task("normal"))
        sizes = {"train": config.train_size, "val": config.val_size, "test": config.test_size}
        self.splits = {}
        for split, count in sizes.items():
            s = generate_scenes(count, config.size, [config.seed, SPLIT_INDEX[split]],
                                config.max_depth)
            targets = {"seg": torch.from_numpy(s.label), "depth": torch.from_numpy(s.depth),
                       "normal": torch.from_numpy(s.normal)}
            self.splits[split] = TensorSplit(torch.from_numpy(s.image), targets).to(device)

    def make_encoder(self) -> nn.Module:
        return ScenesEncoder(self.config.width)

    def make_head(self, task: TaskSpec) -> nn.Module:
        out = {"seg": len(CLASSES), "depth": 1, "normal": 3}[task.name]
        z = 2 * self.config.width
        return nn.Sequential(conv_bn_relu(z, z), nn.Conv2d(z, out, 1))
