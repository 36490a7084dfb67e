"""Nash-MTL and FairGrad, the aggregators whose weights solve a system on the Gramian (the
Nash bargaining solution; α-fair utilities, of which α = 1 is Nash's): golden values
derived by hand from the papers' formulas, properties, state round-trips, failure
accounting, the heads' scaled gradients, refused hyperparameters and tiny end-to-end runs.
float64 throughout."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import methods  # noqa: F401  (registers every method)
from engine.errors import ConfigError
from methods._nash_solver import nash_weights
from methods.fairgrad import fairgrad_weights
from tests.helpers import TINY_DIGITS, read_records, read_summary, tiny_run
from tests.method_support import (D, NAMES, FakeContext, make, one_engine_step, random_jacobian,
                                   state_round_trip)

# ---------------------------------------------------------------------------- Nash-MTL

def test_nash_orthogonal_gradients_get_inverse_norms():
    # (Gα)_i = ‖g_i‖² α_i = 1/α_i  =>  α_i = 1/‖g_i‖
    grads = torch.tensor([[3.0, 0, 0], [0, 0.5, 0], [0, 0, 8.0]], dtype=D)
    solution = nash_weights(grads @ grads.T)
    assert solution.converged
    np.testing.assert_allclose(solution.alpha, [1 / 3, 2.0, 1 / 8], rtol=1e-6)


def test_nash_two_unit_gradients_at_an_angle():
    # G = [[1, c], [c, 1]]; by symmetry α1 = α2 = a with a(a + c a) = 1
    c = 0.5
    solution = nash_weights(np.array([[1.0, c], [c, 1.0]]))
    np.testing.assert_allclose(solution.alpha, [1 / math.sqrt(1 + c)] * 2, rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_nash_solves_the_bargaining_equations(seed):
    grads = random_jacobian(seed, tasks=4, dim=9)
    gram = (grads @ grads.T).numpy()
    solution = nash_weights(gram)
    assert solution.converged
    alpha = solution.alpha
    assert (alpha > 0).all()
    np.testing.assert_allclose(alpha * (gram @ alpha), 1.0, atol=1e-6)
    # warm start from a nearby point converges too, to the same α
    warm = nash_weights(gram, init=alpha * 1.3)
    np.testing.assert_allclose(warm.alpha, alpha, rtol=1e-6)


def test_nash_scaling_and_permutation():
    grads = random_jacobian(1)
    alpha = nash_weights(grads @ grads.T).alpha
    scaled = nash_weights((5 * grads) @ (5 * grads).T).alpha
    np.testing.assert_allclose(scaled, alpha / 5, rtol=1e-6)
    perm = [2, 0, 1]
    permuted = nash_weights(grads[perm] @ grads[perm].T).alpha
    np.testing.assert_allclose(permuted, alpha[perm], rtol=1e-6)


def test_nashmtl_weights_move_away_from_equal_weighting():
    # Orthogonal gradients of norms 1 and 10: equal weights would let the second task
    # dominate; the bargaining weights are 1 and 0.1, and each task's utility g_iᵀd is 1/α_i.
    method = make("nashmtl", max_norm=0.0)
    grads = torch.tensor([[1.0, 0.0], [0.0, 10.0]], dtype=D)
    ctx = FakeContext([1.0, 1.0])
    out = method.aggregate(grads, ctx)
    torch.testing.assert_close(out.weights, torch.tensor([1.0, 0.1], dtype=D))
    torch.testing.assert_close(out.direction, torch.tensor([1.0, 1.0], dtype=D))
    torch.testing.assert_close(grads @ out.direction, 1 / out.weights)
    assert method.run_report() == {"solves": 1, "solver_failures": 0}


def test_nashmtl_clips_and_records_applied_weights():
    method = make("nashmtl", names=NAMES)  # max_norm = 1.0
    grads = random_jacobian(3) * 1e-3  # small gradients: large α, long direction
    out = method.aggregate(grads, FakeContext([1.0, 2.0, 3.0]))
    assert torch.linalg.vector_norm(out.direction) <= 1.0 + 1e-9
    torch.testing.assert_close(grads.T @ out.weights, out.direction)


def test_nashmtl_updates_every_k_steps_and_round_trips_state():
    method = make("nashmtl", update_weights_every=2, max_norm=0.0)
    first = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=D)
    second = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=D)
    method.aggregate(first, FakeContext([1.0, 1.0]))
    out = method.aggregate(second, FakeContext([1.0, 1.0]))  # reuses step 0's α
    torch.testing.assert_close(out.weights, torch.tensor([1.0, 0.5], dtype=D))
    restored = state_round_trip(method, make("nashmtl", update_weights_every=2, max_norm=0.0))
    out = restored.aggregate(second, FakeContext([1.0, 1.0]))  # step 2: solves again
    torch.testing.assert_close(out.weights, torch.tensor([0.25, 1.0], dtype=D))
    assert restored.run_report() == {"solves": 2, "solver_failures": 0}


def test_nashmtl_failed_solve_is_counted_not_swallowed():
    # Exactly opposed gradients: no direction helps both tasks, no bargaining solution.
    method = make("nashmtl", max_norm=0.0)
    good = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=D)
    method.aggregate(good, FakeContext([1.0, 1.0]))
    ctx = FakeContext([1.0, 1.0])
    opposed = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=D)
    out = method.aggregate(opposed, ctx)
    assert ctx.logged["solver_failures"] == [1.0]
    assert method.run_report() == {"solves": 2, "solver_failures": 1}
    # the previous α is kept, as the authors' code does on a solver error
    torch.testing.assert_close(out.weights, torch.tensor([1.0, 0.5], dtype=D))
    assert not nash_weights(np.array([[1.0, np.nan], [np.nan, 1.0]])).converged
    restored = state_round_trip(method, make("nashmtl", max_norm=0.0))
    assert restored.run_report()["solver_failures"] == 1


# ---------------------------------------------------------------------------- FairGrad

@pytest.mark.parametrize("solver", ["newton", "least_squares"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_orthogonal_golden(alpha, solver):
    # ‖g_i‖² w_i = w_i^{-1/α}  =>  w_i = ‖g_i‖^{-2α/(α+1)}
    norms = np.array([2.0, 0.5, 3.0])
    solution = fairgrad_weights(np.diag(norms ** 2), alpha, solver=solver)
    assert solution.converged
    np.testing.assert_allclose(solution.weights, norms ** (-2 * alpha / (alpha + 1)), rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_fairgrad_solves_its_equations_and_alpha_one_is_nash(seed):
    grads = random_jacobian(seed + 10)
    gram = (grads @ grads.T).numpy()
    for alpha in (1.0, 2.0):
        w = fairgrad_weights(gram, alpha).weights
        np.testing.assert_allclose(gram @ w, w ** (-1 / alpha), rtol=1e-6)
    np.testing.assert_allclose(fairgrad_weights(gram, 1.0).weights, nash_weights(gram).alpha,
                               rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_newton_finds_the_authors_least_squares_root(alpha):
    # The root is unique, so the fast solver must land where the authors' solver does, on
    # random Gramians of 2-8 tasks, well and badly conditioned (condition up to ~1e6).
    rng = np.random.default_rng(0)
    compared = 0
    for trial in range(40):
        tasks = int(rng.integers(2, 9))
        basis = rng.normal(size=(tasks, 32))
        basis *= np.logspace(0, rng.uniform(0, 3), tasks)[:, None]
        gram = basis @ basis.T
        reference = fairgrad_weights(gram, alpha, solver="least_squares")
        fast = fairgrad_weights(gram, alpha, solver="newton")
        assert fast.converged and fast.residual <= 1e-6
        if reference.converged:
            np.testing.assert_allclose(fast.weights, reference.weights, rtol=1e-6)
            compared += 1
    assert compared >= 30


def test_fairgrad_direction_is_t_times_the_combination_then_clipped():
    grads = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=D)
    method = make("fairgrad", alpha=1.0, max_norm=0.0)
    out = method.aggregate(grads, FakeContext([1.0, 1.0]))
    torch.testing.assert_close(out.weights, 2 * torch.tensor([0.5, 2.0], dtype=D))
    torch.testing.assert_close(out.direction, torch.tensor([2.0, 2.0], dtype=D))
    clipped = make("fairgrad", alpha=1.0).aggregate(grads, FakeContext([1.0, 1.0]))
    assert abs(float(torch.linalg.vector_norm(clipped.direction)) - 1.0) < 1e-5
    torch.testing.assert_close(grads.T @ clipped.weights, clipped.direction)


def test_fairgrad_failed_solve_is_counted():
    method = make("fairgrad")
    ctx = FakeContext([1.0, 1.0])
    out = method.aggregate(torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=D), ctx)
    assert ctx.logged["solver_failures"] == [1.0]
    assert method.run_report() == {"solves": 1, "solver_failures": 1}
    assert torch.isfinite(out.direction).all()
    restored = state_round_trip(method, make("fairgrad"))
    assert restored.run_report()["solver_failures"] == 1

@pytest.mark.parametrize("jacobian", ["loop", "batched"])
def test_nashmtl_heads_get_the_reference_codes_scaled_gradients(jacobian):
    # Nash-MTL's heads are trained on α_t L_t (unclipped)
    nash = make("nashmtl", names=("first", "second", "sum"))
    _, heads, own, tasks = one_engine_step(nash, jacobian)
    alpha = torch.as_tensor(nash.alpha)
    assert not torch.allclose(alpha, torch.ones(3, dtype=D))
    for i, t in enumerate(tasks):
        for got, ref in zip(heads[t], own[t]):
            torch.testing.assert_close(got, alpha[i] * ref)


# ---------------------------------------------------------------------------- config

@pytest.mark.parametrize("name, field, value", [
    ("nashmtl", "update_weights_every", 0), ("nashmtl", "max_norm", -1.0),
    ("nashmtl", "optim_niter", 0), ("fairgrad", "alpha", 0.0), ("fairgrad", "max_norm", -0.5),
])
def test_bad_hyperparameters_are_refused(name, field, value):
    with pytest.raises(ConfigError, match=f"method.{name}.{field}"):
        make(name, **{field: value})


# ---------------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.parametrize("name", ['nashmtl', 'fairgrad'])
def test_trains_end_to_end(name, tmp_path):
    # the raw-scale sum (the imbalanced variant): a loss and gradient far larger than the others'
    (outcome,) = tiny_run("digits_tasks", name, tmp_path, [*TINY_DIGITS, "data.sum_target=raw"])
    assert outcome.status == "complete", outcome.reason
    train = read_records(outcome.run_dir)[0]
    assert all(math.isfinite(v) for v in train["losses"].values())
    summary = read_summary(outcome.run_dir)
    assert summary["methods"][name]["solves"] == 2
    assert "solver_failures" in summary["methods"][name]
    if name == "nashmtl":
        # the regression task's gradient is far larger: its weight must drop well below
        # the classification tasks' (equal weighting would keep them all at 1)
        weights = train["weights"]
        assert weights["sum"] < 0.5 * min(weights["first"], weights["second"])
