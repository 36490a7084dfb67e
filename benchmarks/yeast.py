"""yeast: 14 binary tasks on real gene data, the many-task tabular case.

The 14-label yeast data (MULAN's version) that the ``river`` package ships
(``datasets/yeast.py``): 2,417 genes × 103 features; task ``c01`` … ``c14`` predicts
functional class 1 … 14, prevalence 0.01 to 0.75 (class 14 has 34 positives in all). The
split is fixed and stratified for every label (iterative stratification, 60/20/20: 1,435 /
496 / 486 genes, from ``data.seed``). Features are standardised with the training split's
mean and standard deviation.

Each task is scored by balanced accuracy (meaningful under imbalance: predicting the
majority class scores 50 %) and plain accuracy, both thresholding the logit at 0; its loss is
the binary cross-entropy. The model: a shared MLP 103 → 256 → 128 (ReLU, dropout between),
whose 128-vector is the shared representation Z, and one head 128 → 64 → 1 per task.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.base import TaskSpec, TensorBenchmark, TensorSplit
from benchmarks.metrics import ACCURACY, BALANCED_ACCURACY, BinaryMeter, binary_cross_entropy
from benchmarks.registry import register_benchmark
from datasets.yeast import LABELS, iterative_stratification, load_yeast
from engine.errors import check_range


@dataclass
class YeastConfig:
    seed: int = 0
    """Seed of the stratified split (not the run seed)."""
    hidden: int = 256
    width: int = 128
    """Size of the shared representation Z."""
    dropout: float = 0.2

    def validate(self) -> None:
        check_range("data.hidden", self.hidden, 1)
        check_range("data.width", self.width, 1)
        check_range("data.dropout", self.dropout, 0.0, 1.0, high_open=True)


@register_benchmark("yeast")
class Yeast(TensorBenchmark):
    description = ("14 binary gene-function tasks on the yeast data that river ships "
                   "(tabular, imbalanced, no download)")
    setting = "task shift"
    Config = YeastConfig

    @classmethod
    def task_count(cls, config: YeastConfig) -> int:
        return LABELS

    def __init__(self, config: YeastConfig, data_root: Path | None, device: torch.device):
        super().__init__(config, data_root, device)
        features, labels = load_yeast()
        parts = iterative_stratification(labels, (0.6, 0.2, 0.2), config.seed)
        train = parts[0]
        mean, std = features[train].mean(axis=0), features[train].std(axis=0)
        features = (features - mean) / np.where(std > 0, std, 1.0)
        names = [f"c{k + 1:02d}" for k in range(LABELS)]
        self.splits = {}
        for split, index in zip(("train", "val", "test"), parts):
            targets = {name: torch.from_numpy(labels[index, k]) for k, name in enumerate(names)}
            self.splits[split] = TensorSplit(torch.from_numpy(features[index]), targets).to(device)
        prevalence = labels.mean(axis=0)
        self.tasks = tuple(
            TaskSpec(name, binary_cross_entropy, (BALANCED_ACCURACY, ACCURACY), BinaryMeter,
                     f"functional class {k + 1} (prevalence {prevalence[k]:.2f})")
            for k, name in enumerate(names))

    def make_encoder(self) -> nn.Module:
        c = self.config
        return nn.Sequential(nn.Linear(103, c.hidden), nn.ReLU(), nn.Dropout(c.dropout),
                             nn.Linear(c.hidden, c.width), nn.ReLU())

    def encoder_blocks(self, encoder: nn.Sequential) -> list[nn.Module]:
        """The two Linear layers, each with its activation (and the dropout after the first)."""
        return [encoder[0:3], encoder[3:5]]

    def make_head(self, task: TaskSpec) -> nn.Module:
        return nn.Sequential(nn.Linear(self.config.width, 64), nn.ReLU(), nn.Linear(64, 1))
