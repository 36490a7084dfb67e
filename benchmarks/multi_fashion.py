"""multi_fashion: Multi-Fashion (Lin et al., Pareto-MTL, NeurIPS 2019), MultiMNIST's
construction on Fashion-MNIST (Xiao et al. 2017; MIT, © Zalando).

Read from the four standard IDX files (gzipped or not) under ``--data-root``, by default
``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist`` package
installs the full 60,000 + 10,000 images. The 60,000 training images are split per class
5/6 and 1/6 into the train and val pools (50,000 / 10,000), the 10,000 test images are the
test pool; pairs are drawn from each pool (10,000 / 2,000 / 2,000 by default, set by
``data.*_size``). Tasks and model as ``multi_mnist`` (``benchmarks/_two_images.py``).
"""
from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from benchmarks._two_images import TwoImagesBenchmark, stratified_pools
from benchmarks.registry import register_benchmark
from datasets.mnist_pairs import IDX_FILES, load_idx_split
from engine.errors import DataError

DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"


@register_benchmark("multi_fashion")
class MultiFashion(TwoImagesBenchmark):
    description = ("Multi-Fashion: classify the left and the right of two overlapping "
                   "Fashion-MNIST images (IDX files under --data-root, default Debian's)")
    needs_data_root = True
    default_data_root = DEBIAN_FOLDER
    data_hint = (f"install Debian's dataset-fashion-mnist (apt install dataset-fashion-mnist, "
                 f"into {DEBIAN_FOLDER}) or pass --data-root DIR holding the four "
                 f"Fashion-MNIST IDX files (docs/benchmarks.md)")

    @classmethod
    def reads_data_file(cls, config, path: PurePosixPath) -> bool:
        # the four IDX files at the top of the folder, gzipped or not
        stems = {stem for pair in IDX_FILES.values() for stem in pair}
        return len(path.parts) == 1 and path.name.removesuffix(".gz") in stems

    def pools(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        if self.data_root is None or not self.data_root.is_dir():
            raise DataError(f"multi_fashion: no folder {self.data_root}; {self.data_hint}")
        train_images, train_labels = load_idx_split(self.data_root, "train")
        test_images, test_labels = load_idx_split(self.data_root, "test")
        cut = stratified_pools(train_labels, (5 / 6, 1 / 6), self.config.seed)
        offset = len(train_images)
        pools = {"train": cut["train"], "val": cut["val"],
                 "test": offset + np.arange(len(test_images))}
        return (np.concatenate([train_images, test_images]),
                np.concatenate([train_labels, test_labels]), pools)
