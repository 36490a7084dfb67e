"""Rep-MTL (methods/repmtl.py, methods/_saliency.py) against its definition.

A naive implementation of Eqs. 3-10 (every C×C affinity materialised, loops over samples,
float64) must agree with the efficient one in value and in gradient; then properties of
TSR and CSA, the options, multi-input behaviour, divergence, and tiny end-to-end runs.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import methods  # noqa: F401  (registers the built-in methods)
from benchmarks.base import MultiInputTensorBenchmark, TaskSpec, TensorBenchmark, TensorSplit
from benchmarks.metrics import ACCURACY, AccuracyMeter, cross_entropy, mse, MAE, RegressionMeter
from benchmarks.registry import register_benchmark
from engine.errors import ConfigError, UserError, check_config
from engine.core.gradients.stats import EpochStats
from engine.runs.runner import build_requests
from methods import _saliency as sal
from methods.base import Aggregated, Aggregator
from methods.registry import METHODS, register_method
from methods.repmtl import CSAConfig, RepMTL, RepMTLConfig, RepMTLCSA, RepMTLTSR, TSRConfig
from tests.helpers import TINY_DIGITS, read_records, read_summary, tiny_run

TASKS = ("a", "b", "c")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tensors here are tiny: a second intra-op thread only adds waiting on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- a tiny model

class TinyModel(nn.Module):
    """Conv encoder -> Z [B, C, H', W'] (or [B, C] when ``vector``), one head per task."""

    def __init__(self, channels: int, size: int, vector: bool = False, tasks=TASKS):
        super().__init__()
        layers = [nn.Conv2d(1, channels, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(size)]
        if vector:
            layers += [nn.Flatten(), nn.Linear(channels * size * size, channels), nn.Tanh()]
        self.encoder = nn.Sequential(*layers)
        feat = channels if vector else channels * size * size
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.Flatten(), nn.Linear(feat, 5), nn.Tanh(),
                                                     nn.Linear(5, 3)) for t in tasks})

    def losses(self, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        z = self.encoder(x)
        # Heterogeneous losses, so that the task saliencies differ in scale and shape.
        out = [self.heads[t](z) for t in self.heads]
        losses = [nn.functional.cross_entropy(out[0], y),
                  (out[1] - 0.3).square().mean() + 0.1,
                  nn.functional.cross_entropy(2 * out[2], (y + 1) % 3)][:len(out)]
        return {t: z for t in self.heads}, torch.stack(losses)


class StepCtx:
    """The part of the step context (methods/base.py StepContext) that Rep-MTL uses, on a
    hand-made graph: the engine's own context is exercised by the end-to-end runs."""

    world_size = 1
    epoch = 0

    def __init__(self, reps: dict[str, Tensor], raw_losses: Tensor, losses: Tensor):
        self.task_names = tuple(reps)
        self._reps, self.raw_losses, self.losses = reps, raw_losses, losses
        self.stats = EpochStats()

    def rep_grads(self, create_graph: bool = False, raw: bool = False) -> list[Tensor]:
        losses = self.raw_losses if raw else self.losses
        return [torch.autograd.grad(losses[i], self._reps[t], retain_graph=True,
                                    create_graph=create_graph)[0]
                for i, t in enumerate(self.task_names)]

    def reps(self) -> list[Tensor]:
        return [self._reps[t] for t in self.task_names]

    def log(self, name: str, value: Tensor) -> None:
        self.stats.log(name, value)


def make_ctx(reps: dict[str, Tensor], losses: Tensor, method=None) -> StepCtx:
    transformed = method.transform_losses(losses) if method is not None else losses
    return StepCtx(reps, losses, transformed)


def setup(channels=3, size=3, vector=False, batch=5, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = TinyModel(channels, size, vector).to(dtype)
    x = torch.randn(batch, 1, 6, 6, dtype=dtype)
    y = torch.randint(0, 3, (batch,))
    return model, x, y


def saliencies_of(model, x, y, log_loss=False) -> list[Tensor]:
    reps, losses = model.losses(x, y)
    grads = [torch.autograd.grad(losses[i], reps[t], create_graph=True)[0]
             for i, t in enumerate(reps)]
    return [g / losses[i] for i, g in enumerate(grads)] if log_loss else grads


# --------------------------------------------------------------------------- the naive definition

def naive_tsr(S: list[Tensor], eps: float) -> Tensor:
    """Eqs. 4-6 sample by sample. ε in P is relative to the batch's mean |Ŝ| (detached),
    as documented."""
    T, B = len(S), S[0].shape[0]
    flat = [s.reshape(B, s.shape[1], -1) for s in S]
    N = flat[0].shape[2]
    s_hat = [[flat[t][b].mean(dim=0) for b in range(B)] for t in range(T)]    # Ŝ_t[b] : [N]
    scale = torch.stack([s_hat[t][b].abs() for t in range(T) for b in range(B)]).detach().mean()
    total = 0.0
    for b in range(B):
        mags = [s_hat[t][b].abs() for t in range(T)]
        denom = sum(mags) + eps * scale
        for t in range(T):
            p = mags[t] / denom
            total = total - (p * torch.log(p + eps)).sum()
    return total / (B * N)


def naive_csa(S: list[Tensor], tau: float, anchor: str, positives: str, denominator: str) -> Tensor:
    """Eqs. 7-9 with every C×C affinity map materialised, flattened and L2-normalised."""
    T, B = len(S), S[0].shape[0]
    flat = [s.reshape(B, s.shape[1], -1) for s in S]
    z_anchor, z_task = [], []
    for b in range(B):
        cols = torch.stack([flat[t][b].mean(dim=1) for t in range(T)], dim=1)     # C×T
        A = cols if anchor == "stacked" else cols.mean(dim=1, keepdim=True)
        a_hat = A @ A.T                                                            # C×C
        z_anchor.append(a_hat.flatten() / a_hat.flatten().norm())
        maps = [flat[t][b] @ flat[t][b].T for t in range(T)]                       # C×C
        z_task.append([m.flatten() / m.flatten().norm() for m in maps])
    total = 0.0
    for b in range(B):
        negs = sum(torch.exp(z_anchor[b] @ z_anchor[k] / tau) for k in range(B) if k != b)
        pos = [torch.exp(z_anchor[b] @ z_task[b][t] / tau) for t in range(T)]
        if positives == "joint":
            num = sum(pos)
            den = negs + (num if denominator == "with_positive" else 0)
            total = total - torch.log(num / den)
        else:
            terms = [-torch.log(p / (negs + (p if denominator == "with_positive" else 0)))
                     for p in pos]
            total = total + (sum(terms) / T if positives == "mean" else sum(terms))
    return total / B


def params_of(model) -> list[Tensor]:
    return list(model.encoder.parameters()) + list(model.heads.parameters())


OPTION_GRID = list(itertools.product(sal.ANCHORS, sal.POSITIVES, sal.DENOMINATORS))


SHAPES = {"C<N": (3, 3, False), "C>N": (6, 2, False), "vector": (4, 1, True)}
CASES = ([("C<N", *options) for options in OPTION_GRID]
         + [(shape, "stacked", "mean", "negatives") for shape in ("C>N", "vector")]
         + [("C>N", "mean", "joint", "with_positive"), ("vector", "mean", "sum", "negatives")])


@pytest.mark.parametrize("shape,anchor,positives,denominator", CASES)
def test_efficient_matches_naive_value_and_gradient(shape, anchor, positives, denominator):
    channels, size, vector = SHAPES[shape]
    model, x, y = setup(channels, size, vector)
    config = RepMTLConfig(tau=0.3, anchor=anchor, positives=positives, denominator=denominator,
                          lambda_tsr=0.7, lambda_csa=1.3)
    method = RepMTL(config, TASKS)
    reps, losses = model.losses(x, y)
    efficient = method.penalty(make_ctx(reps, losses, method))
    S = saliencies_of(model, x, y)
    naive = 0.7 * naive_tsr(S, config.eps) + 1.3 * naive_csa(S, 0.3, anchor, positives, denominator)
    assert efficient.dtype == torch.float64
    torch.testing.assert_close(efficient, naive, rtol=1e-9, atol=1e-12)
    params = params_of(model)
    g_eff = torch.autograd.grad(efficient, params)
    g_naive = torch.autograd.grad(naive, params)
    for ge, gn in zip(g_eff, g_naive):
        torch.testing.assert_close(ge, gn, rtol=1e-7, atol=1e-12)


def test_log_loss_saliency_matches_naive():
    model, x, y = setup()
    config = RepMTLConfig(saliency="log_loss", log_losses=True)
    method = RepMTL(config, TASKS)
    reps, losses = model.losses(x, y)
    ctx = make_ctx(reps, losses, method)
    torch.testing.assert_close(ctx.losses, losses.log())
    efficient = method.penalty(ctx)
    S = saliencies_of(model, x, y, log_loss=True)
    naive = 0.9 * naive_tsr(S, config.eps) + 0.9 * naive_csa(S, 0.1, "stacked", "mean", "negatives")
    torch.testing.assert_close(efficient, naive, rtol=1e-9, atol=1e-12)
    g_eff = torch.autograd.grad(efficient, params_of(model))
    g_naive = torch.autograd.grad(naive, params_of(model))
    for ge, gn in zip(g_eff, g_naive):
        torch.testing.assert_close(ge, gn, rtol=1e-7, atol=1e-12)


def test_ablations_penalise_one_term_and_log_both():
    model, x, y = setup()
    S = saliencies_of(model, x, y)
    tsr, csa = naive_tsr(S, 1e-8), naive_csa(S, 0.1, "stacked", "mean", "negatives")
    for cls, config, expected in ((RepMTLTSR, TSRConfig(lambda_tsr=1.1), 1.1 * tsr),
                                  (RepMTLCSA, CSAConfig(lambda_csa=1.5), 1.5 * csa)):
        method = cls(config, TASKS)
        reps, losses = model.losses(x, y)
        ctx = make_ctx(reps, losses, method)
        torch.testing.assert_close(method.penalty(ctx), expected, rtol=1e-9, atol=1e-12)
        logged = {k: v.item() for k, v in ctx.stats.logged.items()}
        assert logged[f"{cls.name}.L_tsr"] == pytest.approx(tsr.item(), rel=1e-6)
        assert logged[f"{cls.name}.L_csa"] == pytest.approx(csa.item(), rel=1e-6)
        assert logged[f"{cls.name}.task_entropy"] == pytest.approx(tsr.item() / math.log(3), rel=1e-6)


# --------------------------------------------------------------------------- TSR properties

def test_tsr_is_zero_when_each_position_serves_one_task():
    T, B, C, N = 3, 4, 5, 6
    S = torch.zeros(T, B, C, N, dtype=torch.float64)
    owner = torch.randint(0, T, (B, N))
    values = torch.randn(B, C, N, dtype=torch.float64) + 3.0   # channel means far from 0
    for t in range(T):
        S[t] = torch.where((owner == t)[:, None, :], values, torch.zeros(()))
    assert sal.tsr_loss(S, 1e-8).item() == pytest.approx(0.0, abs=1e-6)


def test_tsr_is_log_t_when_all_tasks_are_equally_salient():
    T, B, C, N = 4, 3, 5, 7
    base = torch.randn(B, C, N, dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)[:, None, None, None]
    S = signs * base                                            # signed, equal |channel mean|
    assert sal.tsr_loss(S, 1e-8).item() == pytest.approx(math.log(T), rel=1e-6)


def test_tsr_entropy_of_a_known_split():
    # Two tasks with |Ŝ| in ratio 1:3 at every position: H = -(1/4 ln 1/4 + 3/4 ln 3/4).
    S = torch.stack([torch.full((2, 3, 4), 1.0), torch.full((2, 3, 4), -3.0)]).double()
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert sal.tsr_loss(S, 1e-12).item() == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- CSA properties

def csa(S: Tensor, **kw) -> float:
    return sal.csa_loss(S, 0.2, **kw).item()


@pytest.mark.parametrize("anchor", sal.ANCHORS)
def test_csa_is_invariant_to_rescaling_saliencies(anchor):
    torch.manual_seed(1)
    S = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    ref = csa(S, anchor=anchor)
    assert csa(S * 1e-6, anchor=anchor) == pytest.approx(ref, rel=1e-9)
    per_sample = torch.tensor([1.0, 1e3, 1e-3, 2.0, 7.0], dtype=torch.float64)
    assert csa(S * per_sample[None, :, None, None], anchor=anchor) == pytest.approx(ref, rel=1e-9)


def test_csa_affinities_are_invariant_to_rescaling_one_task():
    # z_b^t, the normalised affinity of a task, ignores that task's scale and sign; the
    # stacked anchor adds the tasks' Gram matrices, so the anchor weighs each task by its
    # saliency magnitude (the log_loss saliency changes those weights).
    torch.manual_seed(2)
    S = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    scaled = S.clone()
    scaled[1] *= -4.0
    fixed_anchor = sal.anchors(S, "stacked")
    for t in range(3):
        for source in (S, scaled):
            m = source[t] @ source[t].transpose(1, 2)
            a_hat = fixed_anchor @ fixed_anchor.transpose(1, 2)
            cos = (m * a_hat).sum((1, 2)) / (m.flatten(1).norm(dim=1) * a_hat.flatten(1).norm(dim=1))
            if source is S:
                ref = cos
        torch.testing.assert_close(cos, ref)
    assert csa(scaled) != pytest.approx(csa(S), rel=1e-6)
    flipped = S.clone()
    flipped[1] *= -1.0
    assert csa(flipped) == pytest.approx(csa(S), rel=1e-9)


def test_csa_of_identical_saliencies_is_log_of_the_negatives():
    # Vector features, one saliency shared by every task and sample: M_t = s sᵀ and
    # Â = T s sᵀ, so every similarity is 1 and, with the negatives only in the
    # denominator, L_csa = -1/τ + log((B-1) e^{1/τ}) = log(B-1); log(B) with the positive;
    # joint puts the T positives in one numerator: -log(T e^{1/τ} / ((B-1) e^{1/τ})).
    S = torch.randn(1, 1, 4, 1, dtype=torch.float64).expand(3, 5, 4, 1)
    assert csa(S) == pytest.approx(math.log(4), rel=1e-9)
    assert csa(S, positives="joint") == pytest.approx(math.log(4 / 3), rel=1e-9)  # T = 3 in one
    assert csa(S, positives="sum") == pytest.approx(3 * math.log(4), rel=1e-9)
    assert csa(S, denominator="with_positive") == pytest.approx(math.log(5), rel=1e-9)
    # joint with the positives in the denominator: -log(3 e^{1/τ} / (3 e^{1/τ} + 4 e^{1/τ})).
    assert csa(S, positives="joint", denominator="with_positive") == pytest.approx(
        math.log(7 / 3), rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vanished_saliencies_are_finite(dtype):
    # A batch where every saliency is 0 (e.g. dead units): no task is salient anywhere, so
    # TSR is 0, and every CSA similarity is 0, so L_csa = log(B-1); gradients are finite.
    S = torch.zeros(3, 5, 4, 6, dtype=dtype, requires_grad=True)
    tsr, csa_value = sal.tsr_loss(S, 1e-8), sal.csa_loss(S, 0.1)
    assert tsr.item() == 0.0
    assert csa_value.item() == pytest.approx(math.log(4), rel=1e-6)
    (grad,) = torch.autograd.grad(tsr + csa_value, S)
    assert torch.isfinite(grad).all()


def test_csa_needs_two_samples():
    with pytest.raises(ConfigError, match="train.batch_size"):
        sal.csa_loss(torch.randn(3, 1, 4, 6), 0.1)


# --------------------------------------------------------------------------- second order

@pytest.mark.parametrize("cls", [RepMTLTSR, RepMTLCSA])
def test_each_regularizer_reaches_encoder_and_every_head(cls):
    model, x, y = setup()
    method = cls(cls.Config(), TASKS)
    reps, losses = model.losses(x, y)
    penalty = method.penalty(make_ctx(reps, losses, method))
    enc = torch.autograd.grad(penalty, list(model.encoder.parameters()), retain_graph=True)
    assert any(g.abs().max() > 0 for g in enc)
    for t in TASKS:
        # The penalty depends on a head's parameters only through S_t = dL_t/dZ: a
        # non-zero gradient there is the second-order term.
        head = torch.autograd.grad(penalty, list(model.heads[t].parameters()), retain_graph=True)
        assert any(g.abs().max() > 0 for g in head), t


def test_penalty_changes_the_update_of_encoder_and_heads():
    model, x, y = setup()
    method = RepMTL(RepMTLConfig(), TASKS)
    reps, losses = model.losses(x, y)
    penalty = method.penalty(make_ctx(reps, losses, method))
    params = params_of(model)
    with_penalty = torch.autograd.grad(losses.sum() + penalty, params, retain_graph=True)
    plain = torch.autograd.grad(losses.sum(), params)
    n_enc = len(list(model.encoder.parameters()))
    diff = [(a - b).abs().max().item() for a, b in zip(with_penalty, plain)]
    assert max(diff[:n_enc]) > 1e-8 and max(diff[n_enc:]) > 1e-8


# --------------------------------------------------------------------------- options

def test_every_option_value_runs():
    model, x, y = setup(dtype=torch.float32)
    csa_options = [dict(anchor=a, positives=p, denominator=d) for a, p, d in OPTION_GRID]
    log_options = [dict(saliency=s, log_losses=lg)
                   for s, lg in itertools.product(("loss", "log_loss"), (False, True))]
    for options in csa_options + log_options:
        method = RepMTL(RepMTLConfig(**options), TASKS)
        reps, losses = model.losses(x, y)
        value = method.penalty(make_ctx(reps, losses, method))
        assert torch.isfinite(value) and value.requires_grad, options


@pytest.mark.parametrize("field,value,message", [
    ("lambda_tsr", -0.1, r"method\.repmtl\.lambda_tsr=-0\.1 is out of range.*\[0, inf\)"),
    ("lambda_csa", -1.0, r"method\.repmtl\.lambda_csa=-1\.0 is out of range"),
    ("tau", 0.0, r"method\.repmtl\.tau=0\.0 is out of range.*\(0, inf\)"),
    ("tau", -0.5, r"method\.repmtl\.tau"),
    ("eps", 0.0, r"method\.repmtl\.eps=0\.0 is out of range.*\(0, 1\]"),
    ("anchor", "sum", r"method\.repmtl\.anchor='sum' is not valid.*stacked, mean"),
    ("positives", "max", r"method\.repmtl\.positives='max'.*mean, sum, joint"),
    ("denominator", "all", r"method\.repmtl\.denominator='all'.*negatives, with_positive"),
    ("saliency", "abs", r"method\.repmtl\.saliency='abs'.*loss, log_loss"),
])
def test_bad_values_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        check_config(RepMTLConfig(**{field: value}), "method.repmtl")


def test_bad_values_are_refused_from_the_command_line_config():
    with pytest.raises(ConfigError, match=r"method\.repmtl_csa\.tau=0\.0"):
        build_requests("digits_tasks", ["repmtl_csa"], [0], "quick",
                       ["method.repmtl_csa.tau=0.0"], "cpu", None)
    with pytest.raises(ConfigError, match="unknown key 'method.repmtl_tsr.tau'"):
        build_requests("digits_tasks", ["repmtl_tsr"], [0], "quick",
                       ["method.repmtl_tsr.tau=0.5"], "cpu", None)


def test_a_single_task_is_refused():
    with pytest.raises(ConfigError, match="at least 2 tasks"):
        RepMTL(RepMTLConfig(), ("only",))


def test_compositions_parse():
    from methods.registry import parse_method
    assert parse_method("repmtl").components == ("ew", "repmtl")
    assert parse_method("test_repmtl_meanagg+repmtl_csa").components == ("test_repmtl_meanagg",
                                                                          "repmtl_csa")
    assert parse_method("repmtl_tsr").needs.second_order


# --------------------------------------------------------------------------- multi-input

@dataclass
class TinyDomainsConfig:
    seed: int = 0

    def validate(self) -> None:
        pass


@register_benchmark("test_repmtl_domains")
class TinyDomains(MultiInputTensorBenchmark):
    """Three domains of 6×6 images, each with its own images and 3-class labels."""

    description = "test-only multi-input benchmark for Rep-MTL"
    setting = "domain shift"
    Config = TinyDomainsConfig

    def __init__(self, config, data_root, device):
        super().__init__(config, data_root, device)
        self.tasks = tuple(TaskSpec(t, cross_entropy, (ACCURACY,), AccuracyMeter) for t in TASKS)
        g = torch.Generator().manual_seed(config.seed)
        self.domain_splits = {}
        for i, t in enumerate(TASKS):
            splits = {}
            for split, n in (("train", 48), ("val", 16), ("test", 16)):
                x = torch.randn(n, 1, 6, 6, generator=g) + i
                y = (x.mean(dim=(1, 2, 3)) > i).long() + (x[:, 0, 0, 0] > i).long()
                splits[split] = TensorSplit(x, {t: y}).to(device)
            self.domain_splits[t] = splits

    def make_encoder(self) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3))

    def make_head(self, task: TaskSpec) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))


def multi_input_penalty(model, xs: dict[str, Tensor], y: Tensor, method) -> Tensor:
    reps = {t: model.encoder(xs[t]) for t in TASKS}
    losses = torch.stack([nn.functional.cross_entropy(model.heads[t](reps[t]), (y + i) % 3)
                          for i, t in enumerate(TASKS)])
    return method.penalty(make_ctx(reps, losses, method))


def test_multi_input_pairs_samples_and_is_not_constant():
    model, _, y = setup()
    g = torch.Generator().manual_seed(3)
    xs = {t: torch.randn(5, 1, 6, 6, generator=g, dtype=torch.float64) for t in TASKS}
    for cls in (RepMTLTSR, RepMTLCSA):
        method = cls(cls.Config(), TASKS)
        value = multi_input_penalty(model, xs, y, method)
        # It is the single-input formula applied to the paired saliencies ...
        reps = {t: model.encoder(xs[t]) for t in TASKS}
        S = [torch.autograd.grad(nn.functional.cross_entropy(model.heads[t](reps[t]), (y + i) % 3),
                                 reps[t], create_graph=True)[0] for i, t in enumerate(TASKS)]
        naive = 0.9 * (naive_tsr(S, 1e-8) if cls is RepMTLTSR
                       else naive_csa(S, 0.1, "stacked", "mean", "negatives"))
        torch.testing.assert_close(value, naive, rtol=1e-9, atol=1e-12)
        # ... it moves when one task's images change ...
        other = dict(xs, b=torch.randn(5, 1, 6, 6, generator=g, dtype=torch.float64))
        assert abs(multi_input_penalty(model, other, y, method).item() - value.item()) > 1e-6
        # ... and it trains the encoder and every head.
        grads = torch.autograd.grad(value, params_of(model))
        assert all(gr.abs().max() > 0 for gr in grads[:2])
        assert all(any(gr.abs().max() > 0 for gr in torch.autograd.grad(
            multi_input_penalty(model, xs, y, method), list(model.heads[t].parameters())))
            for t in TASKS)


def test_multi_input_batches_of_different_sizes_are_refused():
    model, _, y = setup()
    xs = {t: torch.randn(5 if t != "c" else 4, 1, 6, 6, dtype=torch.float64) for t in TASKS}
    reps = {t: model.encoder(xs[t]) for t in TASKS}
    losses = torch.stack([model.heads[t](reps[t]).square().mean() for t in TASKS])
    method = RepMTL(RepMTLConfig(), TASKS)
    with pytest.raises(UserError, match="different shapes"):
        method.penalty(make_ctx(reps, losses, method))


def logged(run_dir: Path, name: str) -> dict:
    (train,) = [r for r in read_records(run_dir) if r["split"] == "train"]
    return {k.split(".", 1)[1]: v for k, v in train["method"].items() if k.startswith(name + ".")}


def test_multi_input_trains_end_to_end(tmp_path):
    (outcome,) = tiny_run("test_repmtl_domains", "repmtl", tmp_path,
                          ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=8"])
    assert outcome.status == "complete", outcome.reason
    values = logged(outcome.run_dir, "repmtl")
    assert set(values) == {"L_tsr", "L_csa", "task_entropy"}
    assert 0 < values["L_tsr"] < math.log(3) and math.isfinite(values["L_csa"])


# --------------------------------------------------------------------------- divergence

class NaNGradient(torch.autograd.Function):
    """Identity whose gradient is NaN: a finite loss with a NaN saliency."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


class NaNHead(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, z: Tensor) -> Tensor:
        return self.inner(NaNGradient.apply(z))


@dataclass
class NaNConfig:
    seed: int = 0

    def validate(self) -> None:
        pass


@register_benchmark("test_repmtl_nan")
class NaNSaliency(TensorBenchmark):
    description = "test-only benchmark whose second task has a NaN saliency"
    Config = NaNConfig

    def __init__(self, config, data_root, device):
        super().__init__(config, data_root, device)
        self.tasks = (TaskSpec("a", cross_entropy, (ACCURACY,), AccuracyMeter),
                      TaskSpec("b", mse, (MAE,), RegressionMeter))
        g = torch.Generator().manual_seed(0)
        self.splits = {}
        for split in ("train", "val", "test"):
            x = torch.randn(32, 1, 6, 6, generator=g)
            targets = {"a": (x.mean(dim=(1, 2, 3)) > 0).long(), "b": x.mean(dim=(1, 2, 3))}
            self.splits[split] = TensorSplit(x, targets).to(device)

    def make_encoder(self) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3))

    def make_head(self, task: TaskSpec) -> nn.Module:
        out = 2 if task.name == "a" else 1
        head = nn.Sequential(nn.Flatten(), nn.Linear(36, out))
        return NaNHead(head) if task.name == "b" else head


def test_nan_saliency_makes_the_run_diverge(tmp_path):
    (outcome,) = tiny_run("test_repmtl_nan", "repmtl", tmp_path,
                          ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=8"])
    summary = read_summary(outcome.run_dir)
    assert summary["status"] == "diverged", summary
    assert summary["diverged_step"] == 0
    assert "penalty" in summary["diverged_what"]
    assert "a," not in summary["diverged_what"]   # the task losses themselves were finite


# --------------------------------------------------------------------------- end to end

@register_method("test_repmtl_meanagg")
class MeanAggregator(Aggregator):
    """Test-only aggregator: the mean of the task gradients."""

    description = "test-only: mean of the task gradients"
    needs = methods.Needs(jacobian=True)

    def aggregate(self, grads: Tensor, ctx) -> Aggregated:
        return Aggregated(grads.mean(dim=0))


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["repmtl", "repmtl_tsr", "repmtl_csa", "test_repmtl_meanagg+repmtl"])
def test_trains_on_digits_tasks(tmp_path, spec):
    (outcome,) = tiny_run("digits_tasks", spec, tmp_path, TINY_DIGITS)
    assert outcome.status == "complete", outcome.reason
    name = spec.split("+")[-1]
    values = logged(outcome.run_dir, name)
    assert set(values) == {"L_tsr", "L_csa", "task_entropy"}
    assert all(math.isfinite(v) for v in values.values())
    config = json.loads((outcome.run_dir / "config.json").read_text())
    assert name in config["methods"]


@pytest.mark.skipif("pcgrad" not in METHODS, reason="pcgrad is not registered in this tree")
def test_pcgrad_with_repmtl_trains_on_digits_tasks(tmp_path):
    (outcome,) = tiny_run("digits_tasks", "pcgrad+repmtl", tmp_path, TINY_DIGITS)
    assert outcome.status == "complete", outcome.reason
    assert math.isfinite(logged(outcome.run_dir, "repmtl")["L_tsr"])


def test_log_losses_option_trains(tmp_path):
    (outcome,) = tiny_run("digits_tasks", "repmtl", tmp_path,
                          TINY_DIGITS + ["method.repmtl.log_losses=true",
                                         "method.repmtl.saliency=log_loss"])
    assert outcome.status == "complete", outcome.reason


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (2, 3, 6, 4), (5, 1)])
def test_gram_norm_gradient_is_exact(shape):
    # The hand-written backward (one product with the saved Gram) against finite differences,
    # in the C < N and C > N orientations, with a scale folded in.
    X = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sal.gram_norm(x, 0.37), (X,))
    direct = (0.37 ** 2 * X @ X.transpose(-1, -2)).square().sum(dim=(-2, -1)).sqrt()
    torch.testing.assert_close(sal.gram_norm(X, 0.37), direct)


def test_anchor_cross_routes_agree_in_value_and_gradient():
    # Few tasks on wide features take the [B·K, B·K] product; many tasks on narrow features
    # the C×C affinities. Both must be ⟨A_b A_bᵀ, A_k A_kᵀ⟩_F.
    for B, C, K in ((4, 16, 3), (5, 2, 8)):
        A = torch.randn(B, C, K, dtype=torch.float64, requires_grad=True)
        direct = torch.stack([torch.stack([((A[b] @ A[b].T) * (A[k] @ A[k].T)).sum()
                                           for k in range(B)]) for b in range(B)])
        fast = sal.anchor_cross(A)
        torch.testing.assert_close(fast, direct)
        weights = torch.randn(B, B, dtype=torch.float64)
        (g_fast,) = torch.autograd.grad((fast * weights).sum(), A)
        (g_direct,) = torch.autograd.grad((direct * weights).sum(), A)
        torch.testing.assert_close(g_fast, g_direct)
    assert 2 * (8 + 5) < 5 * 8 * 8 and not 16 * (3 + 4) < 4 * 3 * 3  # each route taken once


@pytest.mark.parametrize("tasks_per_chunk", [1, 2])
def test_chunked_terms_match_naive(monkeypatch, tasks_per_chunk):
    # Large saliencies are processed a task (or a few) at a time; the result must not move.
    model, x, y = setup(3, 3, False)
    config = RepMTLConfig(tau=0.3, lambda_tsr=0.7, lambda_csa=1.3)
    method = RepMTL(config, TASKS)
    reps, losses = model.losses(x, y)
    S = saliencies_of(model, x, y)
    per_task = S[0].numel()
    monkeypatch.setattr(sal, "CHUNK_ELEMENTS", tasks_per_chunk * per_task)
    flat = sal.flatten_saliencies(S)
    assert len(sal._chunks(flat)) == math.ceil(len(TASKS) / tasks_per_chunk)
    efficient = method.penalty(make_ctx(reps, losses, method))
    naive = 0.7 * naive_tsr(S, config.eps) + 1.3 * naive_csa(S, 0.3, "stacked", "mean", "negatives")
    torch.testing.assert_close(efficient, naive, rtol=1e-9, atol=1e-12)
    for ge, gn in zip(torch.autograd.grad(efficient, params_of(model)),
                      torch.autograd.grad(naive, params_of(model))):
        torch.testing.assert_close(ge, gn, rtol=1e-7, atol=1e-12)


def test_warmup_epochs_train_like_the_primary_method_and_still_record_the_terms(tmp_path):
    warm = ["train.epochs=2", "method.repmtl.warmup_epochs=1", *TINY_DIGITS[1:]]
    (ew,) = tiny_run("digits_tasks", "ew", tmp_path / "ew", ["train.epochs=2", *TINY_DIGITS[1:]])
    (rep,) = tiny_run("digits_tasks", "repmtl", tmp_path / "rep", warm)
    ew_records, rep_records = read_records(ew.run_dir), read_records(rep.run_dir)
    first = lambda records, split: next(r for r in records if r["epoch"] == 0 and r["split"] == split)  # noqa: E731
    for task, metrics in first(ew_records, "val")["metrics"].items():
        for name, value in metrics.items():
            assert first(rep_records, "val")["metrics"][task][name] == pytest.approx(value, rel=1e-4)
    train0 = first(rep_records, "train")
    assert "repmtl.L_tsr" in train0["method"] and "repmtl.L_csa" in train0["method"]
    second = lambda records: next(r for r in records if r["epoch"] == 1 and r["split"] == "val")  # noqa: E731
    assert second(rep_records)["losses"] != second(ew_records)["losses"]  # the penalty started
