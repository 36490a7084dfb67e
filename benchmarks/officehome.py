"""officehome: Office-Home domain shift, one 65-class classification task per domain.

Dataset: Venkateswara et al., "Deep Hashing Network for Unsupervised Domain Adaptation",
CVPR 2017: 15,588 images of 65 classes in four domains, Art, Clipart, Product and
Real_World (spelled with an underscore), under ``--data-root`` as ``<domain>/<Class>/*.jpg``.
Splits from LibMTL's list files (``data.split_dir``; per domain train/val/test Art
1435/465/527, Clipart 2596/846/923, Product 2635/860/944, Real_World 2586/846/925) or a
generated stratified 60/20/20 split. Protocol, model and settings of the Rep-MTL paper
(Wang, Li, Xu, ICCV 2025, Table 3), which follows LibMTL: ImageNet-pretrained ResNet-18
shared encoder, linear heads, inputs 224×224, Adam lr 1e-4, weight decay 1e-5, 100 epochs,
batch 64 per domain (profile ``paper``). Tasks ``Art``, ``Clipart``, ``Product``,
``Real_World``; metric ``acc`` (%). See benchmarks/_office.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks._office import OfficeBenchmark, OfficeConfig
from benchmarks.registry import register_benchmark


@dataclass
class OfficeHomeConfig(OfficeConfig):
    pass


@register_benchmark("officehome")
class OfficeHome(OfficeBenchmark):
    description = ("Office-Home (image folders): one 65-class task per domain "
                   "(Art, Clipart, Product, Real_World); ResNet-18 + linear heads")
    Config = OfficeHomeConfig
    dataset = "officehome"
    domains = ("Art", "Clipart", "Product", "Real_World")
    class_subdir = ""
    official_counts = {"Art": (1435, 465, 527), "Clipart": (2596, 846, 923),
                       "Product": (2635, 860, 944), "Real_World": (2586, 846, 925)}
