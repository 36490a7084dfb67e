"""office31: Office-31 domain shift, one 31-class classification task per domain.

Dataset: Saenko et al., "Adapting Visual Category Models to New Domains", ECCV 2010: 4,110
images of 31 office objects in three domains, amazon (2,817), dslr (498) and webcam (795),
under ``--data-root`` as ``<domain>/images/<class>/*.jpg``. Splits from LibMTL's list files
(``data.split_dir``; per domain train/val/test 1680/552/585, 287/89/122, 466/149/180) or a
generated stratified 60/20/20 split. Protocol, model and settings of the Rep-MTL paper
(Wang, Li, Xu, ICCV 2025, Table 5), which follows LibMTL: ImageNet-pretrained ResNet-18
shared encoder, linear heads, inputs 224×224, Adam lr 1e-4, weight decay 1e-5, 100 epochs,
batch 64 per domain (profile ``paper``). Tasks ``amazon``, ``dslr``, ``webcam``; metric
``acc`` (%). See benchmarks/_office.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks._office import OfficeBenchmark, OfficeConfig
from benchmarks.registry import register_benchmark


@dataclass
class Office31Config(OfficeConfig):
    pass


@register_benchmark("office31")
class Office31(OfficeBenchmark):
    description = ("Office-31 (image folders): one 31-class task per domain "
                   "(amazon, dslr, webcam); ResNet-18 + linear heads")
    Config = Office31Config
    dataset = "office31"
    domains = ("amazon", "dslr", "webcam")
    class_subdir = "images"
    official_counts = {"amazon": (1680, 552, 585), "dslr": (287, 89, 122),
                       "webcam": (466, 149, 180)}
