"""Dense-prediction tasks: semantic segmentation, depth and surface normals.

The losses and metrics of the NYUv2 / Cityscapes protocol that MTAN (Liu, Johns, Davison,
"End-to-End Multi-Task Learning with Attention", CVPR 2019) introduced and LibMTL and the
Rep-MTL paper (Wang, Li, Xu, ICCV 2025) use, accumulated over a whole split on the device:

- segmentation: cross-entropy with ignore index −1; a confusion matrix over the pixels with
  0 ≤ gt < C, prediction = argmax; IoU_c = h_cc / (row_c + col_c − h_cc), mIoU = mean over
  classes, pixel accuracy = trace / sum, both in %.
- depth: valid = gt ≠ 0; L1 loss over valid pixels; abs_err = Σ|pred − gt| / #valid,
  rel_err = Σ|pred − gt| / gt / #valid over the split.
- normals: the prediction is L2-normalised; valid = gt ≠ 0 (as a vector); loss = 1 − mean
  cosine over valid pixels; angle = degrees(acos(clamp(⟨pred, gt⟩, −1, 1))) of every valid
  pixel of the split: mean, exact median, and % of pixels within 11.25°, 22.5°, 30°.

Targets are NCHW: [B, H, W] long labels, [B, 1, H, W] depth, [B, 3, H, W] normals. A
prediction whose spatial size differs from its target's is upsampled to the target's size
(bilinear, align_corners=True) inside the loss and the meters.

Deviations from LibMTL, all on degenerate inputs or in the averaging the papers define:

- LibMTL averages depth errors per batch (weighted by batch size); here they are summed over
  the split and divided by its number of valid pixels, the definition the papers state.
- A class that appears neither in the ground truth nor in the predictions of the split has
  no IoU (0/0); it is left out of the mean instead of turning mIoU into NaN.
- A batch without any valid pixel gives a loss of 0 instead of NaN (the denominators are
  clamped to at least one pixel).
- The normal median is exact (every angle is kept on the device until ``compute``), and
  an even count gives the mean of the two middle angles, as numpy's median does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.base import MetricSpec, TaskSpec

MIOU = MetricSpec("miou", higher_is_better=True, unit="%")
PIXACC = MetricSpec("pixacc", higher_is_better=True, unit="%")
ABS_ERR = MetricSpec("abs_err", higher_is_better=False)
REL_ERR = MetricSpec("rel_err", higher_is_better=False)
ANGLE_MEAN = MetricSpec("angle_mean", higher_is_better=False, unit="deg")
ANGLE_MEDIAN = MetricSpec("angle_median", higher_is_better=False, unit="deg")
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
WITHIN = tuple(MetricSpec(f"within_{t:g}", higher_is_better=True, unit="%")
               for t in NORMAL_THRESHOLDS)


def match_size(pred: Tensor, target: Tensor) -> Tensor:
    """``pred`` upsampled (bilinear, align_corners=True) to the target's spatial size."""
    size = target.shape[-2:]
    if pred.shape[-2:] == size:
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=True)


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # Split-wide sums of millions of pixels lose precision in float32; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _add(total: Tensor | None, value: Tensor) -> Tensor:
    value = value.to(_accumulator_dtype(value.device))
    return value if total is None else total + value


# --------------------------------------------------------------------------- segmentation

def segmentation_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the pixels whose label is not −1 (mean over those pixels)."""
    pred = match_size(pred, target)
    total = F.cross_entropy(pred, target, ignore_index=-1, reduction="sum")
    return total / (target != -1).sum().clamp_min(1)


def confusion_matrix(pred_labels: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """[C, C] counts, rows = ground truth, columns = prediction, over pixels 0 ≤ gt < C."""
    valid = (target >= 0) & (target < num_classes)
    index = target[valid] * num_classes + pred_labels[valid]
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(confusion: Tensor) -> dict[str, float]:
    """mIoU and pixel accuracy (%) of a confusion matrix (rows = ground truth)."""
    h = confusion.double()
    total = h.sum()
    if total == 0:
        raise ValueError("segmentation metrics of a split without any labelled pixel")
    hits = torch.diag(h)
    union = h.sum(0) + h.sum(1) - hits
    present = union > 0
    iou = hits[present] / union[present]
    return {"miou": 100.0 * float(iou.mean()), "pixacc": 100.0 * float(hits.sum() / total)}


class SegmentationMeter:
    """Confusion matrix of the whole split, on the device."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion: Tensor | None = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        labels = match_size(pred.detach(), target).argmax(dim=1)
        h = confusion_matrix(labels, target, self.num_classes)
        self.confusion = h if self.confusion is None else self.confusion + h

    def compute(self) -> dict[str, float]:
        if self.confusion is None:
            raise ValueError("segmentation metrics of an empty split")
        return segmentation_scores(self.confusion)


def segmentation_task(name: str = "seg", num_classes: int = 13) -> TaskSpec:
    if num_classes < 2:
        raise ValueError(f"segmentation_task: num_classes={num_classes} must be at least 2")
    return TaskSpec(name, segmentation_loss, (MIOU, PIXACC),
                    lambda: SegmentationMeter(num_classes),
                    f"semantic segmentation, {num_classes} classes, −1 = ignore")


# --------------------------------------------------------------------------- depth

def _depth_mask(target: Tensor) -> Tensor:
    return target != 0


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 over the pixels whose depth is not 0 (mean over those pixels)."""
    pred = match_size(pred, target)
    mask = _depth_mask(target)
    return ((pred - target).abs() * mask).sum() / mask.sum().clamp_min(1)


class DepthMeter:
    """Sums of absolute and relative errors and the count of valid pixels of the split."""

    def __init__(self) -> None:
        self.abs_sum: Tensor | None = None
        self.rel_sum: Tensor | None = None
        self.count: Tensor | None = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred = match_size(pred.detach(), target)
        mask = _depth_mask(target)
        err = (pred - target).abs()[mask]
        self.abs_sum = _add(self.abs_sum, err.sum())
        self.rel_sum = _add(self.rel_sum, (err / target[mask].abs()).sum())
        n = mask.sum()
        self.count = n if self.count is None else self.count + n

    def compute(self) -> dict[str, float]:
        if self.count is None or int(self.count) == 0:
            raise ValueError("depth metrics of a split without any valid pixel")
        n = float(self.count)
        return {"abs_err": float(self.abs_sum) / n, "rel_err": float(self.rel_sum) / n}


def depth_task(name: str = "depth") -> TaskSpec:
    return TaskSpec(name, depth_loss, (ABS_ERR, REL_ERR), DepthMeter,
                    "depth, L1 over valid pixels (0 = invalid)")


# --------------------------------------------------------------------------- normals

def _normal_mask(target: Tensor) -> Tensor:
    return (target != 0).any(dim=1)


UNIT_EPS = 1e-12
"""As F.normalize: a vector shorter than this is divided by it instead of its norm."""


def _unit(pred: Tensor) -> Tensor:
    """pred / max(‖pred‖₂, ε) along the channel dimension: F.normalize's value, computed
    as the root of a sum of squares. torch's norm over the short, strided channel dimension
    of an NCHW tensor is about 100× slower on the CPU (2.5 ms against 0.02 ms for the scenes
    batch). The clamp comes before the root, so a zero vector gets a zero gradient, not NaN."""
    squared = pred.square().sum(dim=1, keepdim=True)
    return pred / squared.clamp_min(UNIT_EPS ** 2).sqrt()


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 − mean cosine between the normalised prediction and the target over valid pixels."""
    pred = _unit(match_size(pred, target))
    mask = _normal_mask(target)
    cosine = (pred * target).sum(dim=1)
    return 1 - (cosine * mask).sum() / mask.sum().clamp_min(1)


def normal_angles(pred: Tensor, target: Tensor) -> Tensor:
    """Angles in degrees between the normalised prediction and the target, valid pixels."""
    pred = _unit(match_size(pred, target))
    cosine = (pred * target).sum(dim=1)[_normal_mask(target)]
    return torch.rad2deg(torch.acos(cosine.clamp(-1, 1)))


def exact_median(values: Tensor) -> float:
    """The median of a 1-D tensor; the mean of the two middle values for an even count.
    (A sort, not kthvalue: kthvalue is flagged non-deterministic on CUDA.)"""
    ordered = torch.sort(values).values
    n = ordered.numel()
    upper = float(ordered[n // 2])
    return upper if n % 2 else (float(ordered[n // 2 - 1]) + upper) / 2


def normal_scores(angles: Tensor) -> dict[str, float]:
    """Mean, median (degrees) and % within each threshold of a 1-D tensor of angles."""
    n = angles.numel()
    if n == 0:
        raise ValueError("normal metrics of a split without any valid pixel")
    scores = {"angle_mean": float(angles.double().sum()) / n, "angle_median": exact_median(angles)}
    for t, spec in zip(NORMAL_THRESHOLDS, WITHIN):
        scores[spec.name] = 100.0 * float((angles < t).sum()) / n
    return scores


class NormalMeter:
    """Keeps the angle of every valid pixel of the split on the device (exact median)."""

    def __init__(self) -> None:
        self.angles: list[Tensor] = []

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.angles.append(normal_angles(pred.detach(), target))

    def compute(self) -> dict[str, float]:
        if not self.angles:
            raise ValueError("normal metrics of an empty split")
        return normal_scores(torch.cat(self.angles))


def normal_task(name: str = "normal") -> TaskSpec:
    return TaskSpec(name, normal_loss, (ANGLE_MEAN, ANGLE_MEDIAN, *WITHIN), NormalMeter,
                    "surface normals, 1 − cosine over valid pixels (0 vector = invalid)")
