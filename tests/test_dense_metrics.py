"""Golden values of the dense-prediction losses and metrics, computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.dense import depth_task, normal_task, segmentation_task


def one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, H, W] labels -> [B, C, H, W] logits whose argmax is the label."""
    return F.one_hot(labels.clamp_min(0), num_classes).permute(0, 3, 1, 2).float() * 5.0


# ----------------------------------------------------------------------------- segmentation

def test_segmentation_miou_and_pixacc_by_hand():
    # Valid pixels (gt, pred): (0,0) (1,2) (2,2) (1,1) (0,1); the -1 pixel is ignored.
    # Confusion rows = gt: [[1,1,0],[0,1,1],[0,0,1]]
    # IoU = 1/2, 1/3, 1/2 -> mIoU = 4/9; pixel accuracy = 3/5.
    target = torch.tensor([[[0, 1, 2], [-1, 1, 0]]])
    pred = torch.tensor([[[0, 2, 2], [1, 1, 1]]])
    task = segmentation_task(num_classes=3)
    meter = task.meter()
    meter.update(one_hot_logits(pred, 3), target)
    scores = meter.compute()
    assert scores["miou"] == pytest.approx(100 * 4 / 9)
    assert scores["pixacc"] == pytest.approx(60.0)
    assert {m.name: m.higher_is_better for m in task.metrics} == {"miou": True, "pixacc": True}


def test_segmentation_accumulates_over_the_split_not_per_batch():
    # Batch 1: one pixel gt 0 predicted 0. Batch 2: three pixels gt 1 predicted 0.
    # Split: h = [[1,0],[3,0]]; IoU0 = 1/4, IoU1 = 0 -> mIoU 12.5 %; pixacc 25 %.
    # (The mean of per-batch mIoUs would be (100 + 0) / 2 = 50 %.)
    meter = segmentation_task(num_classes=2).meter()
    meter.update(one_hot_logits(torch.tensor([[[0]]]), 2), torch.tensor([[[0]]]))
    meter.update(one_hot_logits(torch.tensor([[[0, 0, 0]]]), 2), torch.tensor([[[1, 1, 1]]]))
    scores = meter.compute()
    assert scores["miou"] == pytest.approx(12.5)
    assert scores["pixacc"] == pytest.approx(25.0)


def test_segmentation_leaves_out_a_class_absent_everywhere():
    # Class 3 appears neither in gt nor in predictions: mean over classes 0..2 only.
    target = torch.tensor([[[0, 1, 2]]])
    meter = segmentation_task(num_classes=4).meter()
    meter.update(one_hot_logits(target, 4), target)
    assert meter.compute()["miou"] == pytest.approx(100.0)


def test_segmentation_loss_ignores_minus_one_and_upsamples():
    target = torch.tensor([[[0, -1], [1, -1]]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0] = 2.0  # class 0 wins everywhere by 2 logits
    loss = segmentation_task(num_classes=2).loss(logits, target)
    # gt 0: -log(e^2/(e^2+1)); gt 1: -log(1/(e^2+1)); mean over the 2 valid pixels.
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # A 1x1 prediction is upsampled to 2x2: same constant logits, same loss.
    small = logits[:, :, :1, :1].clone()
    assert float(segmentation_task(num_classes=2).loss(small, target)) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- depth

def test_depth_errors_by_hand_over_two_batches():
    task = depth_task()
    meter = task.meter()
    # Batch 1: valid gt 2, 4, 1 with errors 1, 1, 0 (the 0 pixel is invalid).
    t1 = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])
    p1 = torch.tensor([[[[1.0, 5.0], [5.0, 1.0]]]])
    assert float(task.loss(p1, t1)) == pytest.approx(2 / 3)
    meter.update(p1, t1)
    # Batch 2: one valid pixel, gt 2, error 1.
    t2 = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]]])
    p2 = torch.tensor([[[[9.0, 9.0], [9.0, 3.0]]]])
    meter.update(p2, t2)
    scores = meter.compute()
    # abs = (1 + 1 + 0 + 1) / 4; rel = (1/2 + 1/4 + 0 + 1/2) / 4
    assert scores["abs_err"] == pytest.approx(0.75)
    assert scores["rel_err"] == pytest.approx(0.3125)
    assert all(not m.higher_is_better for m in task.metrics)


def test_depth_loss_upsamples_prediction():
    target = torch.full((1, 1, 4, 4), 3.0)
    pred = torch.full((1, 1, 2, 2), 1.0)
    assert float(depth_task().loss(pred, target)) == pytest.approx(2.0)


def test_depth_meter_upsamples_bilinear_align_corners():
    # Width 2 -> 4 with align_corners=True samples at 0, 1/3, 2/3, 1: pred [0, 3] becomes
    # [0, 1, 2, 3]; errors against 1 are 1, 0, 1, 2 -> abs_err 1.0. (align_corners=False
    # would give [0, .75, 2.25, 3] and 1.125.)
    meter = depth_task().meter()
    meter.update(torch.tensor([[[[0.0, 3.0]]]]), torch.ones(1, 1, 1, 4))
    assert meter.compute()["abs_err"] == pytest.approx(1.0, abs=1e-6)


def test_depth_loss_without_valid_pixel_is_zero_not_nan():
    assert float(depth_task().loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))) == 0.0


# ----------------------------------------------------------------------------- normals

def normals_batch(angles_deg: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (0,0,1) in a row of pixels plus one invalid pixel; predictions tilted by the
    given angles in the x-z plane with arbitrary lengths (they are normalised)."""
    n = len(angles_deg)
    target = torch.zeros(1, 3, 1, n + 1)
    target[0, 2, 0, :n] = 1.0
    pred = torch.zeros(1, 3, 1, n + 1)
    for i, a in enumerate(angles_deg):
        r = math.radians(a)
        pred[0, :, 0, i] = torch.tensor([math.sin(r), 0.0, math.cos(r)]) * (i + 2)
    pred[0, :, 0, n] = torch.tensor([1.0, 0.0, 0.0])  # at the invalid pixel: ignored
    return pred, target


def test_normal_angle_statistics_by_hand():
    task = normal_task()
    meter = task.meter()
    pred, target = normals_batch([0.0, 10.0, 20.0, 90.0])
    meter.update(pred, target)
    scores = meter.compute()
    assert scores["angle_mean"] == pytest.approx(30.0, abs=1e-3)
    assert scores["angle_median"] == pytest.approx(15.0, abs=1e-3)  # mean of 10 and 20
    assert scores["within_11.25"] == pytest.approx(50.0)
    assert scores["within_22.5"] == pytest.approx(75.0)
    assert scores["within_30"] == pytest.approx(75.0)
    directions = {m.name: m.higher_is_better for m in task.metrics}
    assert directions == {"angle_mean": False, "angle_median": False, "within_11.25": True,
                          "within_22.5": True, "within_30": True}


def test_normal_statistics_span_batches_with_odd_count():
    meter = normal_task().meter()
    for angles in ([0.0, 10.0, 20.0, 90.0], [25.0]):
        meter.update(*normals_batch(angles))
    scores = meter.compute()
    assert scores["angle_median"] == pytest.approx(20.0, abs=1e-3)
    assert scores["angle_mean"] == pytest.approx(29.0, abs=1e-3)
    assert scores["within_30"] == pytest.approx(80.0)


def test_normal_loss_is_one_minus_mean_cosine_over_valid_pixels():
    pred, target = normals_batch([0.0, 10.0, 20.0, 90.0])
    expected = 1 - (1 + math.cos(math.radians(10)) + math.cos(math.radians(20)) + 0) / 4
    assert float(normal_task().loss(pred, target)) == pytest.approx(expected, abs=1e-6)


def test_normal_meter_upsamples_before_normalising():
    target = torch.zeros(1, 3, 3, 3)
    target[:, 2] = 1.0
    pred = torch.zeros(1, 3, 1, 1)
    pred[0, 2] = 7.0  # constant direction (0, 0, 1) after upsampling and normalising
    meter = normal_task().meter()
    meter.update(pred, target)
    assert meter.compute()["angle_mean"] == pytest.approx(0.0, abs=1e-2)


def test_unit_normals_are_f_normalize_with_finite_gradients_at_zero():
    from benchmarks.dense import _unit

    x = torch.randn(4, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(_unit(x), F.normalize(x, dim=1), rtol=1e-14, atol=0)
    r = torch.randn_like(x)
    (mine,) = torch.autograd.grad((_unit(x) * r).sum(), x)
    (theirs,) = torch.autograd.grad((F.normalize(x, dim=1) * r).sum(), x)
    torch.testing.assert_close(mine, theirs)
    zero = torch.zeros(1, 3, 2, 2, requires_grad=True)
    _unit(zero).sum().backward()
    assert torch.equal(_unit(zero), zero.detach()) and torch.isfinite(zero.grad).all()
