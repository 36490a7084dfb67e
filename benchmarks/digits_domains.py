"""digits_domains: domain shift, multi-input, in the style of Office-31 / Office-Home as the
Rep-MTL paper (Wang, Li, Xu, ICCV 2025) and LibMTL use them: one 10-class classifier head
per domain on a shared encoder, each domain its own train/val/test images.

The domains are deterministic renderings of scikit-learn's bundled 8×8 digits (no
download; see ``datasets/domains.py``): ``ink``, ``negative``, ``tilted``, ``colour``, all as
3×12×12 images. The 1,797 digit images are first dealt into disjoint pools, one per domain,
so that no two domains show the same handwriting sample; each pool is then split 60/20/20
into train/val/test. Everything is deterministic from ``data.seed``.

Tasks: one per domain, named after it; cross-entropy; accuracy in % (higher is better).
Model (Office's shape, scaled down): three conv blocks with BatchNorm → Linear(576, 128) →
BatchNorm → ReLU → Dropout (shared), one Linear(128, 10) head per domain. As in the
reference protocol, every step runs one encoder forward per domain
(``engine.multi_input_forward``); methods that need one representation shared by all tasks
are refused, since each task has its own batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.base import MultiInputTensorBenchmark, TaskSpec, TensorSplit
from benchmarks.metrics import ACCURACY, AccuracyMeter, cross_entropy
from benchmarks.registry import register_benchmark
from datasets.digits import load_digit_images, split_indices
from datasets.domains import DOMAINS, render
from engine.errors import ConfigError, check_choice, check_range


@dataclass
class DigitsDomainsConfig:
    seed: int = 0
    """Seed of the data generation (not the run seed): fixes pools, splits and renderings."""
    domains: tuple[str, ...] = DOMAINS
    """Which renderings to use (at least two): ink, negative, tilted, colour."""
    width: int = 32
    """Channels of the first conv block (the others scale with it)."""
    feature_dim: int = 128
    dropout: float = 0.5

    def validate(self) -> None:
        if len(self.domains) < 2:
            raise ConfigError(f"data.domains={list(self.domains)} needs at least two domains "
                              f"from {', '.join(DOMAINS)}")
        for i, d in enumerate(self.domains):
            check_choice(f"data.domains[{i}]", d, DOMAINS)
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"data.domains={list(self.domains)} names a domain twice")
        check_range("data.width", self.width, 1)
        check_range("data.feature_dim", self.feature_dim, 1)
        check_range("data.dropout", self.dropout, 0, 1, high_open=True)


def conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class DomainsEncoder(nn.Module):
    """3×12×12 -> feature_dim: conv blocks, then Linear -> BatchNorm -> ReLU -> Dropout."""

    def __init__(self, width: int, feature_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            *conv_block(3, width), *conv_block(width, width), nn.MaxPool2d(2),
            *conv_block(width, 2 * width), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * width * 9, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def domain_pools(n: int, count: int, seed: int) -> list[np.ndarray]:
    """A deterministic permutation of range(n) dealt into ``count`` disjoint pools."""
    order = np.random.default_rng([seed, 1]).permutation(n)
    return np.array_split(order, count)


@register_benchmark("digits_domains")
class DigitsDomains(MultiInputTensorBenchmark):
    description = ("Domain shift, multi-input (Office-style): sklearn's digits rendered in 4 "
                   "distinct domains, one 10-class head per domain, disjoint images")
    setting = "domain shift"
    Config = DigitsDomainsConfig

    @classmethod
    def task_count(cls, config: DigitsDomainsConfig) -> int:
        return len(config.domains)

    def __init__(self, config: DigitsDomainsConfig, data_root: Path | None, device: torch.device):
        super().__init__(config, data_root, device)
        self.tasks = tuple(TaskSpec(d, cross_entropy, (ACCURACY,), AccuracyMeter,
                                    f"digit class in domain {d}") for d in config.domains)
        images, labels = load_digit_images()
        pools = domain_pools(len(images), len(config.domains), config.seed)
        self.domain_splits = {}
        for k, (domain, pool) in enumerate(zip(config.domains, pools)):
            rng = np.random.default_rng([config.seed, 2, DOMAINS.index(domain)])
            parts = split_indices(len(pool), (0.6, 0.2, 0.2), config.seed + 1 + k)
            self.domain_splits[domain] = {}
            for split, local in parts.items():
                index = pool[local]
                x = torch.from_numpy(render(domain, images[index], rng))
                y = torch.from_numpy(labels[index])
                self.domain_splits[domain][split] = TensorSplit(x, {domain: y}).to(device)

    def make_encoder(self) -> nn.Module:
        c = self.config
        return DomainsEncoder(c.width, c.feature_dim, c.dropout)

    def make_head(self, task: TaskSpec) -> nn.Module:
        return nn.Linear(self.config.feature_dim, 10)
