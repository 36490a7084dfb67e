"""Aligned-MTL and Aligned-MTL-UB, the aggregators that align the task gradients to condition
number one: golden values derived by hand from the paper's formulas, properties, refused
hyperparameters and tiny end-to-end runs. float64 throughout."""
from __future__ import annotations

import math

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from engine.errors import ConfigError
from methods.aligned_mtl import alignment_matrix, aligned_weights
from methods.registry import METHODS
from tests.helpers import TINY_DIGITS, read_records, tiny_run
from tests.method_support import D, NAMES, FakeContext, make, random_jacobian

# ---------------------------------------------------------------------------- Aligned-MTL

def test_aligned_orthonormal_gradients_are_summed():
    grads = torch.linalg.qr(random_jacobian(4, tasks=5, dim=3).T)[0].T  # 3 orthonormal rows
    weights, condition = aligned_weights(grads @ grads.T)
    torch.testing.assert_close(weights, torch.ones(3, dtype=D))
    assert abs(float(condition) - 1.0) < 1e-9


def test_aligned_orthogonal_golden_and_scale_modes():
    gram = torch.diag(torch.tensor([4.0, 1.0], dtype=D))  # orthogonal, norms 2 and 1
    expected = torch.tensor([0.5, 1.0], dtype=D)
    torch.testing.assert_close(aligned_weights(gram, "min")[0], expected)
    torch.testing.assert_close(aligned_weights(gram, "median")[0], expected)
    s = math.sqrt(2.5)
    torch.testing.assert_close(aligned_weights(gram, "rmse")[0], torch.tensor([s / 2, s], dtype=D))
    assert abs(float(aligned_weights(gram)[1]) - 2.0) < 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_aligned_gradients_have_equal_singular_values(seed):
    grads = random_jacobian(seed + 20, tasks=3, dim=6)
    matrix, condition = alignment_matrix(grads @ grads.T)
    singular = torch.linalg.svdvals(matrix @ grads)
    smallest = torch.linalg.svdvals(grads).min()
    torch.testing.assert_close(singular, smallest.expand(3))
    sv = torch.linalg.svdvals(grads)
    torch.testing.assert_close(condition, sv.max() / sv.min())


def test_aligned_rank_deficient_gradients_keep_the_sum():
    # g2 = 2 g1: one kept eigen-direction whose scale is its own, so B·J = J
    g = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    grads = torch.stack([g, 2 * g])
    weights, _ = aligned_weights(grads @ grads.T)
    torch.testing.assert_close(weights, torch.tensor([0.6, 1.2], dtype=D))
    torch.testing.assert_close(grads.T @ weights, grads.sum(0))


def test_aligned_permutation_and_scale():
    grads = random_jacobian(5)
    method = make("aligned_mtl", names=NAMES)
    ctx = FakeContext([1.0, 1.0, 1.0])
    base = method.aggregate(grads, ctx).direction
    perm = [1, 2, 0]
    torch.testing.assert_close(method.aggregate(grads[perm], ctx).direction, base)
    torch.testing.assert_close(method.aggregate(3 * grads, ctx).direction, 3 * base)
    assert torch.isfinite(aligned_weights(torch.zeros(3, 3, dtype=D))[0]).all()


def test_aligned_ub_works_on_the_representation():
    ub = METHODS.get("aligned_mtl_ub")
    assert ub.space == "rep" and ub.needs.shared_representation and not ub.needs.jacobian
    grads = random_jacobian(6)
    ctx = FakeContext([1.0] * 3)
    torch.testing.assert_close(make("aligned_mtl_ub", names=NAMES).aggregate(grads, ctx).direction,
                               make("aligned_mtl", names=NAMES).aggregate(grads, ctx).direction)


# ---------------------------------------------------------------------------- config

@pytest.mark.parametrize("name, field, value", [
    ("aligned_mtl", "scale_mode", "max"), ("aligned_mtl_ub", "scale_mode", "mean"),
])
def test_bad_hyperparameters_are_refused(name, field, value):
    with pytest.raises(ConfigError, match=f"method.{name}.{field}"):
        make(name, **{field: value})


# ---------------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.parametrize("name", ['aligned_mtl', 'aligned_mtl_ub'])
def test_trains_end_to_end(name, tmp_path):
    # the raw-scale sum (the imbalanced variant): a loss and gradient far larger than the others'
    (outcome,) = tiny_run("digits_tasks", name, tmp_path, [*TINY_DIGITS, "data.sum_target=raw"])
    assert outcome.status == "complete", outcome.reason
    train = read_records(outcome.run_dir)[0]
    assert all(math.isfinite(v) for v in train["losses"].values())
