"""Tests of the loss-weighting methods: GLS, RLW, UW, DWA, FAMO, STCH, GradNorm, MetaBalance,
MTAdam and IGBv2.

Golden values are derived by hand from the papers' formulas (the derivation is in each
test); properties are checked on small float64 tensors; stateful methods must resume
exactly from a state dict saved and loaded as checkpoints are (``weights_only=True``); every
method trains a few steps end to end on digits_tasks.
"""
from __future__ import annotations

import io
import math

import pytest
import torch

from engine.errors import ConfigError
from engine.runs.runner import build_requests
from methods.base import MethodConfig
from methods.dwa import DynamicWeightAverage, dwa_weights
from methods.famo import FAMO, famo_logit_grad, famo_weights
from methods.gls import gls_objective, gls_weights
from methods.gradnorm import GradNorm, gradnorm_loss, renormalise
from methods.igbv2 import IGBv2, igb_reward, igb_weights, soft_q_target, squashed_log_prob
from methods.metabalance import MetaBalance, metabalance_direction
from methods.mtadam import MTAdam, mtadam_step
from methods.rlw import RandomLossWeighting, rlw_weights
from methods.registry import METHODS
from methods.stch import SmoothTchebycheff, stch_objective, stch_weights
from methods.uw import UncertaintyWeighting, uw_objective, uw_weights
from tests.helpers import TINY_DIGITS, read_records, tiny_run

D = torch.float64
TASKS = ("a", "b", "c")


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


class FakeContext:
    """The parts of the engine's StepContext the weighting methods use."""

    def __init__(self, losses, *, epoch=0, step=0, seed=0, jacobian=None, sizes=None,
                 last_grads=None, recomputed=None, task_names=None):
        self.losses = losses
        self.raw_losses = losses
        self.task_names = task_names or TASKS[:losses.shape[0]]
        self.epoch, self.step = epoch, step
        self.generator = torch.Generator().manual_seed(seed)
        self._jacobian, self.shared_sizes = jacobian, sizes
        self._last_grads, self._recomputed = last_grads, recomputed
        self.jacobian_calls = 0
        self.logged: dict[str, torch.Tensor] = {}

    def jacobian(self):
        self.jacobian_calls += 1
        return self._jacobian

    def last_shared_params(self):
        return []

    def task_grads(self, params, create_graph=False):
        return self._last_grads

    def log(self, name, value):
        self.logged[name] = value

    def recompute_losses(self):
        return self._recomputed


def roundtrip(method) -> dict:
    """The method's state dict as a checkpoint stores and loads it."""
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def build(cls, names=TASKS, **cfg):
    return cls(cls.Config(**cfg), names)


# --------------------------------------------------------------------------- GLS

def test_gls_golden_and_gradient():
    losses = t(1.0, 4.0, 16.0)                 # geometric mean 4
    assert gls_objective(losses).item() == pytest.approx(4.0, rel=1e-12)
    # ∂G/∂L_t = G/(T·L_t) = 4/(3·L_t)
    torch.testing.assert_close(gls_weights(losses), t(4 / 3, 1 / 3, 1 / 12))
    x = losses.clone().requires_grad_()
    (grad,) = torch.autograd.grad(gls_objective(x), x)
    torch.testing.assert_close(gls_weights(losses), grad)


def test_gls_rescaling_a_loss_changes_only_the_step_size():
    losses, scale = t(0.3, 2.0, 7.0), t(1.0, 100.0, 0.01)
    # Each task's gradient is scaled by s_t with its loss, so the update direction is
    # Σ_t w_t(sL)·s_t·∇L_t; it must be a constant multiple of Σ_t w_t(L)·∇L_t.
    ratio = gls_weights(losses * scale) * scale / gls_weights(losses)
    torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0].item()))
    # and w_t·L_t = G/T is the same for every task
    product = gls_weights(losses) * losses
    torch.testing.assert_close(product, torch.full_like(product, gls_objective(losses).item() / 3))


# --------------------------------------------------------------------------- RLW

def test_rlw_golden_and_reproducible_from_the_generator():
    torch.testing.assert_close(rlw_weights(t(0.0, math.log(2), math.log(3))), t(1 / 6, 2 / 6, 3 / 6))
    method = build(RandomLossWeighting)
    losses = t(1.0, 2.0, 3.0)
    w1 = method.weigh(FakeContext(losses, seed=7)).weights
    w2 = method.weigh(FakeContext(losses, seed=7)).weights
    expected = torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(7), dtype=D), 0)
    torch.testing.assert_close(w1, expected)
    torch.testing.assert_close(w1, w2)
    assert w1.sum().item() == pytest.approx(1.0)
    assert not torch.allclose(w1, method.weigh(FakeContext(losses, seed=8)).weights)


# --------------------------------------------------------------------------- UW

def test_uw_golden_objective_and_gradient():
    s, losses = t(0.0, math.log(2.0)), t(2.0, 3.0)
    torch.testing.assert_close(uw_weights(s), t(0.5, 0.25))
    # 2/(2·1) + 0 + 3/(2·2) + ln2/2
    assert uw_objective(losses, s).item() == pytest.approx(1.0 + 0.75 + math.log(2) / 2)
    # The optimum of s_t is log L_t: the gradient vanishes there.
    at_opt = torch.log(losses).requires_grad_()
    (grad,) = torch.autograd.grad(uw_objective(losses, at_opt), at_opt)
    torch.testing.assert_close(grad, torch.zeros(2, dtype=D))


def test_uw_learns_its_log_variances_through_the_objective():
    method = build(UncertaintyWeighting, names=("a", "b"))
    assert [p is method.log_var for p in method.trainable_parameters()] == [True]
    out = method.weigh(FakeContext(torch.tensor([2.0, 3.0])))
    torch.testing.assert_close(out.weights, torch.full((2,), 0.5 * math.exp(0.5)))
    out.objective.backward()
    # ∂/∂s_t = −L_t/(2e^{s_t}) + 1/2 at s = −0.5
    torch.testing.assert_close(method.log_var.grad,
                               torch.tensor([-2.0, -3.0]) * 0.5 * math.exp(0.5) + 0.5)


def test_uw_state_roundtrip():
    method = build(UncertaintyWeighting)
    with torch.no_grad():
        method.log_var.copy_(torch.tensor([0.1, -0.2, 0.3]))
    fresh = build(UncertaintyWeighting)
    fresh.load_state_dict(roundtrip(method))
    torch.testing.assert_close(fresh.log_var, method.log_var)


# --------------------------------------------------------------------------- DWA

def test_dwa_golden_and_sum():
    # ratios [0.5, 1]; temperature 2: 2·exp(r/2)/Σexp(r/2)
    e1, e2 = math.exp(0.25), math.exp(0.5)
    torch.testing.assert_close(dwa_weights(t(1.0, 2.0), t(2.0, 2.0), 2.0),
                               t(2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)))
    gen = torch.Generator().manual_seed(0)
    last, before = torch.rand(5, generator=gen, dtype=D) + 0.1, torch.rand(5, generator=gen, dtype=D) + 0.1
    assert dwa_weights(last, before, 0.7).sum().item() == pytest.approx(5.0)


def test_dwa_schedule_and_state_roundtrip():
    method = build(DynamicWeightAverage)
    losses = torch.tensor([1.0, 1.0, 1.0])
    torch.testing.assert_close(method.weigh(FakeContext(losses)).weights, torch.ones(3))
    method.on_epoch_end(0, t(4.0, 4.0, 4.0))
    torch.testing.assert_close(method.weigh(FakeContext(losses, epoch=1)).weights, torch.ones(3))
    method.on_epoch_end(1, t(2.0, 4.0, 1.0))
    expected = dwa_weights(t(2.0, 4.0, 1.0), t(4.0, 4.0, 4.0), 2.0).float()
    torch.testing.assert_close(method.weigh(FakeContext(losses, epoch=2)).weights, expected)
    method.on_epoch_end(2, t(1.0, 3.0, 1.0))
    fresh = build(DynamicWeightAverage)
    fresh.load_state_dict(roundtrip(method))
    torch.testing.assert_close(fresh.weigh(FakeContext(losses, epoch=3)).weights,
                               method.weigh(FakeContext(losses, epoch=3)).weights)
    torch.testing.assert_close(fresh.weigh(FakeContext(losses, epoch=3)).weights,
                               dwa_weights(t(1.0, 3.0, 1.0), t(2.0, 4.0, 1.0), 2.0).float())


# --------------------------------------------------------------------------- FAMO

def test_famo_golden_weights_and_logit_gradient():
    # z = [1/2, 1/2], D = [1, 2]: c = 1/2 + 1/4 = 3/4, w = z/(c·D) = [2/3, 1/3]
    w = famo_weights(t(1.0, 2.0), t(0.0, 0.0), t(0.0, 0.0))
    torch.testing.assert_close(w, t(2 / 3, 1 / 3))
    # δ = [1, 2] (log-loss decreases), Jᵀδ = z ⊙ (δ − ⟨z,δ⟩) = [−1/4, 1/4]
    grad = famo_logit_grad(t(0.0, 0.0), t(1.0, 1.0), t(math.exp(-1), math.exp(-2)), t(0.0, 0.0))
    torch.testing.assert_close(grad, t(-0.25, 0.25), atol=1e-7, rtol=0)
    # the same as autograd through the softmax (the authors' way)
    logits = t(0.3, -0.2, 1.0).requires_grad_()
    delta = torch.log(t(1.0, 2.0, 3.0) + 1e-8) - torch.log(t(0.5, 1.9, 3.2) + 1e-8)
    (auto,) = torch.autograd.grad(torch.softmax(logits, 0), logits, grad_outputs=delta)
    torch.testing.assert_close(famo_logit_grad(logits.detach(), t(1.0, 2.0, 3.0), t(0.5, 1.9, 3.2),
                                               t(0.0, 0.0, 0.0)), auto)


def test_famo_weights_equal_the_objective_gradient_and_sum_to_one():
    losses, logits, bounds = t(0.7, 2.5, 4.0), t(0.2, -1.0, 0.5), t(0.1, 0.0, 1.0)
    x = losses.clone().requires_grad_()
    z = torch.softmax(logits, 0)
    gap = x - bounds + 1e-8
    objective = (torch.log(gap) * z / (z / gap.detach()).sum()).sum()
    (grad,) = torch.autograd.grad(objective, x)
    w = famo_weights(losses, logits, bounds)
    torch.testing.assert_close(w, grad)
    assert w.sum().item() == pytest.approx(1.0)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(famo_weights(losses[perm], logits[perm], bounds[perm]), w[perm])


def famo_steps(method, start: int, count: int) -> list[torch.Tensor]:
    out = []
    for k in range(start, start + count):
        losses = torch.tensor([1.0 + 0.1 * k, 2.0, 3.0 - 0.2 * k])
        ctx = FakeContext(losses, step=k, recomputed=losses * torch.tensor([0.9, 0.99, 0.95]))
        out.append(method.weigh(ctx).weights)
        method.after_step(ctx)
    return out


def test_famo_updates_its_logits_after_the_step_and_resumes_exactly():
    method = build(FAMO)
    assert method.trainable_parameters() == []
    famo_steps(method, 0, 3)
    assert not torch.allclose(method.logits.detach(), torch.zeros(3))
    # a task whose loss fell least gains weight: task b (0.99) over a (0.9) and c (0.95)
    assert method.logits[1] > method.logits[0] and method.logits[1] > method.logits[2]
    fresh = build(FAMO)
    fresh.load_state_dict(roundtrip(method))
    for a, b in zip(famo_steps(method, 3, 3), famo_steps(fresh, 3, 3)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(fresh.logits, method.logits, rtol=0, atol=0)


def test_famo_refuses_bounds_of_the_wrong_length():
    with pytest.raises(ConfigError, match="method.famo.min_losses"):
        build(FAMO, min_losses=(0.0, 0.0))


# --------------------------------------------------------------------------- STCH

def test_stch_golden_and_gradient():
    # L = [1, e], nadir 1, μ = 1: f = [0, 1], p = [1, e]/(1+e), w = 2p/L = 2/(1+e) each
    w = stch_weights(t(1.0, math.e), t(1.0, 1.0), 1.0)
    torch.testing.assert_close(w, t(2 / (1 + math.e), 2 / (1 + math.e)))
    # equal normalised losses: p uniform, w = 2·(1/2)/L
    torch.testing.assert_close(stch_weights(t(2.0, 4.0), t(1.0, 2.0), 0.3), t(0.5, 0.25))
    losses, nadir = t(0.5, 2.0, 1.2), t(1.0, 1.5, 0.8)
    x = losses.clone().requires_grad_()
    (grad,) = torch.autograd.grad(stch_objective(x, nadir, 0.5), x)
    torch.testing.assert_close(stch_weights(losses, nadir, 0.5), grad)
    perm = torch.tensor([1, 2, 0])
    torch.testing.assert_close(stch_weights(losses[perm], nadir[perm], 0.5),
                               stch_weights(losses, nadir, 0.5)[perm])
    # small μ: the worst normalised task (c: 1.2/0.8) takes almost all the weight
    p = stch_weights(losses, nadir, 0.01) * losses / 3
    assert p[2].item() > 0.999


def test_stch_warmup_nadir_and_state_roundtrip():
    method = build(SmoothTchebycheff, names=("a", "b"), warmup_epochs=1)
    torch.testing.assert_close(method.weigh(FakeContext(t(2.0, 4.0), epoch=0)).weights, t(0.5, 0.25))
    method.weigh(FakeContext(t(2.0, 4.0), epoch=1))
    fresh = build(SmoothTchebycheff, names=("a", "b"), warmup_epochs=1)
    fresh.load_state_dict(roundtrip(method))  # in the middle of the nadir epoch
    for m in (method, fresh):
        m.weigh(FakeContext(t(4.0, 2.0), epoch=1))
    for m in (method, fresh):
        w = m.weigh(FakeContext(t(3.0, 3.0), epoch=2)).weights
        torch.testing.assert_close(m.nadir, t(3.0, 3.0))
        torch.testing.assert_close(w, stch_weights(t(3.0, 3.0), t(3.0, 3.0), 1.0))
    again = build(SmoothTchebycheff, names=("a", "b"), warmup_epochs=1)
    again.load_state_dict(roundtrip(method))
    assert again.has_nadir
    torch.testing.assert_close(again.weigh(FakeContext(t(1.0, 5.0), epoch=3)).weights,
                               method.weigh(FakeContext(t(1.0, 5.0), epoch=3)).weights)


# --------------------------------------------------------------------------- GradNorm

def test_gradnorm_loss_golden():
    w = t(1.0, 1.0).requires_grad_()
    # G = [1, 3], mean 2, equal rates: target [2, 2]; L_grad = 1 + 1
    loss = gradnorm_loss(w, t(1.0, 3.0), t(1.0, 1.0), t(1.0, 1.0), 1.5)
    assert loss.item() == pytest.approx(2.0)
    (grad,) = torch.autograd.grad(loss, w)
    torch.testing.assert_close(grad, t(-1.0, 3.0))  # sign(G − target)·‖g‖
    # L̃ = [2, 1], r = [4/3, 2/3]; α = 1: target [8/3, 4/3]; L_grad = 5/3 + 5/3
    loss = gradnorm_loss(t(1.0, 1.0), t(1.0, 3.0), t(2.0, 1.0), t(1.0, 1.0), 1.0)
    assert loss.item() == pytest.approx(10 / 3)
    torch.testing.assert_close(renormalise(t(1.0, 2.0, 5.0)), t(0.375, 0.75, 1.875))


@pytest.mark.parametrize("layer", ["last", "all"])
def test_gradnorm_trains_its_weights_and_resumes(layer):
    method = build(GradNorm, names=("a", "b"), layer=layer)
    grads = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    ctx = FakeContext(torch.tensor([1.0, 1.0], requires_grad=True), jacobian=grads,
                      last_grads=grads)
    out = method.weigh(ctx)
    assert ctx.jacobian_calls == (1 if layer == "all" else 0)
    torch.testing.assert_close(out.weights, torch.ones(2))
    out.objective.backward()
    torch.testing.assert_close(method.weights.grad, torch.tensor([-1.0, 3.0]))
    torch.testing.assert_close(ctx.losses.grad, torch.ones(2))  # weights held constant there
    with torch.no_grad():
        method.weights.sub_(0.1 * method.weights.grad)   # an optimizer step: [1.1, 0.7]
    fresh = build(GradNorm, names=("a", "b"), layer=layer)
    fresh.load_state_dict(roundtrip(method))
    torch.testing.assert_close(fresh.initial_losses, torch.ones(2))
    for m in (method, fresh):
        w = m.weigh(FakeContext(torch.tensor([0.5, 0.9]), jacobian=grads, last_grads=grads)).weights
        torch.testing.assert_close(w, torch.tensor([1.1, 0.7]) * 2 / 1.8)


# --------------------------------------------------------------------------- MetaBalance

def test_metabalance_golden():
    grads = t(3.0, 4.0, 1.0, 0.3, 0.4, 2.0).reshape(2, 3)
    sizes = [2, 1]
    norms = t(5.0, 1.0, 0.5, 2.0).reshape(2, 2)   # per layer: ‖(3,4)‖, ‖1‖; ‖(.3,.4)‖, ‖2‖
    # task b: layer 1 factor 0.5·(5/0.5) + 0.5 = 5.5; layer 2: 0.5·(1/2) + 0.5 = 0.75
    direction, scales = metabalance_direction(grads, sizes, norms, 0, 0.5)
    torch.testing.assert_close(scales, t(1.0, 1.0, 5.5, 0.75).reshape(2, 2))
    torch.testing.assert_close(direction, t(3 + 1.65, 4 + 2.2, 1 + 1.5))
    plain, _ = metabalance_direction(grads, sizes, norms, 0, 0.0)
    torch.testing.assert_close(plain, grads.sum(0))
    zero_task = torch.cat([grads[:1], torch.zeros(1, 3, dtype=D)])
    out, _ = metabalance_direction(zero_task, sizes, t(5.0, 1.0, 0.0, 0.0).reshape(2, 2), 0, 0.7)
    torch.testing.assert_close(out, grads[0])


def test_metabalance_matches_the_per_parameter_loop_over_several_steps():
    gen = torch.Generator().manual_seed(6)
    sizes, beta, relax = [2, 3], 0.9, 0.7
    method = build(MetaBalance, names=("a", "b", "c"), relax_factor=relax, beta=beta, main_task="b")
    ctx = FakeContext(torch.ones(3), sizes=sizes)
    avg = [[0.0] * 3 for _ in sizes]
    for _ in range(3):
        grads = torch.randn(3, 5, generator=gen, dtype=D) * t(0.1, 1.0, 20.0)[:, None]
        expected = torch.zeros(5, dtype=D)
        for layer, (lo, hi) in enumerate([(0, 2), (2, 5)]):
            for task in range(3):   # the official loop: update the average, then rescale
                g = grads[task, lo:hi]
                avg[layer][task] = beta * avg[layer][task] + (1 - beta) * g.norm().item()
            for task in range(3):
                g = grads[task, lo:hi]
                expected[lo:hi] += relax * avg[layer][1] / avg[layer][task] * g + (1 - relax) * g
        torch.testing.assert_close(method.aggregate(grads, ctx).direction, expected)


def test_metabalance_moving_average_main_task_and_roundtrip():
    grads = t(3.0, 4.0, 1.0, 0.3, 0.4, 2.0).reshape(2, 3).float()
    method = build(MetaBalance, names=("a", "b"), relax_factor=0.5)
    ctx = FakeContext(torch.ones(2), sizes=[2, 1])
    # the zero-initialised average is (1 − β)·‖g‖ for every task: the ratios are unbiased
    torch.testing.assert_close(method.aggregate(grads, ctx).direction,
                               torch.tensor([4.65, 6.2, 2.5]))
    assert set(ctx.logged) == {"scale/a", "scale/b"}
    flipped = build(MetaBalance, names=("a", "b"), relax_factor=0.5, main_task="b")
    assert flipped.main == 1
    fresh = build(MetaBalance, names=("a", "b"), relax_factor=0.5)
    fresh.load_state_dict(roundtrip(method))
    other = grads * torch.tensor([[1.0], [3.0]])
    torch.testing.assert_close(fresh.aggregate(other, ctx).direction,
                               method.aggregate(other, ctx).direction, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="method.metabalance.main_task"):
        build(MetaBalance, names=("a", "b"), main_task="nope")


# --------------------------------------------------------------------------- MTAdam

def test_mtadam_golden_first_steps():
    # layer norms 5 and 1: task b is rescaled by 5 to (3, 4); m̂ = g, √v̂ = |g| at step 1,
    # so d = (g_a + 5 g_b) / max(|g_a|, |5 g_b|) = (6, 8) / (3, 4) = (2, 2)
    grads = t(3.0, 4.0, 0.6, 0.8).reshape(2, 2)
    ranks = t(1.0, 1.0)
    d, state, scales = mtadam_step(grads, [2], None, ranks, 0.9, 0.999, 0.9, 1e-8)
    torch.testing.assert_close(scales, t(1.0, 5.0).reshape(2, 1))
    torch.testing.assert_close(d, t(2.0, 2.0), atol=1e-7, rtol=0)
    # constant gradients: the bias-corrected moments stay g and |g|, the norms n
    d2, state2, _ = mtadam_step(grads, [2], state, ranks, 0.9, 0.999, 0.9, 1e-8)
    assert state2.step == 2
    torch.testing.assert_close(d2, t(2.0, 2.0), atol=1e-7, rtol=0)
    # rank 2 for task b: g_b scaled to (6, 8); d = (9, 12) / (6, 8) = 1.5
    d3, _, _ = mtadam_step(grads, [2], None, t(1.0, 2.0), 0.9, 0.999, 0.9, 1e-8)
    torch.testing.assert_close(d3, t(1.5, 1.5), atol=1e-7, rtol=0)


def mtadam_reference(grad_steps, sizes, ranks, b1=0.9, b2=0.999, b3=0.9, eps=1e-8):
    """MTAdam written as the paper's per-layer, per-task loop, for comparison."""
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    num_tasks = grad_steps[0].shape[0]
    norms = [[0.0] * num_tasks for _ in sizes]
    m = [[0.0] * num_tasks for _ in sizes]
    v = [[0.0] * num_tasks for _ in sizes]
    out = []
    for k, grads in enumerate(grad_steps, start=1):
        d = torch.zeros(grads.shape[1], dtype=D)
        for layer, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            n = norms[layer]
            for task in range(num_tasks):
                size = grads[task, lo:hi].norm().item()
                n[task] = size if k == 1 else b3 * n[task] + (1 - b3) * size
            for task in range(num_tasks):
                g = grads[task, lo:hi]
                if n[task] > 1e-10:
                    anchor = next(i for i in range(num_tasks) if n[i] > 1e-10)
                    g = ranks[task] * n[anchor] * g / n[task]
                m[layer][task] = b1 * m[layer][task] + (1 - b1) * g
                v[layer][task] = b2 * v[layer][task] + (1 - b2) * g * g
            denom = torch.stack([torch.sqrt(v[layer][task]) / math.sqrt(1 - b2 ** k) + eps
                                 for task in range(num_tasks)]).max(dim=0).values
            d[lo:hi] = sum(m[layer][task] for task in range(num_tasks)) / (1 - b1 ** k) / denom
        out.append(d)
    return out


def test_mtadam_matches_the_per_layer_loop_over_several_steps():
    gen = torch.Generator().manual_seed(5)
    sizes, ranks = [3, 1, 4], [1.0, 0.5, 2.0]
    steps = [torch.randn(3, 8, generator=gen, dtype=D) * t(1.0, 10.0, 0.1)[:, None]
             for _ in range(4)]
    steps[1][0, :3] = 0.0   # task a without gradient on the first layer at step 2
    state, ranks_t = None, torch.tensor(ranks, dtype=D)
    for grads, expected in zip(steps, mtadam_reference(steps, sizes, ranks)):
        d, state, _ = mtadam_step(grads, sizes, state, ranks_t, 0.9, 0.999, 0.9, 1e-8)
        torch.testing.assert_close(d, expected)


def test_mtadam_anchor_skips_a_task_without_gradient():
    grads = t(0.0, 0.0, 1.0, 0.6, 0.8, 2.0).reshape(2, 3)   # task a: no gradient on layer 1
    _, _, scales = mtadam_step(grads, [2, 1], None, t(1.0, 1.0), 0.9, 0.999, 0.9, 1e-8)
    # layer 1: anchor is task b itself (factor 1, a left as is); layer 2: b scaled 1/2
    torch.testing.assert_close(scales, t(1.0, 1.0, 1.0, 0.5).reshape(2, 2))


def test_mtadam_state_roundtrip():
    gen = torch.Generator().manual_seed(1)
    method = build(MTAdam, names=("a", "b"))
    ctx = FakeContext(torch.ones(2), sizes=[3, 2])
    for _ in range(3):
        method.aggregate(torch.randn(2, 5, generator=gen), ctx)
    fresh = build(MTAdam, names=("a", "b"))
    fresh.load_state_dict(roundtrip(method))
    g = torch.randn(2, 5, generator=gen)
    torch.testing.assert_close(fresh.aggregate(g, ctx).direction, method.aggregate(g, ctx).direction,
                               rtol=0, atol=0)
    assert fresh.state.step == method.state.step == 4
    with pytest.raises(ConfigError, match="method.mtadam.ranks"):
        build(MTAdam, names=("a", "b"), ranks=(1.0, -1.0))


# --------------------------------------------------------------------------- IGBv2

def test_igbv2_formulas():
    # improvements [1, 0.5] over base [1, 1]; over base [2, 0.5]: [0.5, 1]
    assert igb_reward(t(2.0, 4.0), t(1.0, 3.5), t(1.0, 1.0)).item() == pytest.approx(0.5)
    assert igb_reward(t(2.0, 4.0), t(1.0, 3.5), t(2.0, 0.5)).item() == pytest.approx(0.5)
    torch.testing.assert_close(igb_weights(t(1.5, 0.5), t(3.0, 0.25)), t(0.5, 2.0))
    # u = μ = 0, σ = 1 in 2 dimensions: Gaussian part −log 2π, correction 2(log 2 − softplus 0) = 0
    logp = squashed_log_prob(torch.zeros(1, 2, dtype=D), torch.zeros(1, 2, dtype=D),
                             torch.ones(1, 2, dtype=D))
    torch.testing.assert_close(logp, torch.full((1, 1), -math.log(2 * math.pi), dtype=D))
    # r + γ(min(Q1', Q2') − α log π) = 1 + 0.99·(2 − 0.2·(−5))
    target = soft_q_target(t(1.0), t(2.0), t(3.0), t(-5.0), 0.2)
    torch.testing.assert_close(target, t(1.0 + 0.99 * 3.0))


SMALL_IGB = dict(buffer_size=8, base_epoch=0, start_epoch=1, update_after=1, update_every=2,
                 sac_batch_size=4)


def igb_steps(method, start: int, count: int, epoch: int, seed: int) -> list[torch.Tensor]:
    out = []
    for k in range(start, start + count):
        losses = torch.tensor([2.0 / (1 + k), 1.0 + 0.1 * k, 0.5])
        out.append(method.weigh(FakeContext(losses, epoch=epoch, step=k, seed=seed + k)).weights)
    return out


def test_igbv2_schedule_trains_the_agent_and_resumes_exactly():
    torch.manual_seed(0)
    method = build(IGBv2, **SMALL_IGB)
    assert method.trainable_parameters() == []
    igb_steps(method, 0, 3, epoch=0, seed=0)          # random weights, no transitions yet
    assert method.buf_fill == 0
    method.on_epoch_end(0, torch.tensor([1.0, 1.0, 0.5]))
    actor_before = [p.detach().clone() for p in method.actor.parameters()]
    weights = igb_steps(method, 3, 4, epoch=1, seed=0)  # steps 4 and 6 train the agent
    assert method.buf_fill == 4
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, method.actor.parameters()))
    for w, k in zip(weights, range(3, 7)):
        losses = torch.tensor([2.0 / (1 + k), 1.0 + 0.1 * k, 0.5])
        assert torch.isfinite(w).all()
        assert (w * losses).sum().item() == pytest.approx(3.0, rel=1e-5)  # actions sum to T
    fresh = build(IGBv2, **SMALL_IGB)
    fresh.load_state_dict(roundtrip(method))
    for a, b in zip(igb_steps(method, 7, 4, epoch=2, seed=100),
                    igb_steps(fresh, 7, 4, epoch=2, seed=100)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------------- properties

PERM = torch.tensor([2, 0, 1])


@pytest.mark.parametrize("name, fn", [
    ("gls", lambda L, x: gls_weights(L)),
    ("uw", lambda L, x: uw_weights(x)),
    ("dwa", lambda L, x: dwa_weights(L, x.exp(), 2.0)),
    ("famo", lambda L, x: famo_weights(L, x, torch.zeros_like(L))),
    ("stch", lambda L, x: stch_weights(L, x.exp(), 0.7)),
])
def test_weights_are_finite_and_permutation_equivariant(name, fn):
    gen = torch.Generator().manual_seed(3)
    losses = torch.rand(3, generator=gen, dtype=D) * 5 + 0.01
    extra = torch.randn(3, generator=gen, dtype=D)
    w = fn(losses, extra)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(fn(losses[PERM], extra[PERM]), w[PERM])


def test_mtadam_direction_ignores_the_scale_of_a_non_anchor_task():
    gen = torch.Generator().manual_seed(4)
    grads = torch.randn(3, 7, generator=gen, dtype=D)
    scaled = grads * t(1.0, 1000.0, 0.001)[:, None]
    d, _, _ = mtadam_step(grads, [4, 3], None, t(1.0, 1.0, 1.0), 0.9, 0.999, 0.9, 1e-8)
    d_scaled, _, _ = mtadam_step(scaled, [4, 3], None, t(1.0, 1.0, 1.0), 0.9, 0.999, 0.9, 1e-8)
    torch.testing.assert_close(d_scaled, d)


# --------------------------------------------------------------------------- configs

@pytest.mark.parametrize("method, key, value", [
    ("dwa", "temperature", -1.0), ("stch", "mu", 0.0), ("stch", "warmup_epochs", -1),
    ("famo", "lr", 0.0), ("famo", "weight_decay", -1e-3), ("gradnorm", "alpha", -0.5),
    ("gradnorm", "layer", "first"), ("metabalance", "relax_factor", 1.0),
    ("metabalance", "beta", -0.1), ("mtadam", "beta3", 1.0), ("mtadam", "eps", 0.0),
    ("igbv2", "update_every", 0), ("igbv2", "sac_lr", -3e-4), ("uw", "init_log_var", 100.0),
])
def test_bad_hyperparameters_are_refused_at_build_time(method, key, value):
    literal = f'"{value}"' if isinstance(value, str) else str(value)
    with pytest.raises(ConfigError, match=f"method.{method}.{key}"):
        build_requests("digits_tasks", [method], [0], "quick", [f"method.{method}.{key}={literal}"],
                       "cpu", None)


def test_every_method_has_a_config_with_paper_defaults():
    expected = {"dwa": {"temperature": 2.0}, "stch": {"mu": 1.0, "warmup_epochs": 4},
                "famo": {"lr": 0.025, "weight_decay": 1e-3}, "gradnorm": {"alpha": 1.5, "layer": "last"},
                "metabalance": {"relax_factor": 0.7, "beta": 0.9}, "uw": {"init_log_var": -0.5},
                "mtadam": {"beta1": 0.9, "beta2": 0.999, "beta3": 0.9, "eps": 1e-8},
                "igbv2": {"sac_lr": 3e-4, "buffer_size": 10000, "base_epoch": 1, "start_epoch": 5,
                          "update_after": 3, "update_every": 50, "sac_batch_size": 256}}
    for name, fields in expected.items():
        cfg = METHODS.get(name).Config()
        assert isinstance(cfg, MethodConfig)
        for key, value in fields.items():
            assert getattr(cfg, key) == value, (name, key)


# --------------------------------------------------------------------------- end to end

RUNS = [("gls", []), ("rlw", []), ("uw", []), ("dwa", []), ("famo", []), ("stch", []),
        ("gradnorm", []), ("gradnorm", ["method.gradnorm.layer=all"]), ("metabalance", []),
        ("mtadam", ["train.optimizer=sgd", "train.momentum=0.0", "train.lr=0.01"]), ("igbv2", [])]


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", RUNS, ids=[f"{m}{'-' + '-'.join(e) if e else ''}"
                                                     for m, e in RUNS])
def test_trains_end_to_end(method, extra, tmp_path):
    (outcome,) = tiny_run("digits_tasks", method, tmp_path, TINY_DIGITS + extra)
    assert outcome.status == "complete", outcome.reason
    train = [r for r in read_records(outcome.run_dir) if r["split"] == "train"][0]
    assert train["steps"] == 2
    if METHODS.get(method).kind == "weighting":
        weights = train["weights"]
        assert set(weights) == {"first", "second", "sum"}
        assert all(math.isfinite(v) for v in weights.values())
    else:
        assert set(train["method"]) == {"scale/first", "scale/second", "scale/sum"}
