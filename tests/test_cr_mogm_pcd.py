"""CR-MOGM (methods/cr_mogm.py) and PCD (methods/pcd.py), the two stateful aggregators shared
with TorchJD: golden values worked out by hand, each method's defining properties against
naive evaluations (PCD's update against its quadratic program solved in the parameter
space), agreement with TorchJD's ``CRMOGMWeighting`` and ``PCD`` over several steps on the
same float64 Jacobians (when it is installed), refusals, and training end to end."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import methods  # noqa: F401  (registers every method)
from engine.errors import ConfigError
from engine.runs.runner import build_requests, run_all
from methods.cr_mogm import CRMOGM, base_names
from methods.mgda import MGDA
from methods.pcd import PCD, priority_qp
from methods.upgrad import UPGrad
from tests.helpers import TINY_DIGITS, read_records, read_summary

D = torch.float64
S = math.sqrt


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=D)


class Ctx:
    """What the aggregators read from the step context: the losses (MGDA's normalisations)
    and the log."""

    def __init__(self, tasks: int = 3):
        self.step = 0
        self.losses = torch.ones(tasks, dtype=D)
        self.logged: dict[str, list[float]] = {}

    def log(self, name, value):
        self.logged.setdefault(name, []).append(float(value))


def names(count: int) -> tuple[str, ...]:
    return tuple("abcdefgh"[:count])


def make(cls, tasks: int = 3, **overrides):
    return cls(cls.Config(**overrides), names(tasks))


def jacobians(seed: int, steps: int, tasks: int = 4, dim: int = 9,
              conflict: float = 0.6) -> list[torch.Tensor]:
    """Jacobians with a common component, unequal norms and the secondary rows pulled
    against the first one, so that PCD's constraints bind at some steps and not at others."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        J = torch.randn(tasks, dim, generator=g, dtype=D) + 0.3 * torch.randn(dim, generator=g,
                                                                             dtype=D)
        J = J * torch.linspace(0.5, 3.0, tasks, dtype=D)[:, None]
        J[1:] -= conflict * J[0]
        out.append(J)
    return out


# ============================================================================ PCD
def run_pcd(method, Js):
    ctx = Ctx(method.num_tasks)
    return [method.aggregate(J, ctx) for J in Js], ctx


def test_pcd_golden_active_and_inactive():
    # g1 = (2, 0), g2 = (0, 3), τ = ½, ε = 0, first step: v̂ = ‖g‖², so g̃1 = (1, 0),
    # g̃2 = (0, 1); the constraint d2 ≥ ½ moves g̃1 to d̃ = (1, ½) = g̃1 + ½ g̃2, rescaled to
    # ‖g1‖ = 2: d = (2, 1)/√1.25, w = (s1, ½ s2)·2/√1.25 = (1, ⅓)/√1.25
    (out,), ctx = run_pcd(make(PCD, 2, tau=0.5, eps=0.0), [t([[2.0, 0.0], [0.0, 3.0]])])
    torch.testing.assert_close(out.direction, t([2.0, 1.0]) / S(1.25), rtol=0, atol=1e-15)
    torch.testing.assert_close(out.weights, t([1.0, 1 / 3]) / S(1.25), rtol=0, atol=1e-15)
    assert ctx.logged["active_constraints"] == [1.0] and ctx.logged["infeasible"] == [0.0]
    # g2 = (1, 1) already gets g̃2·g̃1 = 1/√2 ≥ τ‖g̃2‖² = 0.02: the update is g1 itself
    (out,), ctx = run_pcd(make(PCD, 2), [t([[2.0, 0.0], [1.0, 1.0]])])
    torch.testing.assert_close(out.direction, t([2.0, 0.0]), rtol=0, atol=1e-15)
    torch.testing.assert_close(out.weights, t([1.0, 0.0]), rtol=0, atol=1e-15)
    assert ctx.logged["active_constraints"] == [0.0]


def test_pcd_golden_moving_average():
    # β = ½, ε = 0. Step 1: ‖g‖² = (4, 9); step 2: (1, 9). The averages after step 2 are
    # ¼(4, 9) + ½(1, 9) = (1.5, 6.75), debiased by 1 − ¼: v̂ = (2, 9), so s = (1/√2, ⅓),
    # g̃1 = (1/√2, 0), g̃2 = (0, 1); d̃ = (1/√2, ½) (μ = ½), ‖d̃‖ = √0.75, ‖g1‖ = 1
    method = make(PCD, 2, tau=0.5, beta=0.5, eps=0.0)
    _, out = run_pcd(method, [t([[2.0, 0.0], [0.0, 3.0]]), t([[1.0, 0.0], [0.0, 3.0]])])[0]
    torch.testing.assert_close(out.direction, t([1 / S(2), 0.5]) / S(0.75), rtol=0, atol=1e-15)
    torch.testing.assert_close(out.weights, t([1 / S(2), 0.5 / 3]) / S(0.75), rtol=0,
                               atol=1e-15)
    torch.testing.assert_close(method.sq_norm_ema, t([1.5, 6.75]), rtol=0, atol=0)
    assert int(method.steps) == 2


def test_pcd_golden_three_tasks_and_infeasible_constraints():
    # orthonormal gradients, τ = ½: both constraints bind, d̃ = (1, ½, ½)
    J = torch.eye(3, dtype=D)
    (out,), _ = run_pcd(make(PCD, 3, tau=0.5, eps=0.0), [J])
    torch.testing.assert_close(out.direction, t([1.0, 0.5, 0.5]) / S(1.5), rtol=0, atol=1e-15)
    # g2 = -g3: d·g2 ≥ τ and -d·g2 ≥ τ cannot both hold; they are dropped, the update is g1
    J = t([[3.0, 0.0], [0.0, 1.0], [0.0, -2.0]])
    (out,), ctx = run_pcd(make(PCD, 3, tau=0.1), [J])
    torch.testing.assert_close(out.direction, J[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(out.weights, t([1.0, 0.0, 0.0]), rtol=0, atol=1e-15)
    assert ctx.logged["infeasible"] == [1.0]
    # with τ = 0 the same constraints hold together (d·g2 = 0): the update is g1 as well
    (out,), ctx = run_pcd(make(PCD, 3, tau=0.0), [J])
    torch.testing.assert_close(out.direction, J[0], rtol=0, atol=1e-15)
    assert ctx.logged["infeasible"] == [0.0]


def test_pcd_qp_drops_a_constraint_on_the_way():
    # τ = 0, g1 = (1, -2): g2 = (1, 2) (g2·g1 = -3) is the most violated and enters with
    # μ2 = 3/5, d = (1.6, -0.8); then g3 = (0, 1) (g3·d = -0.8): moving along its part
    # orthogonal to g2, z = g3 - ⅖g2, shrinks μ2 by ⅖ per unit, so μ2 reaches 0 at 1.5,
    # before g3's constraint holds (at 4): g2 is dropped, g3 re-enters alone with μ3 = 2,
    # d = (1, 0), where g2·d = 1 ≥ 0 holds without it
    J = np.array([[1.0, -2.0], [1.0, 2.0], [0.0, 1.0]])
    sol = priority_qp(J @ J.T, 0.0)
    assert sol.feasible and sol.converged and sol.iterations == 3  # add, drop, add
    np.testing.assert_allclose(sol.weights, [1.0, 0.0, 2.0], rtol=0, atol=1e-15)
    assert sol.active == [2] and sol.violation == 0.0


def _pcd_naive(Js: list[np.ndarray], tau: float, beta: float, eps: float) -> list[np.ndarray]:
    """PCD written out: Adam's debiased moving average of the squared norms, the normalised
    gradients, the program solved in the parameter space (SciPy's SLSQP), the rescaling."""
    ema = np.zeros(len(Js[0]))
    out = []
    for k, J in enumerate(Js, start=1):
        ema = beta * ema + (1 - beta) * (J ** 2).sum(1)
        scaled = J / np.sqrt(ema / (1 - beta ** k) + eps)[:, None]
        target, others = scaled[0], scaled[1:]
        bounds = tau * (others ** 2).sum(1)
        res = minimize(lambda d: 0.5 * ((d - target) ** 2).sum(), target.copy(),
                       jac=lambda d: d - target, method="SLSQP",
                       constraints=[{"type": "ineq", "fun": lambda d: others @ d - bounds,
                                     "jac": lambda d: others}],
                       options={"ftol": 1e-15, "maxiter": 1000})
        assert res.success, res.message
        d = res.x
        out.append(d * np.linalg.norm(J[0]) / np.linalg.norm(d))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_pcd_is_the_projection_of_the_primary_gradient(seed):
    tau, beta, eps = 0.3, 0.9, 1e-8
    Js = jacobians(seed, 5, tasks=3 + seed)
    method = make(PCD, 3 + seed, tau=tau, beta=beta)
    outs, ctx = run_pcd(method, Js)
    naive = _pcd_naive([J.numpy() for J in Js], tau, beta, eps)
    assert sum(ctx.logged["active_constraints"]) > 0  # the constraints did bind
    ema = np.zeros(3 + seed)
    for k, (out, J, expected) in enumerate(zip(outs, Js, naive), start=1):
        d = out.direction
        np.testing.assert_allclose(d.numpy(), expected, atol=1e-6 * float(J.abs().max()))
        torch.testing.assert_close(d.norm(), J[0].norm())  # the primary gradient's norm
        # the constraints hold at the output: d is d̃ times ‖g1‖/‖d̃‖ > 0
        ema = beta * ema + (1 - beta) * (J ** 2).sum(1).numpy()
        s = torch.from_numpy(1 / np.sqrt(ema / (1 - beta ** k) + eps))
        scaled = J * s[:, None]
        d_tilde = d * float((out.weights / s)[0]) ** -1  # g̃1's weight in d̃ is 1
        slack = scaled[1:] @ d_tilde - tau * (scaled[1:] ** 2).sum(1)
        assert (slack >= -1e-9 * float((scaled ** 2).sum(1).max())).all(), (k, slack)
        assert (out.weights[1:] >= 0).all()


def test_pcd_is_the_primary_gradient_when_no_constraint_binds():
    g = torch.Generator().manual_seed(3)
    method = make(PCD, 4)
    for _ in range(4):
        g1 = torch.randn(8, generator=g, dtype=D)
        # every secondary gradient close to g1: each already gets more than τ of its progress
        J = torch.stack([g1] + [c * (g1 + 0.2 * torch.randn(8, generator=g, dtype=D))
                                for c in (0.1, 1.0, 30.0)])
        out = method.aggregate(J, Ctx(4))
        torch.testing.assert_close(out.direction, g1, rtol=0, atol=1e-14)
        torch.testing.assert_close(out.weights, t([1.0, 0.0, 0.0, 0.0]), rtol=0, atol=1e-15)


def test_pcd_is_scale_free_in_each_task():
    """Multiplying a task's gradients by the same constant at every step changes nothing
    (ε = 0); the update keeps the primary gradient's norm."""
    Js = jacobians(5, 4, tasks=3)
    factors = t([7.0, 0.01, 300.0])[:, None]
    plain, _ = run_pcd(make(PCD, 3, tau=0.4, eps=0.0), Js)
    scaled, _ = run_pcd(make(PCD, 3, tau=0.4, eps=0.0), [J * factors for J in Js])
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(b.direction, 7.0 * a.direction, rtol=1e-12, atol=0)


def test_pcd_secondary_tasks_are_interchangeable_but_not_the_primary():
    Js = jacobians(6, 4, tasks=4)
    perm = [0, 3, 1, 2]
    plain, _ = run_pcd(make(PCD, 4, tau=0.3), Js)
    relabelled, _ = run_pcd(make(PCD, 4, tau=0.3), [J[perm] for J in Js])
    for a, b in zip(plain, relabelled):
        torch.testing.assert_close(b.direction, a.direction, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b.weights, a.weights[perm], rtol=1e-12, atol=1e-14)
    swapped, _ = run_pcd(make(PCD, 4, tau=0.3), [J[[1, 0, 2, 3]] for J in Js])
    assert not torch.allclose(swapped[0].direction, plain[0].direction)
    torch.testing.assert_close(swapped[0].direction.norm(), Js[0][1].norm())


def test_pcd_zero_primary_and_non_finite_inputs():
    method = make(PCD, 3)
    J = t([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])
    out = method.aggregate(J, Ctx())
    assert (out.direction == 0).all() and (out.weights == 0).all()
    ema = method.sq_norm_ema.clone()
    bad = J.clone()
    bad[1, 0] = float("inf")
    out = method.aggregate(bad, Ctx())
    assert out.weights.isnan().all()
    torch.testing.assert_close(method.sq_norm_ema, ema, rtol=0, atol=0)  # left as it was
    assert int(method.steps) == 1


def test_pcd_counts_a_solve_cut_off_by_its_cap(monkeypatch):
    import methods.pcd as pcd

    J = np.array([[1.0, -2.0], [1.0, 2.0], [0.0, 1.0]])
    capped = priority_qp(J @ J.T, 0.0, max_iter=1)
    assert not capped.converged and capped.feasible
    # no iteration at all: the first violated constraint ends the solve
    monkeypatch.setattr(pcd, "priority_qp", lambda *a, **k: priority_qp(*a, **k, max_iter=0))
    method, ctx = make(PCD, 3), Ctx()
    out = method.aggregate(torch.from_numpy(J), ctx)
    assert torch.isfinite(out.direction).all()
    assert ctx.logged["solver_failures"] == [1.0]
    assert method.run_report() == {"solves": 1, "solver_failures": 1}


def test_pcd_refuses_a_single_task_and_is_not_symmetric():
    with pytest.raises(ConfigError, match="at least 2 tasks") as info:
        make(PCD, 1)
    assert "\n" not in str(info.value)
    assert PCD.permutation_equivariant is False
    for key, value in (("tau", 1.5), ("beta", 1.0), ("eps", -1e-9)):
        with pytest.raises(ConfigError, match=f"method.pcd.{key}"):
            make(PCD, **{key: value})


# ============================================================================ CR-MOGM
def test_cr_mogm_golden_with_mgda():
    # two tasks, MGDA: (1, 0), (0, 1) → λ̂ = (½, ½); (1, 0), (0, 2) → the min-norm point
    # γ = 4/5, λ̂ = (0.8, 0.2). α = 0.9: λ1 = λ̂1, λ2 = 0.9(½, ½) + 0.1(0.8, 0.2)
    method = make(CRMOGM, 2)
    first = method.aggregate(t([[1.0, 0.0], [0.0, 1.0]]), Ctx(2))
    torch.testing.assert_close(first.weights, t([0.5, 0.5]), rtol=0, atol=1e-15)
    second = method.aggregate(t([[1.0, 0.0], [0.0, 2.0]]), Ctx(2))
    torch.testing.assert_close(second.weights, t([0.53, 0.47]), rtol=0, atol=1e-15)
    torch.testing.assert_close(second.direction, t([0.53, 0.94]), rtol=0, atol=1e-15)
    # λ_0 = (1, 0), α = ½: λ1 = ½(1, 0) + ½(½, ½)
    method = make(CRMOGM, 2, alpha=0.5, initial_weights=(1.0, 0.0))
    out = method.aggregate(t([[1.0, 0.0], [0.0, 1.0]]), Ctx(2))
    torch.testing.assert_close(out.weights, t([0.75, 0.25]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("base", ["mgda", "upgrad", "pcd"])
def test_cr_mogm_is_an_average_of_its_bases_weights(base):
    """λ_k = α^(k-1) λ̂_1 + Σ_{j≥2} (1 − α) α^(k-j) λ̂_j, the base's weights from a separate
    instance on the same inputs; α = 0 is the base itself, α = 1 stays at λ_0."""
    Js = jacobians(2, 6, tasks=4)
    reference = make({"mgda": MGDA, "upgrad": UPGrad, "pcd": PCD}[base], 4)
    hats = [reference.aggregate(J, Ctx(4)).weights for J in Js]
    alpha = 0.6
    smoothed = make(CRMOGM, 4, base=base, alpha=alpha)
    plain = make(CRMOGM, 4, base=base, alpha=0.0)
    frozen = make(CRMOGM, 4, base=base, alpha=1.0, initial_weights=(0.1, 0.2, 0.3, 0.4))
    for k, J in enumerate(Js, start=1):
        coefficients = [alpha ** (k - 1)] + [(1 - alpha) * alpha ** (k - j)
                                             for j in range(2, k + 1)]
        assert math.isclose(sum(coefficients), 1.0)
        expected = sum(c * h for c, h in zip(coefficients, hats[:k]))
        out = smoothed.aggregate(J, Ctx(4))
        torch.testing.assert_close(out.weights, expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(out.direction, expected @ J, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(plain.aggregate(J, Ctx(4)).weights, hats[k - 1], rtol=0,
                                   atol=0)
        torch.testing.assert_close(frozen.aggregate(J, Ctx(4)).weights,
                                   t([0.1, 0.2, 0.3, 0.4]), rtol=0, atol=0)
        if base == "mgda":  # an average of points of the simplex stays in it
            assert (out.weights >= 0).all() and math.isclose(float(out.weights.sum()), 1.0)


def test_cr_mogm_state_and_report_include_the_base():
    method = make(CRMOGM, 4, base="upgrad")
    Js = jacobians(4, 5, tasks=4)
    for J in Js[:3]:
        method.aggregate(J, Ctx(4))
    state = method.state_dict()
    assert {"lambd", "steps", "wrapped.solves", "wrapped.solver_failures"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = make(CRMOGM, 4, base="upgrad")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for J in Js[3:]:
        torch.testing.assert_close(restored.aggregate(J, Ctx(4)).direction,
                                   method.aggregate(J, Ctx(4)).direction, rtol=0, atol=0)
    assert restored.run_report() == method.run_report() == {"solves": 5, "solver_failures": 0}


def test_cr_mogm_base_options():
    method = make(CRMOGM, 3, base_options=("normalization=l2", "max_iter = 500", "tol=1e-6"))
    assert isinstance(method.wrapped, MGDA)
    cfg = method.wrapped.config
    assert (cfg.normalization, cfg.max_iter, cfg.tol) == ("l2", 500, 1e-6)
    method = make(CRMOGM, 3, base="cagrad", base_options=("c=1",))
    assert method.wrapped.config.c == 1.0 and isinstance(method.wrapped.config.c, float)
    # through --set, as a TOML list or a comma-separated string
    for text in ('["normalization=loss", "max_iter=40"]', "normalization=loss,max_iter=40"):
        (request,) = build_requests("digits_tasks", ["cr_mogm"], [0], "quick",
                                    [*TINY_DIGITS, f"method.cr_mogm.base_options={text}"],
                                    "cpu", None, check_data=False)
        config = request.config.methods["cr_mogm"].base_config()
        assert (config.normalization, config.max_iter) == ("loss", 40)


@pytest.mark.parametrize("overrides, message", [
    ({"base": "ew"}, "method.cr_mogm.base='ew' is not valid; expected one of aligned_mtl,"),
    ({"base": "mgda_ub"}, "method.cr_mogm.base='mgda_ub' is not valid"),
    ({"base": "cr_mogm"}, "method.cr_mogm.base='cr_mogm' is not valid"),
    ({"base_options": ("tol",)}, "method.cr_mogm.base_options: 'tol' is not KEY=VALUE"),
    ({"base_options": ("tolerance=1",)}, "mgda has no option 'tolerance'; its options: "
                                         "normalization, max_iter, tol"),
    ({"base_options": ("tol=-1",)}, "method.cr_mogm.base_options: mgda.tol=-1.0 is out of "
                                    "range"),
    ({"base_options": ("max_iter=1.5",)}, "mgda.max_iter=1.5: expected an integer"),
    ({"base_options": ("normalization=l3",)}, "mgda.normalization='l3' is not valid"),
    ({"initial_weights": (1.0, math.nan, 0.0)}, "method.cr_mogm.initial_weights"),
    ({"initial_weights": (1.0, 0.0)}, "method.cr_mogm.initial_weights has 2 values"),
    ({"base": "krum", "base_options": ("n_byzantine=1",)},
     "method.cr_mogm.base=krum: method.krum.n_byzantine=1 needs at least 4 tasks"),
])
def test_cr_mogm_refuses_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        make(CRMOGM, 3, **overrides)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_cr_mogm_bases_are_the_gramian_aggregators_of_the_jacobian():
    assert {"mgda", "upgrad", "cagrad", "pcgrad", "krum", "pcd"} <= set(base_names())
    assert not {"mgda_ub", "aligned_mtl_ub", "cr_mogm", "nashmtl", "ew"} & set(base_names())


# ============================================================================ TorchJD
def _torchjd():
    return pytest.importorskip("torchjd.aggregation")


@pytest.mark.parametrize("tasks, tau, beta", [(2, 0.02, 0.999), (3, 0.3, 0.9), (5, 0.1, 0.5),
                                              (5, 0.9, 0.999)])
def test_pcd_equals_torchjd_over_several_steps(tasks, tau, beta):
    tj = _torchjd().PCD(tau=tau, beta=beta)
    method = make(PCD, tasks, tau=tau, beta=beta)
    Js = jacobians(10 + tasks, 8, tasks=tasks)
    Js[3] = Js[3].clone()
    Js[3][-1] = -2.0 * Js[3][1]  # opposed secondary gradients: infeasible for τ > 0
    Js[5] = Js[5].clone()
    Js[5][1] = 0.0  # a zero secondary gradient
    ctx = Ctx(tasks)
    for step, J in enumerate(Js):
        scale = float(J.abs().max())
        torch.testing.assert_close(method.aggregate(J, ctx).direction, tj(J), rtol=0,
                                   atol=1e-11 * scale, msg=f"step {step}")


def test_cr_mogm_equals_torchjd_over_several_steps():
    """TorchJD's CRMOGMWeighting around the same weighting: UPGrad (the same quadratic
    programs), MGDA on two tasks (TorchJD's Frank-Wolfe is exact there: one line search)
    and PCD."""
    aggregation = _torchjd()
    pytest.importorskip("quadprog")
    pytest.importorskip("qpsolvers")
    cases = [("upgrad", aggregation.UPGradWeighting, 4, ()),
             ("upgrad", aggregation.UPGradWeighting, 4, (0.1, 0.5, 0.2, 0.2)),
             ("mgda", aggregation.MGDAWeighting, 2, ()),
             ("pcd", aggregation.PCDWeighting, 3, (1.0, 0.0, 0.0))]
    for base, weighting, tasks, initial in cases:
        theirs = aggregation.GramianWeightedAggregator(aggregation.CRMOGMWeighting(
            weighting(), alpha=0.7,
            initial_weights=torch.tensor(initial, dtype=D) if initial else None))
        ours = make(CRMOGM, tasks, base=base, alpha=0.7, initial_weights=initial)
        for step, J in enumerate(jacobians(20 + tasks, 6, tasks=tasks)):
            torch.testing.assert_close(ours.aggregate(J, Ctx(tasks)).direction, theirs(J),
                                       rtol=0, atol=1e-12 * float(J.abs().max()),
                                       msg=f"{base}, step {step}")


# ============================================================================ end to end
@pytest.mark.slow
def test_cr_mogm_and_pcd_train_end_to_end(tmp_path):
    specs = ["cr_mogm", "pcd"]
    overrides = [*TINY_DIGITS, "data.val_size=16", "data.test_size=16"]
    requests = build_requests("digits_tasks", specs, [0], "quick", overrides, "cpu", None)
    requests += build_requests("digits_tasks", ["cr_mogm"], [0], "quick",
                               [*overrides, "method.cr_mogm.base=upgrad",
                                "method.cr_mogm.alpha=0.5"], "cpu", None)
    outcomes = run_all(requests, tmp_path, force=True, progress=False)
    assert len({o.run_dir for o in outcomes}) == 3  # the base's setting is in the hash
    for outcome in outcomes:
        method = outcome.request.method_name
        assert outcome.status == "complete", (method, outcome.reason)
        train = [r for r in read_records(outcome.run_dir) if r["split"] == "train"]
        assert train and all(math.isfinite(v) for v in train[-1]["losses"].values())
        assert set(train[-1]["weights"]) == {"first", "second", "sum"}, method
        report = read_summary(outcome.run_dir)["methods"][method]
        assert report["solves"] == train[-1]["steps"] and report["solver_failures"] == 0
    pcd_record = [r for r in read_records(outcomes[1].run_dir) if r["split"] == "train"][-1]
    assert {"active_constraints", "infeasible"} <= set(pcd_record["method"])
