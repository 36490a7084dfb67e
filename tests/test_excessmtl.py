"""ExcessMTL (methods/excessmtl.py): golden values against a plain float64 evaluation of
LibMTL's rules, agreement with TorchJD's ExcessMTLWeighting where the conventions are
aligned, the state through a checkpoint, the weights' properties and a tiny run."""
from __future__ import annotations

import io
import math

import pytest
import torch

from methods.excessmtl import ExcessMTL
from tests.helpers import TINY_DIGITS, read_records, tiny_run

D = torch.float64
TASKS = ("a", "b", "c")


class Ctx:
    def __init__(self, jac):
        self._jac = jac
        self.logged = {}

    def jacobian(self):
        return self._jac

    def log(self, name, value):
        self.logged[name] = value


def jacobians(steps: int, seed: int = 0, tasks: int = 3, width: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.5, 1.0, 3.0, 2.0][:tasks], dtype=D)[:, None]
    return [torch.randn(tasks, width, generator=g, dtype=D) * scales * (1 + 0.3 * k)
            for k in range(steps)]


def build(tasks=TASKS, **cfg) -> ExcessMTL:
    return ExcessMTL(ExcessMTL.Config(**cfg), tasks).double()


def run(method: ExcessMTL, jacs) -> list[torch.Tensor]:
    return [method.weigh(Ctx(j)).weights for j in jacs]


def libmtl_reference(jacs, step_size: float) -> list[list[float]]:
    """LibMTL's ExcessMTL.backward, written out element by element in float64."""
    T, P = jacs[0].shape
    loss_weight = [1.0] * T
    grad_sum = [[0.0] * P for _ in range(T)]
    initial = None
    out = []
    for jac in jacs:
        rows = jac.tolist()
        w = []
        for i in range(T):
            for p in range(P):
                grad_sum[i][p] += rows[i][p] ** 2
            w.append(sum(rows[i][p] ** 2 / math.sqrt(grad_sum[i][p] + 1e-7) for p in range(P)))
        if initial is None:
            initial = w
        else:
            ratio = [w[i] / initial[i] for i in range(T)]
            loss_weight = [loss_weight[i] * math.exp(ratio[i] * step_size) for i in range(T)]
            total = sum(loss_weight)
            loss_weight = [x / total * T for x in loss_weight]
        out.append(list(loss_weight))
    return out


@pytest.mark.parametrize("step_size", [1e-2, 0.7])
def test_golden_against_libmtl_rules(step_size):
    jacs = jacobians(6)
    ours = run(build(robust_step_size=step_size), jacs)
    expected = libmtl_reference(jacs, step_size)
    for k, (a, b) in enumerate(zip(ours, expected)):
        torch.testing.assert_close(a, torch.tensor(b, dtype=D), rtol=1e-12, atol=0,
                                   msg=f"step {k}")
    assert torch.equal(ours[0], torch.ones(3, dtype=D))  # the first step keeps the weights


def test_weights_are_positive_sum_to_t_and_favour_the_larger_excess_risk():
    jacs = jacobians(8)
    for w in run(build(robust_step_size=0.5), jacs):
        assert (w > 0).all()
        torch.testing.assert_close(w.sum(), torch.tensor(3.0, dtype=D))
    # A task whose gradient keeps its size gets a larger ratio (its AdaGrad denominator grows
    # slower than for shrinking gradients): its weight grows.
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 5, generator=g, dtype=D)
    steady = [torch.stack([base[0], base[1] * 0.5 ** k]) for k in range(6)]
    w = run(build(("a", "b"), robust_step_size=1.0), steady)[-1]
    assert w[0] > 1.0 > w[1]


def _torchjd():
    return pytest.importorskip("torchjd.aggregation")


def test_equals_torchjd_with_its_conventions():
    """update_first_step and divisor_eps=1e-7 give T times TorchJD's weights at every call."""
    tj = _torchjd().ExcessMTLWeighting(robust_step_size=0.3)
    jacs = jacobians(7, seed=3)
    ours = run(build(robust_step_size=0.3, update_first_step=True, divisor_eps=1e-7), jacs)
    for k, (j, w) in enumerate(zip(jacs, ours)):
        torch.testing.assert_close(w / 3, tj(j), rtol=1e-12, atol=1e-15, msg=f"call {k}")


def test_equals_torchjd_with_warmup():
    tj = _torchjd().ExcessMTLWeighting(robust_step_size=0.3, n_warmup_steps=3)
    jacs = jacobians(7, seed=4)
    ours = run(build(robust_step_size=0.3, warmup_steps=3, divisor_eps=1e-7), jacs)
    for k, (j, w) in enumerate(zip(jacs, ours)):
        torch.testing.assert_close(w / 3, tj(j), rtol=1e-12, atol=1e-15, msg=f"call {k}")


def test_default_differs_from_torchjd_by_its_first_update_only():
    """LibMTL's rule (the default) and TorchJD's at their defaults: TorchJD's first call
    multiplies the weights by exp(η w⁰) and every later ratio divides by w⁰ + 1e-7, so from
    the first call on TorchJD's weights are ∝ ours ⊙ exp(η w⁰), up to that 1e-7."""
    eta = 0.3
    tj = _torchjd().ExcessMTLWeighting(robust_step_size=eta)
    jacs = jacobians(6, seed=5)
    method = build(robust_step_size=eta)
    first = None
    for k, j in enumerate(jacs):
        theirs = tj(j)
        ours = method.weigh(Ctx(j)).weights
        if first is None:
            sq = j.square()
            first = (sq / torch.sqrt(sq + 1e-7)).sum(1)
        expected = ours * torch.exp(eta * first)
        torch.testing.assert_close(theirs, expected / expected.sum(), rtol=1e-6, atol=0,
                                   msg=f"call {k}")


def test_state_survives_a_checkpoint():
    jacs = jacobians(8, seed=6)
    original = build(robust_step_size=0.4, warmup_steps=2)
    run(original, jacs[:4])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = build(robust_step_size=0.4, warmup_steps=2)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(run(original, jacs[4:]), run(restored, jacs[4:])):
        assert torch.equal(a, b)


def test_zero_baseline_and_huge_ratio_stay_finite():
    zero_first = [torch.zeros(3, 4, dtype=D)] + jacobians(3, seed=7, width=4)
    for w in run(build(robust_step_size=1e3), zero_first):
        assert torch.isfinite(w).all() and (w >= 0).all()
        torch.testing.assert_close(w.sum(), torch.tensor(3.0, dtype=D))


def test_trains_end_to_end(tmp_path):
    (outcome,) = tiny_run("digits_tasks", "excessmtl", tmp_path, TINY_DIGITS)
    assert outcome.status == "complete", outcome.reason
    train = [r for r in read_records(outcome.run_dir) if r["split"] == "train"][0]
    assert train["steps"] == 2
    assert all(math.isfinite(v) for v in train["weights"].values())
