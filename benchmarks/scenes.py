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

``data.encoder=mobilenet_v2`` replaces the encoder with torchvision's MobileNetV2 trunk cut
at output stride ``data.stride`` (8: 32 channels, 16: 96 channels; ``benchmarks/_mobilenet.py``),
optionally ImageNet-pretrained (``data.weights``), its BatchNorm statistics trained or frozen
(``data.bn``); Z is that feature map and the heads are the same blocks on its channels. The
``pretrained`` profile uses it at 96 × 96 with the ImageNet weights.

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
from benchmarks._mobilenet import BN_MODES, MobileNetTrunk, encoder_record, load_backbone
from engine.errors import ConfigError, check_choice, check_range

SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
ENCODERS = ("scratch", "mobilenet_v2")


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
    """Channels of the first conv block; Z has 2 × width channels (scratch encoder)."""
    encoder: str = "scratch"
    """scratch (the small encoder-decoder) or mobilenet_v2 (torchvision's trunk)."""
    weights: str = "none"
    """mobilenet_v2's weights: none, imagenet (checked against torchvision's hash) or a path."""
    stride: int = 8
    """mobilenet_v2's output stride: 8 or 16."""
    bn: str = "train"
    """mobilenet_v2's BatchNorm statistics: train (as the paper fine-tunes) or frozen."""

    def validate(self) -> None:
        check_choice("data.encoder", self.encoder, ENCODERS)
        check_choice("data.bn", self.bn, BN_MODES)
        check_choice("data.stride", str(self.stride), ("8", "16"))
        if self.encoder == "scratch" and self.weights != "none":
            raise ConfigError(f"data.weights={self.weights!r} needs data.encoder=mobilenet_v2 "
                              f"(the scratch encoder has no pretrained weights)")
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


class _DeepWithSkip(nn.Module):
    """The middle block of ``ScenesEncoder`` as a chain: the skip features in, the deep
    features upsampled and concatenated with them out (what the fuse layer reads)."""

    def __init__(self, down2: nn.Module):
        super().__init__()
        self.down2 = down2

    def forward(self, skip: torch.Tensor) -> torch.Tensor:
        deep = self.down2(skip)
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([up, skip], dim=1)


@register_benchmark("scenes")
class Scenes(TensorBenchmark):
    description = ("Dense task shift, NYUv2 in miniature: procedurally rendered rooms with "
                   "segmentation, depth and surface normals, scored with the NYUv2 metrics")
    setting = "task shift"
    Config = ScenesConfig

    @classmethod
    def task_count(cls, config: ScenesConfig) -> int:
        return 3  # seg, depth, normal

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
        self.weights_file, self.weights_sha256, self.backbone_state = (
            load_backbone(config.weights) if config.encoder == "mobilenet_v2" else (None,) * 3)

    def make_encoder(self) -> nn.Module:
        c = self.config
        if c.encoder == "mobilenet_v2":
            return MobileNetTrunk(c.stride, self.backbone_state, c.bn)
        return ScenesEncoder(c.width)

    def encoder_blocks(self, encoder: nn.Module) -> list[nn.Module] | None:
        """The scratch encoder: stem and first downsampling, the second downsampling with
        the skip carried along, the fuse layer. The MobileNetV2 trunk has no split here."""
        if not isinstance(encoder, ScenesEncoder):
            return None
        return [nn.Sequential(encoder.stem, encoder.down1), _DeepWithSkip(encoder.down2),
                encoder.fuse]

    @classmethod
    def has_encoder_blocks(cls, config: ScenesConfig) -> bool:
        return config.encoder != "mobilenet_v2"

    def z_channels(self) -> int:
        c = self.config
        return MobileNetTrunk.channels_at(c.stride) if c.encoder == "mobilenet_v2" else 2 * c.width

    def make_head(self, task: TaskSpec) -> nn.Module:
        out = {"seg": len(CLASSES), "depth": 1, "normal": 3}[task.name]
        z = self.z_channels()
        return nn.Sequential(conv_bn_relu(z, z), nn.Conv2d(z, out, 1))

    def extra_record(self) -> dict:
        if self.config.encoder != "mobilenet_v2":
            return {}
        return encoder_record(self.config.stride, self.config.weights, self.weights_file,
                              self.weights_sha256, self.config.bn)
