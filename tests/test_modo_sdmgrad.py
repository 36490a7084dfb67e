"""MoDo and SDMGrad (methods/modo.py, methods/sdmgrad.py) and the extra batches they need
(Needs.extra_batches): golden values of one update computed independently, agreement with
TorchJD's MoDoWeighting and SDMGradWeighting on the same matrices, the need refused where
it is not declared, the main batch order left as every other method sees it, and tiny
runs that train."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.core.gradients.context import TrainStepContext
from engine.errors import UserError
from methods.ew import EqualWeighting
from methods.modo import MoDo
from methods.sdmgrad import SDMGrad
from tests.helpers import TINY_DIGITS, read_records, tiny_run

D = torch.float64
TASKS = ("a", "b", "c")


class Ctx:
    """The step context MoDo and SDMGrad use: the extra batches' Jacobians are given."""

    def __init__(self, extra):
        self._extra = extra
        self.asked: list[int] = []

    def extra_jacobian(self, index):
        self.asked.append(index)
        return self._extra[index]

    def log(self, name, value):
        pass


def jacobians(count: int, seed: int, tasks: int = 3, width: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(width, generator=g, dtype=D)
    scales = torch.tensor([0.5, 1.0, 2.5, 1.5][:tasks], dtype=D)[:, None]
    return [(torch.randn(tasks, width, generator=g, dtype=D) + 0.5 * common) * scales
            for _ in range(count)]


def simplex_libmtl(y: np.ndarray) -> np.ndarray:
    """LibMTL's MoDo._projection2simplex, written out."""
    m = len(y)
    s = sorted(y, reverse=True)
    tmpsum, tmax_f = 0.0, (sum(y) - 1.0) / m
    for i in range(m - 1):
        tmpsum += s[i]
        tmax = (tmpsum - 1) / (i + 1.0)
        if tmax > s[i + 1]:
            tmax_f = tmax
            break
    return np.maximum(y - tmax_f, 0.0)


# --------------------------------------------------------------------------- MoDo

def test_modo_golden_one_update():
    """λ₁ = Π(λ₀ − γ(J₁J₂ᵀλ₀ + ρλ₀)) by hand on 3×2 matrices; d = λ₁ᵀJ₃ (LibMTL's order:
    the extra batches give λ, the step's own batch the update)."""
    j_own = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=D)
    j1 = torch.tensor([[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5]], dtype=D)
    j2 = torch.tensor([[2.0, 0.0], [1.0, -1.0], [0.0, 3.0]], dtype=D)
    gamma, rho = 0.05, 0.1
    method = MoDo(MoDo.Config(gamma=gamma, rho=rho), TASKS)
    out = method.aggregate(j_own, Ctx([j1, j2]))
    lam0 = np.full(3, 1 / 3)
    A = j1.numpy() @ j2.numpy().T  # [[2, -1, 6], [0, -1, 3], [-2, -1.5, 1.5]]
    np.testing.assert_allclose(A, [[2, -1, 6], [0, -1, 3], [-2, -1.5, 1.5]])
    lam1 = simplex_libmtl(lam0 - gamma * (A @ lam0 + rho * lam0))
    np.testing.assert_allclose(out.weights.numpy(), lam1, rtol=1e-13)
    np.testing.assert_allclose(out.direction.numpy(), lam1 @ j_own.numpy(), rtol=1e-13)
    # the values themselves: y = λ₀ − γ(Aλ₀ + ρλ₀) = [0.2150, 0.2983, 0.3650] (rounded),
    # whose sum is 0.8783, so each moves up by 0.1217/3 (none reaches 0)
    y = 1 / 3 - gamma * (A.sum(1) / 3 + rho / 3)
    np.testing.assert_allclose(out.weights.numpy(), y + (1 - y.sum()) / 3, rtol=1e-13)


def test_modo_mean_variant_uses_two_batches():
    j_own, j2 = jacobians(2, seed=1)
    method = MoDo(MoDo.Config(gamma=0.1, update_batch="mean"), TASKS)
    ctx = Ctx([j2])
    out = method.aggregate(j_own, ctx)
    assert ctx.asked == [0] and method.needs.extra_batches == 1
    lam = simplex_libmtl(np.full(3, 1 / 3) - 0.1 * ((j_own @ j2.T).numpy() @ np.full(3, 1 / 3)
                                                    + 0.1 / 3))
    np.testing.assert_allclose(out.weights.numpy(), lam, rtol=1e-13)
    np.testing.assert_allclose(out.direction.numpy(), lam @ ((j_own + j2) / 2).numpy(),
                               rtol=1e-13)
    assert MoDo(MoDo.Config(), TASKS).needs.extra_batches == 2


def test_modo_equals_torchjd_over_several_steps():
    tj = pytest.importorskip("torchjd.aggregation").MoDoWeighting(gamma=0.3, rho=0.1)
    method = MoDo(MoDo.Config(gamma=0.3, rho=0.1), TASKS)
    for step in range(6):
        j_own, j1, j2 = jacobians(3, seed=10 + step)
        ours = method.aggregate(j_own, Ctx([j1, j2])).weights
        torch.testing.assert_close(ours, tj(j1 @ j2.T), rtol=1e-12, atol=1e-14,
                                   msg=f"step {step}")


# --------------------------------------------------------------------------- SDMGrad

def sdmgrad_reference(w, A, lamda, n_iter, lr, momentum):
    """LibMTL's SDMGrad loop in numpy: torch.optim.SGD(momentum) on w, the gradient
    GG w + λ·mean(GG, 1), the simplex projection of its euclidean_proj_simplex."""
    diag = np.maximum(np.diag(A), 0)
    GG = A / (np.mean(np.sqrt(diag)) ** 2 + 1e-8)
    Gg = GG.mean(axis=1)
    buf = None
    for _ in range(n_iter):
        grad = GG @ w + lamda * Gg
        buf = grad if buf is None else momentum * buf + grad
        v = w - lr * buf
        u = np.sort(v)[::-1]
        cssv = np.cumsum(u)
        rho = np.nonzero(u * np.arange(1, len(v) + 1) > (cssv - 1))[0][-1]
        theta = (cssv[rho] - 1) / (rho + 1)
        w = np.clip(v - theta, 0, None)
    return w


def test_sdmgrad_golden_one_update():
    j_own, j1, j2 = jacobians(3, seed=2)
    method = SDMGrad(SDMGrad.Config(), TASKS)
    out = method.aggregate(j_own, Ctx([j1, j2]))
    w = sdmgrad_reference(np.full(3, 1 / 3), (j1 @ j2.T).numpy(), 0.3, 20, 5.0, 0.5)
    weights = (w + 0.3 / 3) / 1.3
    np.testing.assert_allclose(method.w.numpy(), w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(out.weights.numpy(), weights, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(out.direction.numpy(), weights @ j_own.numpy(), rtol=1e-10)
    assert math.isclose(float(out.weights.sum()), 1.0, rel_tol=1e-12)
    assert (out.weights >= 0.3 / 3 / 1.3 - 1e-15).all()  # never below λ/T/(1+λ)


def test_sdmgrad_golden_by_hand_with_one_inner_step():
    """n_iter=1 on a 2×2 A: w₁ = Π(w₀ − lr·A(w₀ + λ/T)/s²), s = mean √diag."""
    A = torch.tensor([[4.0, 1.0], [-2.0, 1.0]], dtype=D)  # s = (2 + 1)/2 = 1.5
    j1, j2 = torch.linalg.cholesky(torch.eye(2, dtype=D)), A.T  # J₁J₂ᵀ = A
    method = SDMGrad(SDMGrad.Config(n_iter=1, lr=0.1, lamda=0.5), ("a", "b"))
    out = method.aggregate(torch.eye(2, dtype=D), Ctx([j1, j2]))
    grad = (A / (1.5 ** 2 + 1e-8)) @ torch.tensor([0.75, 0.75], dtype=D)  # [2.2222, -0.3333]
    v = torch.tensor([0.5, 0.5], dtype=D) - 0.1 * grad  # [0.2778, 0.5333]: sum 0.8111
    w = v + (1 - v.sum()) / 2
    torch.testing.assert_close(method.w, w, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.weights, (w + 0.25) / 1.5, rtol=1e-12, atol=0)


def test_sdmgrad_equals_torchjd_over_several_steps():
    tj = pytest.importorskip("torchjd.aggregation").SDMGradWeighting(
        lr=5.0, momentum=0.5, n_iter=20, lambda_=0.3)
    method = SDMGrad(SDMGrad.Config(), TASKS)
    for step in range(5):
        j_own, j1, j2 = jacobians(3, seed=20 + step)
        ours = method.aggregate(j_own, Ctx([j1, j2])).weights
        torch.testing.assert_close(ours, tj(j1 @ j2.T), rtol=1e-10, atol=1e-12,
                                   msg=f"step {step}")


# --------------------------------------------------------------------------- the need

def _context(batches, loss_fn=None) -> TrainStepContext:
    return TrainStepContext(engine=None, batch=None, representations={}, raw_losses=None,
                            losses=None, step=0, epoch=0, generator=None, stats=None,
                            loss_fn=None, extra_batches=batches,
                            extra_loss_fn=loss_fn or (lambda b: [torch.tensor(1.0)]))


@pytest.mark.parametrize("method, index", [
    (EqualWeighting(EqualWeighting.Config(), TASKS), 0),
    (MoDo(MoDo.Config(update_batch="mean"), TASKS), 1),
])
def test_an_undeclared_extra_batch_is_refused(method, index):
    ctx = _context(["b0", "b1"])
    with ctx.asked_by(method), pytest.raises(UserError, match="without declaring it") as info:
        ctx.extra_jacobian(index)
    assert "extra_batches" in str(info.value) and "\n" not in str(info.value)
    with ctx.asked_by(method), pytest.raises(UserError):
        ctx.extra_losses(index)


def test_a_declared_extra_batch_gives_its_losses():
    ctx = _context(["b0", "b1"], loss_fn=lambda b: [torch.tensor(float(b[-1])), torch.tensor(2.0)])
    with ctx.asked_by(SDMGrad(SDMGrad.Config(), ("x", "y"))):
        assert ctx.extra_losses(1).tolist() == [1.0, 2.0]


def test_data_parallel_runs_refuse_extra_batches():
    from engine.core.trainer import Trainer
    from engine.runs.runner import build_requests, make_benchmark

    (request,) = build_requests("digits_tasks", ["modo"], [0], "quick", TINY_DIGITS, "cpu", None)
    bench = make_benchmark(request.config, torch.device("cpu"))

    class World:
        size, is_main = 2, True

    with pytest.raises(UserError, match="data-parallel") as info:
        Trainer(request.config, bench, request.composition, torch.device("cpu"), None,
                progress=False, world=World())
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- runs

@pytest.mark.parametrize("method, extra", [("modo", []), ("sdmgrad", []),
                                           ("modo", ["method.modo.update_batch=mean"])])
def test_trains_end_to_end(method, extra, tmp_path):
    (outcome,) = tiny_run("digits_tasks", method, tmp_path, TINY_DIGITS + extra)
    assert outcome.status == "complete", outcome.reason
    train = [r for r in read_records(outcome.run_dir) if r["split"] == "train"][0]
    assert train["steps"] == 2
    assert math.isclose(sum(train["weights"].values()), 1.0, rel_tol=1e-5)


def test_the_main_batches_are_those_every_method_sees():
    """The extra batches come from their own stream: the step's own batches (the data
    generator) are as under EW, and the extra stream restarts with every epoch."""
    from engine.core.trainer import Trainer
    from engine.runs.runner import build_requests, make_benchmark

    seen = {}
    for name in ("ew", "sdmgrad"):
        (request,) = build_requests("digits_tasks", [name], [0], "quick",
                                    TINY_DIGITS + ["train.epochs=2"], "cpu", None)
        bench = make_benchmark(request.config, torch.device("cpu"))
        trainer = Trainer(request.config, bench, request.composition, torch.device("cpu"), None,
                          progress=False)
        batches = []
        original = trainer.train_step

        def spy(batch, epoch, stats, original=original, batches=batches):
            batches.append(batch.inputs.clone())
            return original(batch, epoch, stats)

        trainer.train_step = spy
        trainer.fit(resume=False)
        seen[name] = (batches, trainer)
    assert all(torch.equal(a, b) for a, b in zip(seen["ew"][0], seen["sdmgrad"][0]))
    assert len(seen["ew"][0]) == len(seen["sdmgrad"][0]) == 4
    assert seen["sdmgrad"][1].extra_batches == 2 and seen["ew"][1].extra_generator is None
