"""Task losses and split meters for classification and regression.

Meters accumulate sums on the device over a whole split and move to the host once, in
``compute`` (metrics are never averaged per batch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.base import MetricSpec

ACCURACY = MetricSpec("acc", higher_is_better=True, unit="%")
MAE = MetricSpec("mae", higher_is_better=False)
RMSE = MetricSpec("rmse", higher_is_better=False)


def cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(pred, target)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(pred.reshape(target.shape), target)


class StandardizedMSE:
    """Squared error against the standardized target (target − offset) / scale: the loss of a
    regression task trained in units where its target has unit variance."""

    def __init__(self, scale: float, offset: float) -> None:
        self.scale = scale
        self.offset = offset

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred.reshape(target.shape), (target - self.offset) / self.scale)


class AccuracyMeter:
    """Top-1 accuracy in percent over the split."""

    def __init__(self) -> None:
        self.correct = None
        self.total = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        hits = (pred.argmax(dim=1) == target).sum()
        self.correct = hits if self.correct is None else self.correct + hits
        self.total += target.numel()

    def compute(self) -> dict[str, float]:
        if not self.total:
            raise ValueError("accuracy of an empty split")
        return {"acc": 100.0 * float(self.correct) / self.total}


class RegressionMeter:
    """Mean absolute error and root mean squared error over every target element.

    ``scale`` and ``offset`` map a prediction made in a task's training units back to the
    target's own units (``pred * scale + offset``), so that metrics stay in the units a
    reader knows whatever scale the loss is trained on."""

    def __init__(self, scale: float = 1.0, offset: float = 0.0) -> None:
        self.scale = scale
        self.offset = offset
        self.abs_sum = None
        self.sq_sum = None
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred = pred.reshape(target.shape)
        if self.scale != 1.0 or self.offset != 0.0:
            pred = pred * self.scale + self.offset
        err = (pred - target).detach()
        a, s = err.abs().sum(), err.square().sum()
        self.abs_sum = a if self.abs_sum is None else self.abs_sum + a
        self.sq_sum = s if self.sq_sum is None else self.sq_sum + s
        self.count += target.numel()

    def compute(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("regression error of an empty split")
        return {"mae": float(self.abs_sum) / self.count,
                "rmse": (float(self.sq_sum) / self.count) ** 0.5}


BALANCED_ACCURACY = MetricSpec("bacc", higher_is_better=True, unit="%")


def binary_cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of one logit per sample against a 0/1 target."""
    return F.binary_cross_entropy_with_logits(pred.reshape(target.shape), target.float())


class BinaryMeter:
    """Balanced accuracy (the mean of the true-positive and true-negative rates, so that a
    constant prediction scores 50 % whatever the prevalence) and accuracy, in percent, of
    one logit per sample thresholded at 0. A split without positives (or negatives) has no
    true-positive (true-negative) rate: its balanced accuracy is the other rate alone."""

    def __init__(self) -> None:
        self.counts = None  # true positives, positives, true negatives, negatives

    def update(self, pred: Tensor, target: Tensor) -> None:
        positive = target.reshape(-1) == 1
        predicted = pred.reshape(-1) > 0
        counts = torch.stack([(predicted & positive).sum(), positive.sum(),
                              (~predicted & ~positive).sum(), (~positive).sum()])
        self.counts = counts if self.counts is None else self.counts + counts

    def compute(self) -> dict[str, float]:
        if self.counts is None:
            raise ValueError("balanced accuracy of an empty split")
        tp, p, tn, n = (int(c) for c in self.counts)
        if not p + n:
            raise ValueError("balanced accuracy of an empty split")
        rates = [hits / total for hits, total in ((tp, p), (tn, n)) if total]
        return {"bacc": 100.0 * sum(rates) / len(rates), "acc": 100.0 * (tp + tn) / (p + n)}
