"""DualProj, ConFIG, Krum, the trimmed mean and the mean (the aggregators the harness shares
with TorchJD besides those of test_methods_aggregation.py): golden values on hand-made
matrices, each method's defining properties against naive evaluations, agreement with
TorchJD on the same float64 Jacobians (when it is installed), refusals, and training end to
end (float64 throughout)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from engine.errors import ConfigError
from engine.runs.runner import build_requests, run_all
from methods.config import ConFIG, config_weights
from methods.dualproj import DualProj, dualproj_weights
from methods.krum import Krum, krum_scores, krum_weights
from methods.mean import MeanWeighting
from methods.rlw import draw_normal, rlw_weights
from methods.trimmed_mean import TrimmedMean, trimmed_mean
from tests.helpers import TINY_DIGITS, read_records, read_summary

D = torch.float64
TASKS3 = ("a", "b", "c")


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=D)


def random_jacobian(seed: int, tasks: int = 4, dim: int = 12) -> torch.Tensor:
    """A common component plus noise, unequal norms and one gradient turned against the
    others: the mean conflicts with some task."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(tasks, dim, generator=g, dtype=D) + 0.4 * torch.randn(dim, generator=g, dtype=D)
    J = J * torch.linspace(0.5, 3.0, tasks, dtype=D)[:, None]
    J[-1] = -0.6 * J[:-1].sum(0) + 0.3 * J[-1]
    return J


class FakeContext:
    def __init__(self):
        self.step = 0
        self.logged: dict[str, list[float]] = {}

    def log(self, name, value):
        self.logged.setdefault(name, []).append(float(value))


def make(cls, task_names=TASKS3, **overrides):
    return cls(cls.Config(**overrides), task_names)


# ---------------------------------------------------------------------------- DualProj
def test_dualproj_golden():
    # mean (-½, ½) conflicts with g1 = (1, 0); its projection onto the cone
    # {x1 ≥ 0, x2 ≥ 2 x1} is (0, ½) = 1·g1 + ½·g2
    J = t([[1.0, 0.0], [-2.0, 1.0]])
    sol = dualproj_weights(J @ J.T, reg_eps=1e-12)
    assert sol.ok
    torch.testing.assert_close(sol.weights, t([1.0, 0.5]), atol=1e-8, rtol=0)
    torch.testing.assert_close(sol.weights @ J, t([0.0, 0.5]), atol=1e-8, rtol=0)
    # no conflict with the mean: the mean itself
    J = t([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    torch.testing.assert_close(dualproj_weights(J @ J.T).weights, torch.full((3,), 1 / 3, dtype=D))


def _primal_projection(J: np.ndarray) -> np.ndarray:
    """argmin_x ||x - mean(J)||² subject to J x ≥ 0, solved in the parameter space."""
    mean = J.mean(0)
    res = minimize(lambda x: ((x - mean) ** 2).sum(), mean.copy(), jac=lambda x: 2 * (x - mean),
                   constraints=[{"type": "ineq", "fun": lambda x: J @ x, "jac": lambda x: J}],
                   method="SLSQP", options={"ftol": 1e-15, "maxiter": 500})
    return res.x


@pytest.mark.parametrize("seed", range(3))
def test_dualproj_is_the_projection_of_the_mean_and_never_conflicts(seed):
    J = random_jacobian(seed)
    G = J @ J.T
    assert (J @ J.mean(0) < 0).any()  # the case is not trivial
    strict = dualproj_weights(G, reg_eps=1e-12)
    assert strict.ok and (strict.weights >= 0.25 - 1e-12).all()  # v ≥ u = 1/T
    d = strict.weights @ J
    np.testing.assert_allclose(d.numpy(), _primal_projection(J.numpy()), atol=1e-6)
    assert (J @ d >= -1e-8 * float(G.trace())).all()
    # with the default regularisation: the promise up to reg_eps·||J||²·v_t (an active
    # constraint meets that bound exactly, hence the rounding slack)
    sol = dualproj_weights(G)
    bound = -float(G.trace()) * (1e-4 * sol.weights + 1e-12)
    assert (J @ (sol.weights @ J) >= bound).all()
    perm = torch.tensor([1, 3, 0, 2])
    torch.testing.assert_close(dualproj_weights(J[perm] @ J[perm].T).weights, sol.weights[perm])
    torch.testing.assert_close(dualproj_weights(25.0 * G).weights, sol.weights)


def test_dualproj_counts_a_failed_solve(monkeypatch):
    import scipy.optimize

    def exhausted(*args, **kwargs):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr(scipy.optimize, "nnls", exhausted)
    method, ctx = make(DualProj), FakeContext()
    out = method.aggregate(random_jacobian(4, tasks=3), ctx)
    assert torch.isfinite(out.direction).all()
    assert ctx.logged["solver_failures"] == [1.0]
    assert method.run_report() == {"solves": 1, "solver_failures": 1}


# ---------------------------------------------------------------------------- ConFIG
def test_config_golden():
    # orthogonal gradients (2, 0) and (0, 1): û = (1, 1)/√2, length 2/√2 + 1/√2
    J = t([[2.0, 0.0], [0.0, 1.0]])
    w = config_weights(J @ J.T)
    torch.testing.assert_close(w @ J, t([1.5, 1.5]))
    torch.testing.assert_close(w, t([0.75, 1.5]))
    # conflicting (1, 0) and (-1, 1): b = U⁺1 = U⁻¹1 = (1, 1 + √2), ||b||² = 4 + 2√2; the
    # projections g1·b = 1 and g2·b = √2 give the length (1 + √2)/||b||, so
    # d = (1 + √2)/(4 + 2√2)·(1, 1 + √2)
    J = t([[1.0, 0.0], [-1.0, 1.0]])
    r = math.sqrt(2.0)
    torch.testing.assert_close(config_weights(J @ J.T) @ J,
                               (1 + r) / (4 + 2 * r) * t([1.0, 1 + r]))


def _config_naive(J: np.ndarray) -> np.ndarray:
    """The paper's Eq. 2 with NumPy's pseudo-inverse of the unit gradients."""
    units = J / np.linalg.norm(J, axis=1, keepdims=True)
    best = np.linalg.pinv(units) @ np.ones(len(J))
    unit = best / np.linalg.norm(best)
    return (J @ unit).sum() * unit


@pytest.mark.parametrize("seed", range(3))
def test_config_has_equal_cosines_with_every_gradient(seed):
    J = random_jacobian(seed, tasks=5, dim=9)
    d = config_weights(J @ J.T) @ J
    np.testing.assert_allclose(d.numpy(), _config_naive(J.numpy()), rtol=1e-9, atol=1e-12)
    cosines = (J @ d) / (J.norm(dim=1) * d.norm())
    assert (cosines > 0).all()  # conflict-free
    torch.testing.assert_close(cosines, cosines.mean().expand(5), atol=1e-10, rtol=0)
    unit = d / d.norm()
    torch.testing.assert_close(d.norm(), (J @ unit).sum())  # the length: Σ_t g_t·û
    # the direction depends on the unit gradients only; the length on the raw ones
    scaled = J * t([0.1, 7.0, 1.0, 3.0, 0.5])[:, None]
    d2 = config_weights(scaled @ scaled.T) @ scaled
    torch.testing.assert_close(d2 / d2.norm(), unit)
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(config_weights(J[perm] @ J[perm].T) @ J[perm], d)


def test_config_zero_gradients():
    J = t([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    d = config_weights(J @ J.T) @ J
    torch.testing.assert_close(d, t([1.5, 1.5, 0.0]))  # the zero gradient drops out
    zero = torch.zeros(3, 4, dtype=D)
    assert (config_weights(zero @ zero.T) == 0).all()


# ---------------------------------------------------------------------------- Krum
# Five points of the plane, each scored by its 3 nearest others (f = 0):
#   squared distances: (4, 5) → 8 + 9 + 10 = 27, (5, 2) → 1 + 10 + 17 = 28, ...
#   distances:         (4, 5) → √8 + 3 + √10 = 8.99, (5, 2) → 1 + √10 + √17 = 8.29
KRUM_POINTS = [[9.0, 3.0], [6.0, 7.0], [4.0, 2.0], [4.0, 5.0], [5.0, 2.0]]


def test_krum_golden_paper_and_torchjd_distances():
    J = t(KRUM_POINTS)
    G = J @ J.T
    torch.testing.assert_close(krum_scores(G), t([68.0, 59.0, 36.0, 27.0, 28.0]))
    torch.testing.assert_close(krum_weights(G), t([0.0, 0.0, 0.0, 1.0, 0.0]))
    euclidean = krum_scores(G, distance="euclidean")
    s = math.sqrt
    torch.testing.assert_close(euclidean[3:], t([s(8) + 3 + s(10), 1 + s(10) + s(17)]))
    torch.testing.assert_close(krum_weights(G, distance="euclidean"), t([0, 0, 0, 0, 1.0]))
    # Multi-Krum: the mean of the two best
    torch.testing.assert_close(krum_weights(G, n_selected=2), t([0, 0, 0, 0.5, 0.5]))
    # f = 2: one neighbour each; (4, 2) and (5, 2) are 1 apart, the lowest index wins the tie
    torch.testing.assert_close(krum_weights(G, n_byzantine=2), t([0, 0, 1.0, 0, 0]))


def _krum_naive(J: np.ndarray, f: int, squared: bool) -> np.ndarray:
    T = len(J)
    scores = []
    for i in range(T):
        dists = sorted(float(np.sum((J[i] - J[j]) ** 2)) for j in range(T) if j != i)
        scores.append(sum(d if squared else math.sqrt(d) for d in dists[:T - f - 2]))
    return np.array(scores)


@pytest.mark.parametrize("seed", range(3))
def test_krum_picks_the_gradient_closest_to_its_neighbours(seed):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(7, 6, generator=g, dtype=D)
    J[seed] += 40.0  # an outlier: never chosen
    G = J @ J.T
    for f in (0, 1, 2):
        for squared in (True, False):
            distance = "squared" if squared else "euclidean"
            naive = _krum_naive(J.numpy(), f, squared)
            np.testing.assert_allclose(krum_scores(G, f, distance).numpy(), naive, rtol=1e-9)
            w = krum_weights(G, f, 1, distance)
            assert int(w.argmax()) == int(np.argmin(naive)) != seed and w.sum() == 1


def test_krum_refuses_too_few_tasks():
    make(Krum)  # f = 0 on three tasks
    with pytest.raises(ConfigError, match=r"method.krum.n_byzantine=1 needs at least 4 tasks"):
        make(Krum, n_byzantine=1)
    with pytest.raises(ConfigError, match="method.krum.n_selected=4"):
        make(Krum, n_selected=4)
    with pytest.raises(ConfigError, match="method.krum.distance"):
        make(Krum, distance="manhattan")


# ---------------------------------------------------------------------------- trimmed mean
def test_trimmed_mean_golden():
    J = t([[1.0, 10.0], [2.0, -5.0], [3.0, 0.0], [100.0, 1.0]])
    # column 0 keeps 2, 3; column 1 keeps 0, 1
    torch.testing.assert_close(trimmed_mean(J, 1), t([2.5, 0.5]))
    torch.testing.assert_close(trimmed_mean(J, 0), J.mean(0))


def test_trimmed_mean_removes_the_extremes_of_each_coordinate():
    g = torch.Generator().manual_seed(0)
    J = torch.randn(7, 30, generator=g, dtype=D)
    for k in (1, 2, 3):
        expected = np.array([np.sort(col)[k:7 - k].mean() for col in J.numpy().T])
        out = trimmed_mean(J, k)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
        ordered = J.sort(0).values
        assert ((out >= ordered[k]) & (out <= ordered[6 - k])).all()
    # pushing the extreme values further out changes nothing
    pushed = J.clone()
    pushed[J.argmax(0), torch.arange(30)] += 1e6
    pushed[J.argmin(0), torch.arange(30)] -= 1e6
    torch.testing.assert_close(trimmed_mean(pushed, 1), trimmed_mean(J, 1))


def test_trimmed_mean_refuses_too_few_tasks():
    assert make(TrimmedMean).aggregate(random_jacobian(1, tasks=3), FakeContext()).weights is None
    with pytest.raises(ConfigError, match="method.trimmed_mean.trim_number=2 needs at least 5"):
        make(TrimmedMean, trim_number=2)


# ---------------------------------------------------------------------------- mean
def test_mean_weights_are_one_over_t():
    method = make(MeanWeighting, task_names=("a", "b", "c", "d"))

    class Ctx:
        losses = t([0.5, 2.0, 3.0, 7.0])

    torch.testing.assert_close(method.weigh(Ctx()).weights, torch.full((4,), 0.25, dtype=D))


# ---------------------------------------------------------------------------- TorchJD
@pytest.mark.parametrize("seed", range(4))
def test_agreement_with_torchjd(seed):
    """The same update as TorchJD's aggregators on the same float64 Jacobian. Measured
    differences are ~1e-15 (DualProj, same quadratic program, another exact solver), ~1e-14
    (ConFIG) and 0 (Krum, trimmed mean, mean); the tolerances leave room for other BLAS."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("quadprog")
    pytest.importorskip("qpsolvers")
    J = random_jacobian(seed, tasks=5, dim=13)
    G = J @ J.T
    scale = float(J.abs().max())

    def close(ours, theirs, tol):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=tol * scale)

    close(dualproj_weights(G).weights @ J, aggregation.DualProj()(J), 1e-9)
    close(config_weights(G) @ J, aggregation.ConFIG()(J), 1e-10)
    for f, m in ((0, 1), (1, 1), (2, 2), (0, 3)):
        close(krum_weights(G, f, m, "euclidean") @ J, aggregation.Krum(f, m)(J), 1e-12)
    for k in (0, 1, 2):
        close(trimmed_mean(J, k), aggregation.TrimmedMean(k)(J), 1e-12)
    close(torch.full((5,), 1 / 5, dtype=D) @ J, aggregation.Mean()(J), 1e-12)


def test_torchjd_sum_is_ew_and_random_is_rlw():
    """TorchJD's Sum is equal weighting (weights 1), and its Random draws the same weights
    as RLW (softmax of T standard normal numbers): from the same seed, the same update."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    J = random_jacobian(7, tasks=4)
    torch.testing.assert_close(torch.ones(4, dtype=D) @ J, aggregation.Sum()(J))
    for seed in range(3):
        torch.manual_seed(seed)
        theirs = aggregation.Random()(J)
        ours = rlw_weights(draw_normal(4, torch.Generator().manual_seed(seed), D)) @ J
        torch.testing.assert_close(ours, theirs)


# ---------------------------------------------------------------------------- end to end
NEW = ["dualproj", "config", "krum", "trimmed_mean", "mean"]


@pytest.mark.slow
def test_new_methods_train_end_to_end(tmp_path):
    overrides = [*TINY_DIGITS, "data.val_size=16", "data.test_size=16"]
    requests = build_requests("digits_tasks", NEW, [0], "quick", overrides, "cpu", None)
    outcomes = run_all(requests, tmp_path, force=True, progress=False)
    assert [o.request.method_name for o in outcomes] == NEW
    for outcome in outcomes:
        method = outcome.request.method_name
        assert outcome.status == "complete", (method, outcome.reason)
        train = [r for r in read_records(outcome.run_dir) if r["split"] == "train"]
        assert train and all(math.isfinite(v) for v in train[-1]["losses"].values())
        if method == "trimmed_mean":
            assert not train[-1].get("weights"), method
        else:
            assert set(train[-1]["weights"]) == {"first", "second", "sum"}, method
    dualproj = outcomes[0].run_dir
    steps = [r for r in read_records(dualproj) if r["split"] == "train"][-1]["steps"]
    report = read_summary(dualproj)["methods"]["dualproj"]
    assert report["solves"] == steps and report["solver_failures"] == 0


def test_too_few_tasks_refuses_the_run_in_one_line(tmp_path):
    overrides = [*TINY_DIGITS, "method.krum.n_byzantine=1"]
    requests = build_requests("digits_tasks", ["krum"], [0], "quick", overrides, "cpu", None)
    (outcome,) = run_all(requests, tmp_path, force=True, progress=False)
    assert outcome.status != "complete"
    assert "needs at least 4 tasks" in outcome.reason and "\n" not in outcome.reason
