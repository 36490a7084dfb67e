"""digits_tasks: the sum trained standardized by default, raw as the imbalanced variant."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.digits_tasks import DigitsTasks, DigitsTasksConfig
from benchmarks.metrics import RegressionMeter
from engine.errors import ConfigError

SMALL = dict(train_size=256, val_size=64, test_size=64)


def _bench(**changes) -> DigitsTasks:
    config = DigitsTasksConfig(**SMALL, **changes)
    config.validate()
    return DigitsTasks(config, None, torch.device("cpu"))


def _initial_losses(bench: DigitsTasks) -> dict[str, float]:
    torch.manual_seed(0)
    encoder = bench.make_encoder()
    split = bench.splits["train"]
    with torch.no_grad():
        z = encoder(split.inputs)
    with torch.no_grad():
        return {t.name: float(t.loss(bench.make_head(t)(z), split.targets[t.name]))
                for t in bench.tasks}


def test_default_losses_start_on_one_scale_and_raw_is_imbalanced():
    balanced = _initial_losses(_bench())
    raw = _initial_losses(_bench(sum_target="raw"))
    ce = balanced["first"]
    assert abs(ce - math.log(10)) < 0.3
    assert 0.3 < balanced["sum"] / ce < 3  # standardized: an MSE near 1
    assert raw["sum"] / raw["first"] > 10  # raw: the loss-scale imbalance, named and opt-in


def test_standardized_metrics_stay_in_the_sum_units():
    bench = _bench()
    task = bench.tasks[2]
    sums = bench.splits["test"].targets["sum"]
    meter = task.meter()
    pred = (sums + 1.0 - meter.offset) / meter.scale  # a prediction off by exactly 1 in sum units
    meter.update(pred.unsqueeze(1), sums)
    out = meter.compute()
    assert out["mae"] == pytest.approx(1.0, abs=1e-5) and out["rmse"] == pytest.approx(1.0, abs=1e-5)
    train = bench.splits["train"].targets["sum"]
    assert meter.offset == pytest.approx(float(train.mean()))
    assert meter.scale == pytest.approx(float(train.std()))
    assert float(task.loss(pred.unsqueeze(1), sums)) == pytest.approx(1 / meter.scale ** 2, rel=1e-4)


def test_raw_meter_is_the_plain_error():
    meter = RegressionMeter()
    meter.update(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 2.0]))
    assert meter.compute() == {"mae": 1.0, "rmse": 1.0}


def test_unknown_sum_target_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="standardized, raw"):
        DigitsTasksConfig(sum_target="log").validate()
