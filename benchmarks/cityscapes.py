"""cityscapes: Cityscapes street scenes, 7-class segmentation and depth.

Dataset: Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding",
CVPR 2016, as preprocessed by MTAN (Liu, Johns, Davison, CVPR 2019): 2975 training and 500
test images at 128×256, 7 classes (−1 = ignore), depth with 0 = invalid, read from
``--data-root`` in the .npy layout of datasets/npy_dense.py; the label folder is ``label_7``
in MTAN's archive and ``label`` in LibMTL's copy (both accepted, ``label_7`` first).
Protocol, model and settings of the Rep-MTL paper (Wang, Li, Xu, ICCV 2025, Table 2), which
follows LibMTL: dilated ResNet-50 + one ASPP head per task, Adam lr 1e-4, weight decay 1e-5,
lr halved after epoch 100, 200 epochs, batch 64 (profile ``paper``). Tasks and metrics
(benchmarks/dense.py): ``seg`` (miou, pixacc), ``depth`` (abs_err, rel_err).

Deviation: the validation split is held out from the training folder by default
(``data.protocol=holdout``); ``data.protocol=libmtl`` reproduces LibMTL's protocol (val =
test), see benchmarks/_dense_npy.py. The paper prints the relative depth error in %; the
metric here is the plain ratio (multiply by 100 to compare).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._dense_npy import DenseNpyBenchmark, DenseNpyConfig
from benchmarks.dense import depth_task, segmentation_task
from benchmarks.registry import register_benchmark


@dataclass
class CityscapesConfig(DenseNpyConfig):
    pass


@register_benchmark("cityscapes")
class Cityscapes(DenseNpyBenchmark):
    description = ("Cityscapes (MTAN's preprocessed .npy): 7-class segmentation "
                   "and depth; dilated ResNet-50 + ASPP heads")
    Config = CityscapesConfig
    label_folders = ("label_7", "label")
    num_classes = 7
    official_counts = {"train": 2975, "val": 500}
    official_size = (128, 256)

    def __init__(self, config: CityscapesConfig, data_root: Path | None, device: torch.device):
        self.tasks = (segmentation_task("seg", self.num_classes), depth_task("depth"))
        super().__init__(config, data_root, device)
