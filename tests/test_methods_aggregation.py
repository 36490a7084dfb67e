"""Gradient-aggregation methods: golden values on hand-made matrices, properties, state,
refused hyperparameters, and a couple of training steps end to end (float64 throughout)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from engine.errors import ConfigError
from engine.runs.runner import build_requests, run_all
from methods._min_norm import min_norm_element, min_norm_two
from methods.base import Aggregator, GramianAggregator, Needs
from methods.cagrad import CAGrad, cagrad_weights
from methods.graddrop import GradDrop, graddrop_direction
from methods.gradvac import GradVac, gradvac_coefficients
from methods.imtl import IMTL, imtl_weights
from methods.imtl_g import imtl_g_weights
from methods.imtl_l import IMTLL
from methods.mgda import MGDA, mgda_weights
from methods.mgda_ub import MGDAUB
from methods.pcgrad import PCGrad, pcgrad_weights
from methods.upgrad import UPGrad, upgrad_weights
from tests.helpers import TINY_DIGITS, read_records, read_summary

D = torch.float64
TASKS3 = ("a", "b", "c")


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=D)


def random_jacobian(seed: int, tasks: int = 4, dim: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a common component plus noise and unequal norms: some pairs conflict, some do not
    J = torch.randn(tasks, dim, generator=g, dtype=D) + 0.4 * torch.randn(dim, generator=g, dtype=D)
    return J * torch.linspace(0.5, 3.0, tasks, dtype=D)[:, None]


class FakeContext:
    """The parts of the StepContext that aggregators use, on hand-made tensors."""

    def __init__(self, losses=None, seed: int = 0, shared_sizes=None, rep=None):
        self.losses = losses
        self.generator = torch.Generator().manual_seed(seed)
        self.shared_sizes = shared_sizes
        self._rep = rep
        self.step = 0
        self.logged: dict[str, list[float]] = {}

    def log(self, name, value):
        self.logged.setdefault(name, []).append(float(value))

    def reps(self):
        return [self._rep]


def make(cls, task_names=TASKS3, **overrides):
    return cls(cls.Config(**overrides), task_names)


# ---------------------------------------------------------------------------- MGDA
def test_min_norm_two_golden():
    # a = (2, 0), b = (0, 1): γ = (1 - 0) / (4 + 1 - 0) = 0.2, point (0.4, 0.8)
    assert min_norm_two(4.0, 0.0, 1.0) == pytest.approx(0.2)
    # b lies "beyond" a along a: the minimiser is the vertex a itself
    assert min_norm_two(1.0, 1.0, 2.0) == 1.0
    assert min_norm_two(2.0, 1.0, 1.0) == 0.0


def test_mgda_two_tasks_golden():
    res = mgda_weights(t([[4.0, 0.0], [0.0, 1.0]]))
    assert res.converged
    torch.testing.assert_close(res.weights, t([0.2, 0.8]))


def _qp_min_norm(G: np.ndarray) -> float:
    T = G.shape[0]
    res = minimize(lambda w: w @ G @ w, np.full(T, 1 / T), jac=lambda w: 2 * G @ w,
                   method="SLSQP", bounds=[(0, 1)] * T,
                   constraints=({"type": "eq", "fun": lambda w: w.sum() - 1},),
                   options={"ftol": 1e-14, "maxiter": 500})
    return float(res.fun)


@pytest.mark.parametrize("seed", range(6))
def test_mgda_min_norm_point_is_in_hull_and_smallest(seed):
    J = random_jacobian(seed, tasks=3 + seed % 3)
    G = J @ J.T
    res = mgda_weights(G)
    w = res.weights
    assert res.converged
    assert (w >= 0).all() and float(w.sum()) == pytest.approx(1.0)
    norm2 = float(w @ G @ w)
    assert norm2 <= _qp_min_norm(G.numpy()) + 1e-5 * float(G.diagonal().max())
    # first-order optimality: no vertex improves on the point (the Frank-Wolfe gap)
    assert float((G @ w).min()) >= norm2 - 1e-5 * float(G.diagonal().max())


def test_mgda_matches_a_brute_force_grid_for_three_tasks():
    G = (J := random_jacobian(11, tasks=3)) @ J.T
    steps = 400
    a, b = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = a + b <= steps
    W = np.stack([a[keep], b[keep], steps - a[keep] - b[keep]], 1) / steps
    grid_best = np.einsum("ni,ij,nj->n", W, G.numpy(), W).min()
    w = mgda_weights(G).weights
    assert float(w @ G @ w) <= grid_best + 1e-12


def test_mgda_direction_does_not_conflict():
    J = random_jacobian(3, tasks=5)
    d = mgda_weights(J @ J.T).weights @ J
    assert (J @ d >= -1e-6 * float((J ** 2).sum())).all()


def test_mgda_permutation_equivariant_and_scale_invariant():
    J = random_jacobian(4)
    w = mgda_weights(J @ J.T, tol=1e-13).weights
    perm = torch.tensor([2, 0, 3, 1])
    permuted = mgda_weights(J[perm] @ J[perm].T, tol=1e-13).weights
    torch.testing.assert_close(permuted, w[perm], atol=1e-6, rtol=0)
    scaled = mgda_weights(49.0 * J @ J.T, tol=1e-13).weights
    torch.testing.assert_close(scaled, w, atol=1e-6, rtol=0)


def test_mgda_normalizations():
    J = random_jacobian(5, tasks=3)
    losses = t([0.5, 2.0, 4.0])
    scaled = J * t([3.0, 0.2, 7.0])[:, None]
    # l2: the solve sees unit gradients, so it is blind to each gradient's norm
    w_l2 = mgda_weights(J @ J.T, losses, "l2", tol=1e-13).weights
    w_scaled = mgda_weights(scaled @ scaled.T, losses, "l2", tol=1e-13).weights
    torch.testing.assert_close(w_scaled, w_l2, atol=1e-6, rtol=0)
    # loss: the same as solving on g_t / L_t by hand
    by_hand = J / losses[:, None]
    torch.testing.assert_close(mgda_weights(J @ J.T, losses, "loss", tol=1e-13).weights,
                               mgda_weights(by_hand @ by_hand.T, tol=1e-13).weights,
                               atol=1e-7, rtol=0)
    unit = J / J.norm(dim=1, keepdim=True) / losses[:, None]
    torch.testing.assert_close(mgda_weights(J @ J.T, losses, "loss+", tol=1e-13).weights,
                               mgda_weights(unit @ unit.T, tol=1e-13).weights, atol=1e-7, rtol=0)


def test_mgda_aggregator_applies_weights_to_raw_gradients():
    J = random_jacobian(6, tasks=3)
    losses = t([0.5, 2.0, 4.0])
    method = make(MGDA, normalization="loss+")
    out = method.aggregate(J, FakeContext(losses=losses))
    torch.testing.assert_close(out.direction, out.weights @ J)
    assert float(out.weights.sum()) == pytest.approx(1.0)
    assert method.run_report() == {"solves": 1, "solver_failures": 0}


def test_mgda_unconverged_solve_is_logged_and_counted():
    # near-parallel gradients with the optimum inside a face: one iteration cannot finish
    J = t([[1.0, 0.0, 0.1], [0.0, 1.0, 0.1], [-0.7, -0.7, 0.1], [0.3, -0.9, 0.1]])
    assert not min_norm_element(J @ J.T, max_iter=1, tol=1e-12).converged
    ctx = FakeContext(losses=torch.ones(4, dtype=D))
    method = MGDA(MGDA.Config(max_iter=1, tol=1e-12), ("a", "b", "c", "d"))
    method.aggregate(J, ctx)
    assert ctx.logged["solver_failures"] == [1.0]
    assert method.run_report() == {"solves": 1, "solver_failures": 1}
    state = method.state_dict()
    fresh = MGDA(MGDA.Config(), ("a", "b", "c", "d"))
    fresh.load_state_dict(state)
    assert fresh.run_report() == {"solves": 1, "solver_failures": 1}


@pytest.mark.parametrize("cls", [MGDA, MGDAUB])
def test_mgda_refuses_bad_hyperparameters(cls):
    with pytest.raises(ConfigError, match=r"normalization.*none, l2, loss, loss\+"):
        make(cls, normalization="unit")
    with pytest.raises(ConfigError, match="max_iter"):
        make(cls, max_iter=0)
    assert MGDAUB.space == "rep" and MGDA.space == "param"


# ---------------------------------------------------------------------------- PCGrad
def test_pcgrad_two_task_golden_and_removes_conflict():
    J = t([[1.0, 0.0], [-1.0, 1.0]])
    # g1 - (g1·g2/|g2|²) g2 = (0.5, 0.5);  g2 - (g2·g1/|g1|²) g1 = (0, 1)
    w = pcgrad_weights(J @ J.T, [[1], [0]])
    torch.testing.assert_close(w @ J, t([0.5, 1.5]))
    torch.testing.assert_close(w, t([2.0, 1.5]))
    pc1, pc2 = t([1.0, 0.0]) + 0.5 * J[1], J[1] + J[0]
    assert float(pc1 @ J[1]) == pytest.approx(0.0) and float(pc2 @ J[0]) == pytest.approx(0.0)


def test_pcgrad_leaves_agreeing_gradients_alone():
    J = t([[1.0, 0.2, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 1.0]])
    torch.testing.assert_close(pcgrad_weights(J @ J.T, [[1, 2], [0, 2], [0, 1]]),
                               torch.ones(3, dtype=D))


def _pcgrad_by_vectors(J, orders):
    out = []
    for i in range(J.shape[0]):
        g = J[i].clone()
        for j in orders[i]:
            if g @ J[j] < 0:
                g = g - (g @ J[j]) / (J[j] @ J[j]) * J[j]
        out.append(g)
    return torch.stack(out).sum(0)


def test_pcgrad_gramian_form_matches_explicit_projections():
    J = random_jacobian(7, tasks=4)
    orders = [[2, 1, 3], [3, 0, 2], [1, 3, 0], [0, 2, 1]]
    torch.testing.assert_close(pcgrad_weights(J @ J.T, orders) @ J, _pcgrad_by_vectors(J, orders))


def test_pcgrad_randomness_comes_from_the_generator():
    J = random_jacobian(8, tasks=4)
    method = PCGrad(PCGrad.Config(), ("a", "b", "c", "d"))
    first = method.aggregate(J, FakeContext(seed=3)).direction
    torch.testing.assert_close(method.aggregate(J, FakeContext(seed=3)).direction, first)
    assert torch.isfinite(first).all()


# ---------------------------------------------------------------------------- GradDrop
def test_graddrop_golden():
    grads = t([[[1.0, 1.0]], [[-1.0, 3.0]]])   # [T=2, B=1, F=2]
    rep = t([[1.0, -1.0]])
    # signed sums: t1 (1, -1), t2 (-1, -3); purity P = (0.5, 0)
    uniform = t([0.3, 0.5])
    # coordinate 0: P > U keeps positive signed parts (task 1 only); coordinate 1: P < U keeps
    # the negative ones (both tasks)
    torch.testing.assert_close(graddrop_direction(grads, rep, uniform), t([[1.0, 4.0]]))
    torch.testing.assert_close(graddrop_direction(grads, rep, uniform, leak=1.0), t([[0.0, 4.0]]))
    torch.testing.assert_close(graddrop_direction(grads, rep, uniform, leak=0.5), t([[0.5, 4.0]]))


def test_graddrop_aggregator_shapes_and_determinism():
    gen = torch.Generator().manual_seed(0)
    rep = torch.randn(5, 2, 3, generator=gen, dtype=D)
    grads = torch.randn(3, 30, generator=gen, dtype=D)
    method = make(GradDrop)
    out = method.aggregate(grads, FakeContext(seed=1, rep=rep))
    assert out.direction.shape == (30,) and out.weights is None
    torch.testing.assert_close(method.aggregate(grads, FakeContext(seed=1, rep=rep)).direction,
                               out.direction)
    with pytest.raises(ConfigError, match="leak"):
        make(GradDrop, leak=1.5)


# ---------------------------------------------------------------------------- GradVac
def test_gradvac_with_zero_targets_is_pcgrad_for_two_tasks_and_updates_the_ema():
    J = t([[1.0, 0.0], [-1.0, 1.0]])
    beta = 0.01
    w, rho = gradvac_coefficients((J @ J.T)[None], torch.zeros(2, 2, 1, dtype=D), beta, [[1], [0]])
    torch.testing.assert_close(w[0] @ J, t([0.5, 1.5]))
    # cos(g1, g2) = -1/√2 in both directions; φ̂ ← (1-β)·0 + β·φ
    torch.testing.assert_close(rho[0, 1, 0], torch.tensor(-beta / math.sqrt(2), dtype=D))
    torch.testing.assert_close(rho[1, 0, 0], torch.tensor(-beta / math.sqrt(2), dtype=D))
    assert float(rho[0, 0, 0]) == 0.0


def test_gradvac_reaches_the_target_similarity():
    J = t([[2.0, 0.0], [0.0, 3.0]])            # orthogonal: φ = 0 < target φ̂ = 0.5
    rho = torch.full((2, 2, 1), 0.5, dtype=D)
    w, new_rho = gradvac_coefficients((J @ J.T)[None], rho, 0.1, [[1], [0]])
    # g1' = g1 + ||g1|| (φ̂·1 - 0) / (||g2|| √(1 - φ̂²)) g2, whose cosine with g2 is φ̂
    coef1 = 2.0 * 0.5 / (3.0 * math.sqrt(0.75))
    g1 = J[0] + coef1 * J[1]
    assert float(g1 @ J[1] / (g1.norm() * J[1].norm())) == pytest.approx(0.5)
    coef2 = 3.0 * 0.5 / (2.0 * math.sqrt(0.75))
    torch.testing.assert_close(w[0], t([1.0 + coef2, 1.0 + coef1]))
    torch.testing.assert_close(new_rho[0, 1, 0], torch.tensor(0.45, dtype=D))


def test_gradvac_parameter_groups_are_independent_and_state_round_trips():
    J = random_jacobian(9, tasks=3, dim=10)
    sizes = [4, 6]
    method = make(GradVac, granularity="parameter")
    out = method.aggregate(J, FakeContext(seed=2, shared_sizes=sizes))
    assert out.weights is None and method.rho.shape == (3, 3, 2)
    # each group alone, with the same random orders, gives the same slice of the update
    for k, (lo, hi) in enumerate([(0, 4), (4, 10)]):
        whole = make(GradVac)
        part = whole.aggregate(J[:, lo:hi], FakeContext(seed=2)).direction
        torch.testing.assert_close(out.direction[lo:hi], part)
        torch.testing.assert_close(whole.rho[..., 0], method.rho[..., k])
    fresh = make(GradVac, granularity="parameter")
    fresh.load_state_dict(method.state_dict())
    torch.testing.assert_close(fresh.rho, method.rho)
    with pytest.raises(ConfigError, match="granularity"):
        make(GradVac, granularity="layer")
    with pytest.raises(ConfigError, match="beta"):
        make(GradVac, beta=-0.1)


# ---------------------------------------------------------------------------- IMTL
def test_imtl_g_golden():
    # g1 = (1, 0), g2 = (0, 2): α = (2/3, 1/3), update (2/3, 2/3)
    alpha = imtl_g_weights(t([[1.0, 0.0], [0.0, 4.0]]))
    torch.testing.assert_close(alpha, t([2 / 3, 1 / 3]))


def _imtl_g_paper(J):
    """The paper's closed form: α_{2..T} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 - Σ α_{2..T}."""
    U = J / J.norm(dim=1, keepdim=True)
    Dm, Um = J[:1] - J[1:], U[:1] - U[1:]
    rest = J[0] @ Um.T @ torch.linalg.inv(Dm @ Um.T)
    return torch.cat([1 - rest.sum(0, keepdim=True), rest])


@pytest.mark.parametrize("seed", range(3))
def test_imtl_g_equal_projections_and_paper_formula(seed):
    J = random_jacobian(seed, tasks=4)
    alpha = imtl_g_weights(J @ J.T)
    d = alpha @ J
    proj = J @ d / J.norm(dim=1)
    torch.testing.assert_close(proj, proj[0].expand(4), atol=1e-9, rtol=1e-9)
    assert float(alpha.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(alpha, _imtl_g_paper(J), atol=1e-9, rtol=1e-7)
    # the direction is blind to the gradients' norms; the permutation just permutes α
    scaled = J * t([0.1, 5.0, 2.0, 1.0])[:, None]
    d_scaled = imtl_g_weights(scaled @ scaled.T) @ scaled
    assert float(d @ d_scaled / (d.norm() * d_scaled.norm())) == pytest.approx(1.0)
    perm = torch.tensor([3, 1, 0, 2])
    torch.testing.assert_close(imtl_g_weights(J[perm] @ J[perm].T), alpha[perm])


def test_imtl_g_degenerate_cases_are_finite():
    assert torch.equal(imtl_g_weights(t([[1.0, -1.0], [-1.0, 1.0]])), torch.zeros(2, dtype=D))
    assert torch.equal(imtl_g_weights(torch.zeros(3, 3, dtype=D)), torch.zeros(3, dtype=D))
    assert torch.isfinite(imtl_g_weights(t([[1.0, 0.0], [0.0, 0.0]]))).all()


def test_imtl_l_weights_objective_and_state():
    method = IMTLL(IMTLL.Config(), ("a", "b"))
    with torch.no_grad():
        method.scales.copy_(torch.tensor([0.0, math.log(2.0)]))
    losses = torch.tensor([2.0, 0.5], requires_grad=True)
    out = method.weigh(FakeContext(losses=losses))
    torch.testing.assert_close(out.weights, torch.tensor([1.0, 2.0]))
    assert float(out.objective.detach()) == pytest.approx(2.0 + 1.0 - math.log(2.0))
    out.objective.backward()
    # d/ds (e^s L - s) = e^s L - 1
    torch.testing.assert_close(method.scales.grad, torch.tensor([1.0, 0.0]))
    fresh = IMTLL(IMTLL.Config(), ("a", "b"))
    fresh.load_state_dict(method.state_dict())
    torch.testing.assert_close(fresh.scales, method.scales)


def test_imtl_combines_scales_and_gradient_balance():
    J = random_jacobian(10, tasks=3)
    zero = imtl_weights(J @ J.T, torch.zeros(3, dtype=D))
    torch.testing.assert_close(zero, imtl_g_weights(J @ J.T))
    scales = t([0.3, -1.0, 2.0])
    w = imtl_weights(J @ J.T, scales)
    assert float((w / scales.exp()).sum()) == pytest.approx(1.0)   # α on the scaled gradients
    d = w @ J
    proj = J @ d / J.norm(dim=1)
    torch.testing.assert_close(proj, proj[0].expand(3), atol=1e-9, rtol=1e-9)


class JacobianContext(FakeContext):
    def __init__(self, J, losses):
        super().__init__(losses=losses)
        self._J = J

    def jacobian(self):
        return self._J


def test_imtl_weighting_objective_reaches_scales():
    J = random_jacobian(12, tasks=3)
    method = IMTL(IMTL.Config(), TASKS3)
    losses = t([1.0, 2.0, 3.0]).requires_grad_()
    out = method.weigh(JacobianContext(J, losses))
    out.objective.backward()
    torch.testing.assert_close(method.scales.grad, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(out.weights, imtl_g_weights(J @ J.T))


# ---------------------------------------------------------------------------- CAGrad
def test_cagrad_with_c_zero_is_the_mean_gradient():
    J = random_jacobian(13)
    sol = cagrad_weights(J @ J.T, c=0.0)
    torch.testing.assert_close(sol.weights @ J, J.mean(0))


def test_cagrad_symmetric_golden():
    # g1 = (1,0), g2 = (0,1): w = (½, ½), g_w = g_0, λ = c, d = (1 + c) g_0 / (1 + c²)
    J = t([[1.0, 0.0], [0.0, 1.0]])
    c = 0.4
    for rescale, divisor in [(0, 1.0), (1, 1 + c * c), (2, 1 + c)]:
        sol = cagrad_weights(J @ J.T, c=c, rescale=rescale)
        assert sol.ok
        torch.testing.assert_close(sol.weights, torch.full((2,), 0.5 * (1 + c) / divisor, dtype=D),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_cagrad_maximises_the_worst_improvement_in_the_ball(seed):
    J = random_jacobian(seed, tasks=3, dim=5)
    c = 0.4
    sol = cagrad_weights(J @ J.T, c=c, rescale=0)
    assert sol.ok
    d = sol.weights @ J
    g0 = J.mean(0)
    radius = c * float(g0.norm())
    assert float((d - g0).norm()) == pytest.approx(radius, rel=1e-6)
    worst = float((J @ d).min())
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(20000, 5, generator=gen, dtype=D)
    # points of the ball, denser near its surface where the optimum lies
    depth = torch.rand(20000, 1, generator=gen, dtype=D) ** 0.2
    points = g0 + radius * depth * u / u.norm(dim=1, keepdim=True)
    assert float((points @ J.T).min(1).values.max()) <= worst + 1e-6
    # the solution is also invariant to the scale of the gradients
    torch.testing.assert_close(cagrad_weights(9.0 * J @ J.T, c=c, rescale=0).weights, sol.weights,
                               atol=1e-5, rtol=0)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(cagrad_weights(J[perm] @ J[perm].T, c=c, rescale=0).weights,
                               sol.weights[perm], atol=1e-5, rtol=0)


def test_cagrad_refuses_bad_hyperparameters_and_counts_solves():
    with pytest.raises(ConfigError, match=r"method\.cagrad\.c=-0\.1"):
        make(CAGrad, c=-0.1)
    with pytest.raises(ConfigError, match="rescale"):
        make(CAGrad, rescale=3)
    method = make(CAGrad)
    ctx = FakeContext()
    out = method.aggregate(random_jacobian(14, tasks=3), ctx)
    assert torch.isfinite(out.direction).all()
    assert ctx.logged["solver_failures"] == [0.0] and method.run_report()["solves"] == 1


# ---------------------------------------------------------------------------- UPGrad
def test_upgrad_golden():
    # g1/2 = (½, 0) projected on the cone → (¼, ¼); g2/2 = (-½, ½) → (0, ½); sum (¼, ¾)
    J = t([[1.0, 0.0], [-1.0, 1.0]])
    sol = upgrad_weights(J @ J.T, reg_eps=1e-12)
    assert sol.ok
    torch.testing.assert_close(sol.weights, t([1.0, 0.75]), atol=1e-8, rtol=0)
    # no conflict: the mean gradient
    J = t([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    torch.testing.assert_close(upgrad_weights(J @ J.T).weights, torch.full((3,), 1 / 3, dtype=D))


def _qp_project(u, G):
    res = minimize(lambda v: v @ G @ v, u.copy(), jac=lambda v: 2 * G @ v, method="SLSQP",
                   bounds=[(ui, None) for ui in u], options={"ftol": 1e-15, "maxiter": 500})
    return res.x


@pytest.mark.parametrize("seed", range(4))
def test_upgrad_matches_a_generic_qp_and_does_not_conflict(seed):
    J = random_jacobian(seed, tasks=4)
    G = J @ J.T
    sol = upgrad_weights(G)
    assert sol.ok
    Gn = G.numpy() / np.trace(G.numpy()) + 1e-4 * np.eye(4)
    expected = sum(_qp_project(np.eye(4)[k] / 4, Gn) for k in range(4))
    np.testing.assert_allclose(sol.weights.numpy(), expected, atol=1e-6)
    # with a negligible regularisation the promise is exact: d·g_t ≥ 0
    strict = upgrad_weights(G, reg_eps=1e-12).weights @ J
    assert (J @ strict >= -1e-8 * float(G.trace())).all()
    perm = torch.tensor([1, 3, 0, 2])
    torch.testing.assert_close(upgrad_weights(J[perm] @ J[perm].T).weights, sol.weights[perm])
    torch.testing.assert_close(upgrad_weights(25.0 * G).weights, sol.weights)


def test_upgrad_failed_solve_is_counted(monkeypatch):
    import scipy.optimize

    def exhausted(*args, **kwargs):
        raise RuntimeError("Maximum number of iterations reached.")

    # UPGrad imports nnls when it solves, so the patched one is what it calls.
    monkeypatch.setattr(scipy.optimize, "nnls", exhausted)
    method = make(UPGrad)
    ctx = FakeContext()
    out = method.aggregate(random_jacobian(15, tasks=3), ctx)
    assert torch.isfinite(out.direction).all()
    assert ctx.logged["solver_failures"] == [1.0]
    assert method.run_report() == {"solves": 1, "solver_failures": 1}
    with pytest.raises(ConfigError, match="reg_eps"):
        make(UPGrad, reg_eps=0.0)


# ---------------------------------------------------------------------------- all of them
def test_published_examples_of_an_independent_implementation():
    # the documented outputs of TorchJD's aggregators on J = [[-4, 1, 1], [6, 1, 1]]
    # (MGDA [0, 1, 1]; IMTL-G [0.0767, 1, 1]; CAGrad c=0.5 unrescaled [0.1835, 1.2041, 1.2041];
    # UPGrad [0.2929, 1.9004, 1.9004])
    J = t([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    G = J @ J.T
    torch.testing.assert_close(mgda_weights(G).weights @ J, t([0.0, 1.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(imtl_g_weights(G) @ J, t([0.0767, 1.0, 1.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(cagrad_weights(G, c=0.5, rescale=0).weights @ J,
                               t([0.1835, 1.2041, 1.2041]), atol=1e-4, rtol=0)
    torch.testing.assert_close(upgrad_weights(G).weights @ J, t([0.2929, 1.9004, 1.9004]),
                               atol=1e-4, rtol=0)


def test_every_aggregation_is_finite_on_zero_and_on_tiny_gradients():
    for J in (torch.zeros(3, 5, dtype=D), 1e-20 * random_jacobian(16, tasks=3, dim=5)):
        G = J @ J.T
        for w in (mgda_weights(G).weights, imtl_g_weights(G), cagrad_weights(G).weights,
                  upgrad_weights(G).weights, pcgrad_weights(G, [[1, 2], [0, 2], [0, 1]])):
            assert torch.isfinite(w).all()


@pytest.mark.parametrize("key, value", [("mgda.normalization", '"unit"'),
                                        ("mgda_ub.normalization", '"unit"'),
                                        ("cagrad.c", "-1.0"), ("cagrad.rescale", "5"),
                                        ("gradvac.granularity", '"layer"'),
                                        ("upgrad.reg_eps", "-1.0")])
def test_bad_hyperparameters_are_refused_from_the_command_line(key, value):
    method = key.split(".")[0]
    with pytest.raises(ConfigError, match=f"method.{key}"):
        build_requests("digits_tasks", [method], [0], "quick", [f"method.{key}={value}"], "cpu",
                       None)


METHODS = ["mgda", "mgda_ub", "pcgrad", "graddrop", "gradvac", "imtl_l", "imtl_g", "imtl",
           "cagrad", "upgrad"]


@pytest.mark.slow
def test_every_method_trains_end_to_end(tmp_path):
    # one run_all for all methods: the benchmark is built once and shared
    overrides = [*TINY_DIGITS, "train.batch_size=8", "data.val_size=16", "data.test_size=16"]
    requests = build_requests("digits_tasks", METHODS, [0], "quick", overrides, "cpu", None)
    outcomes = run_all(requests, tmp_path, force=True, progress=False)
    assert [o.request.method_name for o in outcomes] == METHODS
    for outcome in outcomes:
        method = outcome.request.method_name
        assert outcome.status == "complete", (method, outcome.reason)
        summary = read_summary(outcome.run_dir)
        train = [r for r in read_records(outcome.run_dir) if r["split"] == "train"]
        assert train and all(math.isfinite(v) for v in train[-1]["losses"].values())
        if method != "graddrop":
            assert set(train[-1]["weights"]) == {"first", "second", "sum"}, method
        if method in ("mgda", "mgda_ub", "cagrad", "upgrad"):
            report = summary["methods"][method]
            assert report["solves"] == train[-1]["steps"] and report["solver_failures"] == 0


def test_cagrad_active_set_reaches_the_minimum_slsqp_finds():
    # Random Gramians of 2-11 tasks, ill-conditioned, with opposed and duplicated gradients:
    # the active-set solve is certified by its Frank-Wolfe gap, is never worse than SLSQP's
    # point, and rarely needs the SLSQP fallback.
    import numpy as np

    from methods.cagrad import _dual_active_set, _dual_slsqp, _radius_and_linear

    rng = np.random.default_rng(0)
    stalled = 0
    for trial in range(150):
        T, D = int(rng.integers(2, 12)), int(rng.integers(1, 40))
        J = rng.normal(size=(T, D)) * np.logspace(0, rng.uniform(0, 3), T)[:, None]
        if trial % 5 == 0:
            J[1] = -J[0]
        if trial % 7 == 0:
            J[-1] = J[0]
        G = J @ J.T
        G /= G.diagonal().max()
        c = float(rng.choice([0.2, 0.4, 0.8]))
        w, converged = _dual_active_set(G, c)
        if not converged:
            stalled += 1
            continue
        radius, linear = _radius_and_linear(G, c)
        f = lambda v: v @ linear + radius * np.sqrt(v @ G @ v + 1e-8)  # noqa: E731
        grad = linear + radius * G @ w / np.sqrt(w @ G @ w + 1e-8)
        assert abs(w.sum() - 1) < 1e-12 and (w >= 0).all()
        assert grad @ w - grad.min() <= 1e-7
        assert f(w) <= f(_dual_slsqp(G, c)[0]) + 1e-10
    assert stalled <= 5
    J = torch.randn(4, 30, dtype=torch.float64)
    torch.testing.assert_close(cagrad_weights(J @ J.T, solver="active_set").weights,
                               cagrad_weights(J @ J.T, solver="slsqp").weights, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- Gramian base

class _Counting(GramianAggregator):
    """Weights from the Gramian's diagonal (in float64), head scales 1/w; counts the
    Gramians it is given."""

    needs = Needs(jacobian=True)

    def __init__(self, config, task_names):
        super().__init__(config, task_names)
        self.seen: list[torch.Tensor] = []

    def weights(self, gramian, ctx):
        self.seen.append(gramian)
        ctx.log("trace", gramian.trace())
        return gramian.diagonal().to(torch.float64) / gramian.trace()

    def head_scales(self, weights, ctx):
        return 1.0 / weights


def test_the_gramian_base_forms_g_once_and_returns_the_combination_of_the_gradients():
    J = random_jacobian(3).to(torch.float32)
    method = _Counting(_Counting.Config(), ("a", "b", "c", "d"))
    ctx = FakeContext()
    out = method.aggregate(J, ctx)
    (gramian,) = method.seen
    torch.testing.assert_close(gramian, J @ J.T, rtol=0, atol=0)
    w = (gramian.diagonal().to(torch.float64) / gramian.trace()).to(torch.float32)
    assert out.weights.dtype == torch.float32 and out.direction.dtype == torch.float32
    torch.testing.assert_close(out.weights, w, rtol=0, atol=0)
    torch.testing.assert_close(out.direction, w @ J, rtol=0, atol=0)
    torch.testing.assert_close(out.head_scales, 1.0 / w, rtol=0, atol=0)
    assert ctx.logged == {"trace": [float(gramian.trace())]}
    assert _Counting.space == "param"


def test_gramian_aggregators_are_those_the_methods_table_says():
    """docs/methods.md lists every built-in aggregator and whether it derives from
    GramianAggregator, with the reason; the list matches the classes."""
    from pathlib import Path

    import methods  # noqa: F401  (registers every method)
    from methods.registry import METHODS

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    section = text[text.index("### Gramian-based aggregators"):]
    section = section[:section.index("\n### ", 1)]
    documented = {name: answer for name, answer in
                  re.findall(r"^\| `(\w+)` \| (yes|no) \| .+ \|$", section, re.MULTILINE)}
    built_in = {n: issubclass(METHODS.get(n), GramianAggregator) for n in METHODS.names()
                if METHODS.get(n).__module__.startswith("methods.")
                and issubclass(METHODS.get(n), Aggregator)}
    assert sorted(documented) == sorted(built_in)
    assert {n: a == "yes" for n, a in documented.items()} == built_in
