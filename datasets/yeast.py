"""The 14-label yeast data (Elisseeff & Weston, NeurIPS 2001; MULAN's version, OpenML 40597)
that the ``river`` package ships as ``river/datasets/yeast.csv.gz``: 2,417 genes, 103
expression and phylogenetic features, 14 binary functional classes with prevalence from
0.01 to 0.75; and the iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML PKDD
2011) that splits multi-label data so every label keeps its prevalence in every split.
"""
from __future__ import annotations

import numpy as np

from datasets.mnist_pairs import package_file
from engine.errors import DataError

FEATURES = 103
LABELS = 14


def load_yeast() -> tuple[np.ndarray, np.ndarray]:
    """Features float32 [2417, 103] and labels int64 [2417, 14] (0 or 1)."""
    path = package_file("river", "datasets/yeast.csv.gz", "0.26.1")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    if table.shape != (2417, FEATURES + LABELS):
        raise DataError(f"{path}: expected 2417 rows of 117 columns (103 features, then 14 "
                        f"labels), found {table.shape}")
    labels = table[:, FEATURES:]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise DataError(f"{path}: the 14 label columns must hold 0 or 1")
    return table[:, :FEATURES].astype(np.float32), labels.astype(np.int64)


def iterative_stratification(labels: np.ndarray, fractions: tuple[float, ...], seed: int
                             ) -> list[np.ndarray]:
    """Indices of each split (sorted). The rarest label still to place is placed first: each
    of its samples goes to the split that most lacks that label (ties: the split that most
    lacks samples, then a random one), so rare labels are spread before common ones fill the
    splits. Samples without any label go to the split that most lacks samples."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    fractions = np.asarray(fractions, dtype=np.float64)
    wanted_total = fractions * n
    wanted = fractions[:, None] * labels.sum(axis=0)[None, :].astype(np.float64)
    left = np.ones(n, dtype=bool)
    assign = np.full(n, -1)

    def place(i: int, split: int) -> None:
        assign[i] = split
        left[i] = False
        wanted_total[split] -= 1
        wanted[split] -= labels[i]

    def best(candidates: np.ndarray) -> int:
        return int(rng.choice(candidates))

    while True:
        remaining = labels[left].sum(axis=0)
        if not remaining.any():
            break
        label = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        for i in rng.permutation(np.flatnonzero(left & (labels[:, label] == 1))):
            top = np.flatnonzero(wanted[:, label] == wanted[:, label].max())
            if len(top) > 1:
                top = top[wanted_total[top] == wanted_total[top].max()]
            place(i, best(top))
    for i in rng.permutation(np.flatnonzero(left)):
        place(i, best(np.flatnonzero(wanted_total == wanted_total.max())))
    return [np.flatnonzero(assign == s) for s in range(len(fractions))]
