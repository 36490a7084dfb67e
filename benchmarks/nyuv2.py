"""nyuv2: NYUv2 scene understanding, 13-class segmentation, depth and surface normals.

Dataset: Silberman et al., "Indoor Segmentation and Support Inference from RGBD Images",
ECCV 2012, as preprocessed by MTAN (Liu, Johns, Davison, CVPR 2019): 795 training and 654
test images at 288×384, read from ``--data-root`` in the .npy layout of
datasets/npy_dense.py. Protocol, model and settings of the Rep-MTL paper (Wang, Li, Xu,
ICCV 2025, Table 1), which follows LibMTL: dilated ResNet-50 + one ASPP head per task, Adam
lr 1e-4, weight decay 1e-5, lr halved after epoch 100, 200 epochs, batch 8 (profile
``paper``). Tasks and metrics (benchmarks/dense.py): ``seg`` (miou, pixacc), ``depth``
(abs_err, rel_err), ``normal`` (angle_mean, angle_median, within_11.25/22.5/30).

Deviation: the validation split is held out from the training folder by default
(``data.protocol=holdout``); ``data.protocol=libmtl`` reproduces LibMTL's protocol (val =
test), see benchmarks/_dense_npy.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._dense_npy import DenseNpyBenchmark, DenseNpyConfig
from benchmarks.dense import depth_task, normal_task, segmentation_task
from benchmarks.registry import register_benchmark


@dataclass
class NYUv2Config(DenseNpyConfig):
    pass


@register_benchmark("nyuv2")
class NYUv2(DenseNpyBenchmark):
    description = ("NYUv2 (MTAN's preprocessed .npy): 13-class segmentation, depth "
                   "and surface normals; dilated ResNet-50 + ASPP heads")
    Config = NYUv2Config
    label_folders = ("label",)
    num_classes = 13
    official_counts = {"train": 795, "val": 654}
    official_size = (288, 384)

    def __init__(self, config: NYUv2Config, data_root: Path | None, device: torch.device):
        self.tasks = (segmentation_task("seg", self.num_classes), depth_task("depth"),
                      normal_task("normal"))
        super().__init__(config, data_root, device)
