"""MoCo and DB-MTL, the aggregators that track the task gradients across steps (moving
averages kept in their state): golden values derived by hand from the papers' formulas,
properties, state round-trips, the heads' scaled gradients, refused hyperparameters and
tiny end-to-end runs. float64 throughout."""
from __future__ import annotations

import math

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from engine.errors import ConfigError
from methods.dbmtl import dbmtl_update
from methods.moco import MoCoConfig, moco_update, project_simplex
from tests.helpers import TINY_DIGITS, read_records, tiny_run
from tests.method_support import (D, NAMES, FakeContext, make, one_engine_step, random_jacobian,
                                   state_round_trip)

# ---------------------------------------------------------------------------- MoCo

def test_project_simplex_golden():
    torch.testing.assert_close(project_simplex(torch.tensor([1.2, 0.4, -1.0], dtype=D)),
                               torch.tensor([0.9, 0.1, 0.0], dtype=D))
    torch.testing.assert_close(project_simplex(torch.tensor([0.3, 0.3], dtype=D)),
                               torch.tensor([0.5, 0.5], dtype=D))
    torch.testing.assert_close(project_simplex(torch.tensor([2.0, 0.0], dtype=D)),
                               torch.tensor([1.0, 0.0], dtype=D))
    torch.testing.assert_close(project_simplex(torch.tensor([0.2, 0.8], dtype=D)),
                               torch.tensor([0.2, 0.8], dtype=D))


def test_project_simplex_is_shift_invariant_and_exact_at_huge_scales():
    """P(v + c·1) = P(v); entries of 1e20 (where v − 1 rounds to v) still land on the simplex."""
    v = torch.tensor([1.2, 0.4, -1.0], dtype=D)
    torch.testing.assert_close(project_simplex(v + 1e3), project_simplex(v))
    huge = project_simplex(torch.tensor([1e20, -3e20, 5e19], dtype=D))
    torch.testing.assert_close(huge, torch.tensor([1.0, 0.0, 0.0], dtype=D))
    tied = project_simplex(torch.tensor([1e20, 1e20], dtype=D))
    torch.testing.assert_close(tied, torch.tensor([0.5, 0.5], dtype=D))


def test_moco_first_step_golden():
    # y1 = 0.5 g = diag(1, 0.5); λ = Π(0.5 − 0.1 · diag(1, 0.25) · 0.5) = Π(0.45, 0.4875)
    grads = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=D)
    y, lambd = moco_update(torch.zeros_like(grads), torch.full((2,), 0.5, dtype=D), grads, 1,
                           MoCoConfig())
    torch.testing.assert_close(y, torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=D))
    torch.testing.assert_close(lambd, torch.tensor([0.48125, 0.51875], dtype=D))
    method = make("moco")
    out = method.aggregate(grads, FakeContext([1.0, 1.0]))
    torch.testing.assert_close(out.direction, torch.tensor([0.48125, 0.259375], dtype=D))
    assert out.weights is None


def test_moco_second_step_decays_and_libmtl_options():
    cfg = MoCoConfig(beta=0.5, beta_sigma=0.5)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    y1, l1 = moco_update(torch.zeros_like(g), torch.full((2,), 0.5, dtype=D), g, 1, cfg)
    y2, _ = moco_update(y1, l1, 3 * g, 2, cfg)
    b2 = 0.5 / math.sqrt(2)
    torch.testing.assert_close(y2, y1 - b2 * (y1 - 3 * g))
    softmax = make("moco", lambda_update="softmax", grad_normalization="loss")
    ctx = FakeContext([2.0, 0.5])
    out = softmax.aggregate(torch.tensor([[3.0, 4.0], [0.0, 10.0]], dtype=D), ctx)
    # normalised gradients: [0.6, 0.8]·2 and [0, 1]·0.5; y1 = half of them
    y = torch.tensor([[0.6, 0.8], [0.0, 0.25]], dtype=D)
    lam = torch.softmax(0.5 - 0.1 * (y @ y.T) @ torch.full((2,), 0.5, dtype=D), 0)
    torch.testing.assert_close(out.direction, y.T @ lam)


def test_moco_state_round_trip_continues_identically():
    a, b = make("moco", names=NAMES), make("moco", names=NAMES)
    grads = [random_jacobian(s) for s in range(3)]
    a.aggregate(grads[0], FakeContext([1.0] * 3))
    b.aggregate(grads[0], FakeContext([1.0] * 3))
    restored = state_round_trip(a, make("moco", names=NAMES))
    for g in grads[1:]:
        torch.testing.assert_close(restored.aggregate(g, FakeContext([1.0] * 3)).direction,
                                   b.aggregate(g, FakeContext([1.0] * 3)).direction)


# ---------------------------------------------------------------------------- DB-MTL

def test_dbmtl_first_steps_golden():
    # log-loss gradients: [3,0]/3 = [1,0] and [0,4]/1 = [0,4]; EMA after step 1: 0.1 of them
    method = make("dbmtl")
    grads = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=D)
    out = method.aggregate(grads, FakeContext([3.0, 1.0]))
    torch.testing.assert_close(out.direction, torch.tensor([0.4, 0.4], dtype=D), rtol=1e-6, atol=0)
    # step 2: decay 0.9/√2, same log-gradients
    decay = 0.9 / math.sqrt(2)
    ema = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=D) * (1 - decay * 0.9)
    out = method.aggregate(grads, FakeContext([3.0, 1.0]))
    expected = ema[0] * (ema[1].norm() / ema[0].norm()) + ema[1]
    torch.testing.assert_close(out.direction, expected, rtol=1e-6, atol=0)


def test_dbmtl_is_invariant_to_loss_scale():
    grads, losses = random_jacobian(7), torch.tensor([0.5, 2.0, 1.5], dtype=D)
    base = make("dbmtl", names=NAMES).aggregate(grads, FakeContext(losses)).direction
    scale = torch.tensor([10.0, 0.1, 3.0], dtype=D)  # L_t -> c_t L_t scales ∇L_t by c_t
    scaled = make("dbmtl", names=NAMES).aggregate(grads * scale[:, None],
                                                  FakeContext(losses * scale))
    torch.testing.assert_close(scaled.direction, base)
    _, scales, _ = dbmtl_update(torch.zeros_like(grads), grads, 1, 0.9, 0.5)
    assert float(scales.min()) == pytest.approx(1.0)


def test_dbmtl_state_round_trip_continues_identically():
    a, b = make("dbmtl", names=NAMES), make("dbmtl", names=NAMES)
    losses = FakeContext([1.0, 2.0, 0.5])
    a.aggregate(random_jacobian(0), losses)
    b.aggregate(random_jacobian(0), losses)
    restored = state_round_trip(a, make("dbmtl", names=NAMES))
    torch.testing.assert_close(restored.aggregate(random_jacobian(1), losses).direction,
                               b.aggregate(random_jacobian(1), losses).direction)

@pytest.mark.parametrize("jacobian", ["loop", "batched"])
def test_dbmtl_heads_get_the_reference_codes_scaled_gradients(jacobian):
    # DB-MTL's heads are trained on log(L_t + 1e-8)
    dbmtl = make("dbmtl", names=("first", "second", "sum"))
    losses, heads, own, tasks = one_engine_step(dbmtl, jacobian)
    for i, t in enumerate(tasks):
        for got, ref in zip(heads[t], own[t]):
            torch.testing.assert_close(got, ref / (losses[i] + 1e-8))


# ---------------------------------------------------------------------------- config

@pytest.mark.parametrize("name, field, value", [
    ("moco", "beta", 1.5), ("moco", "gamma", 0.0), ("moco", "lambda_update", "exp"),
    ("moco", "grad_normalization", "l2"), ("dbmtl", "beta", 1.0), ("dbmtl", "beta_sigma", -1.0),
])
def test_bad_hyperparameters_are_refused(name, field, value):
    with pytest.raises(ConfigError, match=f"method.{name}.{field}"):
        make(name, **{field: value})


# ---------------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.parametrize("name", ['moco', 'dbmtl'])
def test_trains_end_to_end(name, tmp_path):
    # the raw-scale sum (the imbalanced variant): a loss and gradient far larger than the others'
    (outcome,) = tiny_run("digits_tasks", name, tmp_path, [*TINY_DIGITS, "data.sum_target=raw"])
    assert outcome.status == "complete", outcome.reason
    train = read_records(outcome.run_dir)[0]
    assert all(math.isfinite(v) for v in train["losses"].values())
