"""Nash-MTL, FairGrad, Aligned-MTL (and UB), MoCo and DB-MTL: golden values derived by hand
from the papers' formulas, properties, state round-trips, failure accounting, refused
hyperparameters, and tiny end-to-end runs. float64 throughout."""
from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
import torch

import methods  # noqa: F401  (registers every method)
from benchmarks.digits_tasks import DigitsTasks, DigitsTasksConfig
from engine.errors import ConfigError
from engine.core.gradients.context import TrainStepContext
from engine.core.gradients.passes import GradientEngine
from engine.core.gradients.stats import EpochStats
from engine.core.gradients.update import apply_update
from engine.core.models import MultiTaskModel
from methods._nash_solver import nash_weights
from methods.aligned_mtl import alignment_matrix, aligned_weights
from methods.dbmtl import dbmtl_update
from methods.fairgrad import fairgrad_weights
from methods.moco import MoCoConfig, moco_update, project_simplex
from methods.registry import METHODS
from tests.helpers import TINY_DIGITS, read_records, read_summary, tiny_run

D = torch.float64
NAMES = ("a", "b", "c")


class FakeContext:
    """The part of the step context that aggregators use."""

    def __init__(self, losses, names=NAMES, step: int = 0):
        self.losses = torch.as_tensor(losses, dtype=D)
        self.task_names = tuple(names[:len(self.losses)])
        self.step = step
        self.logged: dict[str, list[float]] = {}

    def log(self, name, value):
        self.logged.setdefault(name, []).append(float(value))


def make(name: str, names=NAMES[:2], **overrides):
    cls = METHODS.get(name)
    return cls(cls.Config(**overrides), names)


def random_jacobian(seed: int, tasks: int = 3, dim: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tasks, dim, generator=gen, dtype=D)


def state_round_trip(method, fresh):
    """Save ``method``'s state as a checkpoint would and load it into ``fresh``."""
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


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


# ---------------------------------------------------------------------------- heads

@functools.cache
def tiny_digits() -> DigitsTasks:
    return DigitsTasks(DigitsTasksConfig(train_size=16, val_size=8, test_size=8), None,
                       torch.device("cpu"))


def one_engine_step(method, jacobian: str):
    """One real update on a tiny digits_tasks batch (float64); returns the per-task losses,
    the heads' gradients and each head's gradient of its own loss alone."""
    bench = tiny_digits()
    tasks = bench.task_names
    torch.manual_seed(0)
    model = MultiTaskModel(bench).double()
    batch = next(bench.batches("train", 8, torch.Generator().manual_seed(0)))
    batch.inputs = batch.inputs.double()
    batch.targets["sum"] = batch.targets["sum"].double()
    reps, preds = model(batch)
    losses = torch.stack([t.loss(preds[t.name], batch.targets[t.name]) for t in bench.tasks])
    engine = GradientEngine(model, tasks, jacobian, 0, torch.device("cpu"))
    own = {t: torch.autograd.grad(losses[i], engine.heads[t], retain_graph=True)
           for i, t in enumerate(tasks)}
    ctx = TrainStepContext(engine=engine, batch=batch, representations=reps,
                           raw_losses=losses, losses=losses, step=0, epoch=0,
                           generator=torch.Generator().manual_seed(0), stats=EpochStats(),
                           loss_fn=None)
    apply_update(method, [], ctx, [])
    heads = {t: [p.grad.clone() for p in engine.heads[t]] for t in tasks}
    return losses.detach(), heads, own, tasks


@pytest.mark.parametrize("jacobian", ["loop", "batched"])
def test_heads_get_the_reference_codes_scaled_gradients(jacobian):
    # DB-MTL: heads are trained on log(L_t + 1e-8); Nash-MTL: on α_t L_t (unclipped)
    dbmtl = make("dbmtl", names=("first", "second", "sum"))
    losses, heads, own, tasks = one_engine_step(dbmtl, jacobian)
    for i, t in enumerate(tasks):
        for got, ref in zip(heads[t], own[t]):
            torch.testing.assert_close(got, ref / (losses[i] + 1e-8))
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
    ("aligned_mtl", "scale_mode", "max"), ("aligned_mtl_ub", "scale_mode", "mean"),
    ("moco", "beta", 1.5), ("moco", "gamma", 0.0), ("moco", "lambda_update", "exp"),
    ("moco", "grad_normalization", "l2"), ("dbmtl", "beta", 1.0), ("dbmtl", "beta_sigma", -1.0),
])
def test_bad_hyperparameters_are_refused(name, field, value):
    with pytest.raises(ConfigError, match=f"method.{name}.{field}"):
        make(name, **{field: value})


# ---------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("name", ["nashmtl", "fairgrad", "aligned_mtl", "aligned_mtl_ub",
                                  "moco", "dbmtl"])
def test_trains_end_to_end(name, tmp_path):
    # the raw-scale sum (the imbalanced variant): a loss and gradient far larger than the others'
    (outcome,) = tiny_run("digits_tasks", name, tmp_path, [*TINY_DIGITS, "data.sum_target=raw"])
    assert outcome.status == "complete", outcome.reason
    summary = read_summary(outcome.run_dir)
    train = read_records(outcome.run_dir)[0]
    assert all(math.isfinite(v) for v in train["losses"].values())
    if name in ("nashmtl", "fairgrad"):
        assert summary["methods"][name]["solves"] == 2
        assert "solver_failures" in summary["methods"][name]
    if name == "nashmtl":
        # the regression task's gradient is far larger: its weight must drop well below
        # the classification tasks' (equal weighting would keep them all at 1)
        weights = train["weights"]
        assert weights["sum"] < 0.5 * min(weights["first"], weights["second"])
