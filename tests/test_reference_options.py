"""Options that reproduce a reference implementation's reading of a method (MGDA-UB's and
Aligned-MTL-UB's ``rep_reduce``, CAGrad's ``scale``), the run settings some methods refuse
(MTAdam, IGBv2), and config hashes left alone by fields added later."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.errors import ConfigError
from engine.runs.runner import build_requests
from methods.aligned_mtl import aligned_weights
from methods.mgda import mgda_weights
from tests.method_support import D, FakeContext, make, random_jacobian

NAMES = ("a", "b", "c")


class RepContext(FakeContext):
    """A step context whose representation has the given shape (batch first)."""

    def __init__(self, losses, rep_shape):
        super().__init__(losses, names=NAMES)
        self.rep = torch.zeros(rep_shape, dtype=D)

    def reps(self):
        return [self.rep] * len(self.task_names)


def per_sample_grads(seed: int, batch: int = 5, feature=(3, 2)) -> torch.Tensor:
    """[T, B, *feature] per-sample gradients w.r.t. Z, with a scale per task."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1.0, 4.0, 0.3], dtype=D).view(3, *[1] * (1 + len(feature)))
    return scales * torch.randn(3, batch, *feature, generator=gen, dtype=D)


# --------------------------------------------------------------------------- rep_reduce

@pytest.mark.parametrize("normalization", ["none", "l2", "loss+"])
def test_mgda_ub_batch_sum_solves_on_the_batch_summed_gradients(normalization):
    per_sample = per_sample_grads(0)
    flat = per_sample.reshape(3, -1)
    losses = [0.5, 2.0, 1.5]
    ctx = RepContext(losses, per_sample.shape[1:])
    # naive: sum each task's per-sample gradients over the batch, then the same solver
    summed = per_sample.sum(dim=1).reshape(3, -1)
    alpha = mgda_weights(summed @ summed.T, torch.tensor(losses, dtype=D), normalization).weights
    out = make("mgda_ub", names=NAMES, rep_reduce="batch_sum",
               normalization=normalization).aggregate(flat, ctx)
    torch.testing.assert_close(out.weights, alpha.to(D))
    torch.testing.assert_close(out.direction, alpha.to(D) @ flat)
    # the flattened reading (the default) solves on another Gramian, here other weights
    default = make("mgda_ub", names=NAMES, normalization=normalization).aggregate(flat, ctx)
    assert (default.weights - out.weights).abs().max() > 1e-3


def test_mgda_ub_default_is_unchanged_the_flattened_gradients():
    flat = per_sample_grads(1).reshape(3, -1)
    ctx = RepContext([1.0, 1.0, 1.0], (5, 3, 2))
    method = make("mgda_ub", names=NAMES)
    assert method.config.rep_reduce == "flatten"
    alpha = mgda_weights(flat @ flat.T).weights.to(D)
    out = method.aggregate(flat, ctx)
    torch.testing.assert_close(out.weights, alpha)
    torch.testing.assert_close(out.direction, alpha @ flat)


def test_aligned_mtl_ub_batch_sum_and_default():
    per_sample = per_sample_grads(2, batch=4, feature=(6,))
    flat = per_sample.reshape(3, -1)
    ctx = RepContext([1.0, 1.0, 1.0], per_sample.shape[1:])
    summed = per_sample.sum(dim=1)
    w_sum, _ = aligned_weights(summed @ summed.T)
    out = make("aligned_mtl_ub", names=NAMES, rep_reduce="batch_sum").aggregate(flat, ctx)
    torch.testing.assert_close(out.weights, w_sum)
    torch.testing.assert_close(out.direction, flat.T @ w_sum)
    w_flat, _ = aligned_weights(flat @ flat.T)
    default = make("aligned_mtl_ub", names=NAMES).aggregate(flat, ctx)
    torch.testing.assert_close(default.weights, w_flat)
    assert (default.weights - out.weights).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["mgda_ub", "aligned_mtl_ub"])
def test_an_unknown_rep_reduce_is_refused(name):
    with pytest.raises(ConfigError, match=f"method.{name}.rep_reduce"):
        make(name, names=NAMES, rep_reduce="mean")


# --------------------------------------------------------------------------- CAGrad scale

def test_cagrad_sum_scale_multiplies_the_update_by_the_number_of_tasks():
    grads = random_jacobian(3)
    ctx = FakeContext([1.0, 1.0, 1.0])
    mean = make("cagrad", names=NAMES).aggregate(grads, ctx)
    summed = make("cagrad", names=NAMES, scale="sum").aggregate(grads, ctx)
    torch.testing.assert_close(summed.direction, 3 * mean.direction)
    torch.testing.assert_close(summed.weights, 3 * mean.weights)
    with pytest.raises(ConfigError, match="method.cagrad.scale"):
        make("cagrad", names=NAMES, scale="max")


# --------------------------------------------------------------------------- hashes

def _request(method: str, overrides=()):
    return build_requests("digits_tasks", [method], [0], "quick", list(overrides), "cpu",
                          None)[0]


@pytest.mark.parametrize("method, field, other", [("mgda_ub", "rep_reduce", "batch_sum"),
                                                  ("aligned_mtl_ub", "rep_reduce", "batch_sum"),
                                                  ("cagrad", "scale", "sum")])
def test_late_method_fields_leave_earlier_hashes_unchanged(method, field, other):
    config = _request(method).config
    cfg = config.methods[method]
    # The config as it was before the field existed: the same values, without it.
    before = dataclasses.make_dataclass(
        "Before", [(f.name, f.type, dataclasses.field(default=getattr(cfg, f.name)))
                   for f in dataclasses.fields(cfg) if f.name != field])()
    assert dataclasses.replace(config, methods={method: before}).hash() == config.hash()
    assert _request(method, [f'method.{method}.{field}="{other}"']).config.hash() != config.hash()
    assert _request(method, [f'method.{method}.{field}="{getattr(cfg, field)}"']).config.hash() \
        == config.hash()


# --------------------------------------------------------------------------- refused settings

SGD = ["train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=0.0"]


@pytest.mark.parametrize("overrides, named", [
    ([], "train.optimizer=adam"),
    (["train.optimizer=sgd"], "train.momentum=0.9"),
    (["train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=1e-4"],
     "train.weight_decay=0.0001"),
])
def test_mtadam_refuses_any_optimizer_but_plain_sgd(overrides, named):
    with pytest.raises(ConfigError, match="needs train.optimizer=sgd") as info:
        _request("mtadam", overrides)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_mtadam_builds_under_plain_sgd():
    config = _request("mtadam", SGD).config
    assert (config.train.optimizer, config.train.momentum, config.train.weight_decay) == \
        ("sgd", 0.0, 0.0)


@pytest.mark.parametrize("overrides", [
    ["train.scheduler=step", "train.step_size=2"],
    ["train.scheduler=cosine"],
])
def test_igbv2_refuses_a_learning_rate_that_changes(overrides):
    with pytest.raises(ConfigError, match="igbv2 cannot follow a learning rate") as info:
        _request("igbv2", overrides)
    assert "lr0/lr" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides", [
    [], ["train.scheduler=step", "train.step_size=8"], ["train.scheduler=step", "train.gamma=1.0",
                                                        "train.step_size=2"],
    ["train.scheduler=cosine", "train.epochs=1"],
])
def test_igbv2_builds_with_a_constant_learning_rate(overrides):
    assert _request("igbv2", overrides).config.method == "igbv2"


# --------------------------------------------------------------------------- DB-MTL, MGDA

def test_dbmtl_beta_sigma_zero_is_libmtls_constant_rate():
    from methods.dbmtl import dbmtl_update

    steps = [random_jacobian(10 + k) for k in range(6)]
    ema_libmtl = ema_default = torch.zeros_like(steps[0])
    expected = torch.zeros_like(steps[0])
    for k, grads in enumerate(steps, start=1):
        ema_libmtl, _, _ = dbmtl_update(ema_libmtl, grads, k, 0.9, 0.0)
        ema_default, _, _ = dbmtl_update(ema_default, grads, k, 0.9, 0.5)
        expected = 0.9 * expected + 0.1 * grads  # β_k = β at every step
        torch.testing.assert_close(ema_libmtl, expected)
    assert (ema_default - ema_libmtl).abs().max() > 0.1


def test_mgda_is_exact_for_two_tasks_and_exact_to_its_tolerance_for_more():
    g = random_jacobian(20, tasks=2, dim=6)
    result = mgda_weights(g @ g.T)
    diff = g[0] - g[1]
    a = float(((g[1] - g[0]) @ g[1]) / (diff @ diff))  # argmin ||a g1 + (1-a) g2||
    torch.testing.assert_close(result.weights[0].item(), min(max(a, 0.0), 1.0), rtol=0,
                               atol=1e-12)
    for seed in range(5):
        J = random_jacobian(30 + seed, tasks=4, dim=5)
        result = mgda_weights(J @ J.T, tol=1e-5)
        assert result.converged and result.gap <= 1e-5
