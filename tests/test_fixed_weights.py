"""Fixed task weights (``fixed``, linear scalarization): the weights applied are exactly the
configured ones, empty means equal weighting, out-of-domain weights are refused naming the
option, the state survives a checkpoint, and runs end to end (where empty weights give the
very run of ``ew``)."""
from __future__ import annotations

import io
import math

import pytest
import torch

from engine.errors import ConfigError
from engine.runs.runner import build_requests
from methods.ew import EqualWeighting
from methods.fixed import FixedConfig, FixedWeights
from methods.registry import METHODS
from tests.helpers import TINY_DIGITS, read_records, tiny_run

TASKS = ("a", "b", "c")


class FakeContext:
    """The part of the engine's StepContext a loss weighting without needs reads."""

    def __init__(self, losses: torch.Tensor):
        self.losses = losses
        self.raw_losses = losses
        self.task_names = TASKS[:losses.shape[0]]


def build(weights=(), names=TASKS) -> FixedWeights:
    config = FixedConfig(weights=tuple(weights))
    config.validate()
    return FixedWeights(config, names)


def test_registered_as_a_weighting_without_needs():
    assert METHODS.get("fixed") is FixedWeights
    assert FixedWeights.kind == "weighting"
    assert FixedWeights.Config is FixedConfig and FixedConfig().weights == ()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_applies_exactly_the_given_weights(dtype):
    method = build([0.1, 0.0, 2.5])
    losses = torch.tensor([3.0, 1.0, 0.5], dtype=dtype, requires_grad=True)
    out = method.weigh(FakeContext(losses))
    assert out.weights.dtype == dtype and not out.weights.requires_grad
    expected = torch.tensor([0.1, 0.0, 2.5], dtype=dtype)
    assert torch.equal(out.weights, expected)  # no normalisation, no rounding via float32
    # The same weights at every step, whatever the losses.
    later = method.weigh(FakeContext(torch.tensor([9.0, 1e-3, 7.0], dtype=dtype)))
    assert torch.equal(later.weights, expected)


def test_objective_is_the_weighted_sum():
    method = build([2.0, 0.5, 1.0])
    losses = torch.tensor([1.0, 4.0, 3.0], dtype=torch.float64, requires_grad=True)
    out = method.weigh(FakeContext(losses))
    objective = out.objective if out.objective is not None else (out.weights * losses).sum()
    assert objective.item() == pytest.approx(2.0 + 2.0 + 3.0, rel=1e-12)
    (grad,) = torch.autograd.grad(objective, losses)
    assert grad.tolist() == [2.0, 0.5, 1.0]


def test_empty_weights_are_equal_weighting():
    losses = torch.tensor([0.3, 2.0, 1.5], dtype=torch.float64)
    fixed = build().weigh(FakeContext(losses)).weights
    ew = EqualWeighting(EqualWeighting.Config(), TASKS).weigh(FakeContext(losses)).weights
    assert torch.equal(fixed, ew) and fixed.tolist() == [1.0, 1.0, 1.0]
    assert build(names=("x", "y")).weigh(FakeContext(losses[:2])).weights.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("weights", [[1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
def test_wrong_number_of_weights_is_refused(weights):
    with pytest.raises(ConfigError, match=r"method\.fixed\.weights has \d values; expected one "
                                          r"per task \(3\)"):
        build(weights)


@pytest.mark.parametrize("weights, message", [
    ([0.0, 0.0, 0.0], "all 0"),
    ([1.0, -0.5, 1.0], "out of range"),
    ([1.0, math.nan, 1.0], "finite"),
    ([1.0, math.inf, 1.0], "finite"),
])
def test_out_of_domain_weights_are_refused_by_the_config_and_the_method(weights, message):
    config = FixedConfig(weights=tuple(weights))
    with pytest.raises(ConfigError, match=message) as exc:
        config.validate()
    assert "method.fixed.weights" in str(exc.value)
    with pytest.raises(ConfigError, match="method.fixed.weights"):
        FixedWeights(config, TASKS)  # also when built without validate()


def test_bad_weights_are_refused_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="method.fixed.weights"):
        build_requests("digits_tasks", ["fixed"], [0], "quick",
                       [*TINY_DIGITS, "method.fixed.weights=[1, -1, 0]"], "cpu", None)
    (request,) = build_requests("digits_tasks", ["fixed"], [0], "quick",
                                [*TINY_DIGITS, "method.fixed.weights=[1, 0, 2]"], "cpu", None)
    assert request.config.methods["fixed"].weights == (1.0, 0.0, 2.0)


def roundtrip(method: FixedWeights) -> dict:
    """The state dict as a checkpoint stores and loads it."""
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_round_trip():
    method = build([0.2, 0.3, 0.5])
    state = roundtrip(method)
    assert state["weights"].tolist() == [0.2, 0.3, 0.5]
    fresh = build([0.2, 0.3, 0.5])
    fresh.load_state_dict(state)
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.equal(fresh.weigh(FakeContext(losses)).weights,
                       method.weigh(FakeContext(losses)).weights)


def test_runs_and_records_the_given_weights(tmp_path):
    (outcome,) = tiny_run("digits_tasks", "fixed", tmp_path,
                          [*TINY_DIGITS, "method.fixed.weights=[1, 0, 0.25]"])
    assert outcome.status == "complete", outcome.reason
    train = [r for r in read_records(outcome.run_dir) if r["split"] == "train"]
    assert train and all(r["weights"] == {"first": 1.0, "second": 0.0, "sum": 0.25}
                         for r in train)


def test_empty_weights_give_the_run_of_ew(tmp_path):
    (fixed,) = tiny_run("digits_tasks", "fixed", tmp_path / "fixed", TINY_DIGITS)
    (ew,) = tiny_run("digits_tasks", "ew", tmp_path / "ew", TINY_DIGITS)
    assert fixed.status == ew.status == "complete"

    def metrics(run_dir):
        return [(r["split"], r.get("losses"), r.get("metrics"), r.get("weights"))
                for r in read_records(run_dir)]

    assert metrics(fixed.run_dir) == metrics(ew.run_dir)
