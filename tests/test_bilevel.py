"""The bilevel methods (Auto-λ, MOML, FORUM) and the engine's lookahead
(engine/core/gradients/lookahead.py): the model is never modified by a lookahead, and each
method's steps equal a naive evaluation of its reference procedure (the Auto-λ authors'
``auto_lambda.py``, LibMTL's MOML and FORUM: a deep copy of the model, in-place
perturbations, per-task gradients), run here beside the engine on the same batches."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.core.gradients.stats import EpochStats
from engine.core.trainer import Trainer
from engine.errors import UserError
from engine.runs.runner import build_requests, make_benchmark
from methods._min_norm import min_norm_element
from methods.forum import forum_weights
from tests.helpers import TINY_DIGITS

CPU = torch.device("cpu")
STEPS = 3
PLAIN_SGD = ("train.optimizer=sgd", "train.lr=0.05", "train.momentum=0")
"""The model's optimizer where the comparison is of the update itself (Adam would magnify
the rounding of gradients near zero)."""


def _trainer(method: str, overrides: tuple[str, ...] = ()) -> tuple[Trainer, object]:
    (request,) = build_requests("digits_tasks", [method], [0], "quick",
                                [*TINY_DIGITS, *overrides], "cpu", None)
    bench = make_benchmark(request.config, CPU)
    trainer = Trainer(request.config, bench, request.composition, CPU, None, progress=False)
    trainer.model.train()
    return trainer, bench


def _losses(bench, model, batch) -> list[torch.Tensor]:
    _, preds = model(batch)
    return [t.loss(preds[t.name], batch.targets[t.name]).float() for t in bench.tasks]


def _params(model) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _flat(tensors, like) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(tensors, like)])


def _steps(trainer, bench):
    """Train STEPS steps; yields (batch, extra batches) of each step before taking it."""
    drawn = []
    draw = trainer._draw_extra
    trainer._draw_extra = lambda: drawn.append(draw()) or drawn[-1]
    stats = EpochStats()
    batches = bench.batches("train", 16, torch.Generator().manual_seed(3))
    for step in range(STEPS):
        batch = next(batches)
        trainer.step = step
        trainer.train_step(batch, 0, stats)
        yield batch, drawn[-1]


def _same(model, reference, rtol=1e-4, atol=1e-6):
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def _lookahead_context(trainer, batch):
    """The two lookahead services of a step context, on ``batch`` (the step's own)."""
    from types import SimpleNamespace

    lookahead = trainer.lookahead
    return SimpleNamespace(model_parameters=lambda: list(lookahead.parameters),
                           losses_at=lambda values: lookahead.losses_at(values, batch))


# --------------------------------------------------------------------------- the lookahead

def test_lookahead_leaves_the_model_as_it_was_and_differentiates_the_values():
    trainer, bench = _trainer("autol")
    lookahead = trainer.lookahead
    batch = next(bench.batches("train", 16, torch.Generator().manual_seed(0)))
    names = {n: p for n, p in trainer.model.named_parameters(remove_duplicate=False)}
    before = [p.detach().clone() for p in lookahead.parameters]
    values = [(p.detach() + 0.01).requires_grad_() for p in lookahead.parameters]
    losses = lookahead.losses_at(values, batch)
    grads = torch.autograd.grad(losses.sum(), values, allow_unused=True)
    assert all(g is not None for g in grads[:2])
    after = {n: p for n, p in trainer.model.named_parameters(remove_duplicate=False)}
    assert all(after[n] is names[n] for n in names)  # the model's last_shared path included
    for p, b in zip(lookahead.parameters, before):
        assert torch.equal(p, b)
    with torch.no_grad():
        own = torch.stack(_losses(bench, trainer.model, batch))
        moved = lookahead.losses_at([p + 0.01 for p in lookahead.parameters], batch)
    torch.testing.assert_close(lookahead.losses_at(None, batch).detach(), own)
    torch.testing.assert_close(moved, losses.detach())


def test_lookahead_keeps_batch_norm_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    from engine.core.gradients.lookahead import Lookahead

    lookahead = Lookahead(model, opt, lambda m, x: [m(x).square().mean()])
    stats = [b.clone() for b in model.buffers()]
    lookahead.losses_at([p.detach() * 2 for p in model.parameters()], torch.randn(8, 3))
    assert all(torch.equal(b, s) for b, s in zip(model.buffers(), stats))


def test_virtual_step_is_the_sgd_step_with_momentum_and_weight_decay():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    x = torch.randn(5, 3)
    model(x).square().mean().backward()
    opt.step()  # creates the momentum buffers
    from engine.core.gradients.lookahead import Lookahead

    lookahead = Lookahead(model, opt, lambda m, b: [m(b).sum()])
    grads = [torch.randn_like(p) for p in model.parameters()]
    got = lookahead.virtual_step(grads)
    for p, g, v in zip(model.parameters(), grads, got):
        m = opt.state[p]["momentum_buffer"] * 0.9
        torch.testing.assert_close(v, p.detach() - 0.1 * (m + g + 0.01 * p.detach()))
    adam = torch.optim.Adam(model.parameters(), lr=0.5)
    plain = Lookahead(model, adam, lambda m, b: [m(b).sum()]).virtual_step(grads)
    for p, g, v in zip(model.parameters(), grads, plain):
        torch.testing.assert_close(v, p.detach() - 0.5 * g)


@pytest.mark.parametrize("setting", ["engine.amp=fp16", "engine.compile=true"])
def test_lookahead_methods_refuse_what_the_lookahead_does_not_cover(setting):
    with pytest.raises(UserError, match="lookahead"):
        _trainer("autol", (setting,))


# --------------------------------------------------------------------------- Auto-λ

@pytest.mark.parametrize("primary", [None, 1])
def test_autol_equals_the_authors_unrolled_step(primary):
    """Every task primary (the multi-task setting), or one (the auxiliary-learning setting:
    only that task's loss after the virtual step is minimised)."""
    names = _trainer("ew")[1].tasks
    chosen = () if primary is None else (f"method.autol.primary={names[primary].name}",)
    trainer, bench = _trainer("autol", ("train.optimizer=sgd", "train.lr=0.05",
                                        "train.momentum=0.9", "train.weight_decay=1e-3",
                                        "method.autol.lr=0.01", *chosen))
    mask = [primary is None or t == primary for t in range(3)]
    reference = copy.deepcopy(trainer.model)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    meta = torch.full((3,), 0.1, requires_grad=True)
    meta_opt = torch.optim.Adam([meta], lr=0.01)
    alpha = 0.05
    for batch, (held_out,) in _steps(trainer, bench):
        # the authors' virtual step on a copy of the model
        copy_ = copy.deepcopy(reference)
        loss = sum(w * l for w, l in zip(meta, _losses(bench, reference, batch)))
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        with torch.no_grad():
            for w, w_, g in zip(reference.parameters(), copy_.parameters(), grads):
                m = opt.state[w].get("momentum_buffer", 0.0) * 0.9 if opt.state[w] else 0.0
                w_.copy_(w - alpha * (m + g + 1e-3 * w))
        held = sum(l for l, keep in zip(_losses(bench, copy_, held_out), mask) if keep)
        d = torch.autograd.grad(held, list(copy_.parameters()), allow_unused=True)
        d = [x if x is not None else torch.zeros_like(p) for x, p in zip(d, copy_.parameters())]
        eps = 0.01 / torch.cat([x.reshape(-1) for x in d]).norm()
        finite = []
        for sign in (1, -2):
            with torch.no_grad():
                for p, x in zip(reference.parameters(), d):
                    p += sign * eps * x
            loss = sum(w * l for w, l in zip(meta, _losses(bench, reference, batch)))
            finite.append(torch.autograd.grad(loss, meta)[0])
        with torch.no_grad():
            for p, x in zip(reference.parameters(), d):
                p += eps * x
        meta_opt.zero_grad()
        meta.grad = -alpha * (finite[0] - finite[1]) / (2 * eps)
        meta_opt.step()
        opt.zero_grad()
        sum(w * l for w, l in zip(meta, _losses(bench, reference, batch))).backward()
        opt.step()
        torch.testing.assert_close(trainer.primary.meta_weights.detach(), meta.detach(),
                                   rtol=1e-4, atol=1e-7)
        _same(trainer.model, reference)
    assert not torch.allclose(meta.detach(), torch.full((3,), 0.1))  # λ moved


def test_forum_stops_the_inner_steps_once_the_loss_exceeds_its_guard():
    """LibMTL stops the lower-level SGD once f > 1e5: with a step size that blows f up after
    one step, θ_K is θ_1 whatever K is (without the guard the three further steps would
    move it on)."""
    from methods.forum import DIVERGED_INNER_LOSS

    trainer, bench = _trainer("forum", ("method.forum.inner_lr=1e6", "method.forum.inner_steps=4"))
    method = trainer.primary
    batch = next(bench.batches("train", 16, torch.Generator().manual_seed(3)))
    ctx = _lookahead_context(trainer, batch)
    a = method.task_weights.weights().detach()
    values = [p.detach().requires_grad_() for p in ctx.model_parameters()]
    f0 = (a * ctx.losses_at(values)).sum()
    grads = torch.autograd.grad(f0, values)
    one = [(v - 1e6 * g).detach() for v, g in zip(values, grads)]
    with torch.no_grad():
        after_one = ctx.losses_at(one)
    assert float((a * after_one).sum()) > DIVERGED_INNER_LOSS  # the guard is what stops it
    got = method.inner_losses(ctx, ctx.model_parameters(), a)
    torch.testing.assert_close(got, after_one, rtol=1e-5, atol=0.0)


def test_autol_refuses_an_unknown_primary_task():
    with pytest.raises(UserError, match="method.autol.primary"):
        _trainer("autol", ("method.autol.primary=[nope]",))


# --------------------------------------------------------------------------- MOML

def test_moml_equals_libmtls_one_step_procedure():
    trainer, bench = _trainer("moml", ("method.moml.outer_lr=0.05", *PLAIN_SGD))
    reference = copy.deepcopy(trainer.model)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    logits = torch.full((3,), 1 / 3, requires_grad=True)
    logit_opt = torch.optim.Adam([logits], lr=0.05)
    eta = 0.1
    for batch, (inner_batch, outer_batch) in _steps(trainer, bench):
        meta = copy.deepcopy(reference)
        params = list(meta.parameters())
        g_f = torch.stack([_flat(torch.autograd.grad(l, params, retain_graph=True,
                                                     allow_unused=True), params)
                           for l in _losses(bench, meta, inner_batch)])
        alpha = logits.detach().clone()
        begin = 0
        for p in params:
            p.data -= eta * (F.softmax(alpha, -1) @ g_f[:, begin:begin + p.numel()]).view(p.size())
            begin += p.numel()
        g_s = torch.autograd.functional.jacobian(lambda x: F.softmax(x, dim=-1), alpha)
        rows = torch.zeros(3, 3)
        for t, loss in enumerate(_losses(bench, meta, outer_batch)):
            g_F = _flat(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True),
                        params)
            rows[t] = -eta * g_F @ g_f.t() @ g_s
        rows = rows / rows.norm(dim=1, keepdim=True)
        sol = min_norm_element(rows.double() @ rows.double().T).weights.float()
        logit_opt.zero_grad()
        logits.grad = sol @ rows
        logit_opt.step()
        opt.zero_grad()
        weights = F.softmax(logits.detach(), -1)
        sum(w * l for w, l in zip(weights, _losses(bench, reference, batch))).backward()
        opt.step()
        torch.testing.assert_close(trainer.primary.task_weights.logits.detach(), logits.detach(),
                                   rtol=1e-4, atol=1e-6)
        _same(trainer.model, reference)
    assert not torch.allclose(logits.detach(), torch.full((3,), 1 / 3))


# --------------------------------------------------------------------------- FORUM

def _forum_qp_by_quadprog(gramian, pi, reward):
    quadprog = pytest.importorskip("quadprog")
    T = len(pi)
    G = 2 * gramian + 1e-9 * np.eye(T + 1)  # quadprog needs it positive definite
    a = np.zeros(T + 1)
    a[-1] = reward
    C = np.column_stack([np.r_[np.ones(T), 0.0], np.r_[-pi, 1.0], np.eye(T + 1)])
    b = np.r_[1.0, 0.0, np.zeros(T + 1)]
    return quadprog.solve_qp(G, a, C, b, meq=1)[0]


@pytest.mark.parametrize("seed", range(6))
def test_forum_weights_solve_the_quadratic_programme(seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(2, 6))
    A = rng.normal(size=(T + 1, 7))
    gramian = A @ A.T
    pi = rng.normal(scale=0.5, size=T)
    reward = float(rng.uniform(0.01, 1.0))
    w = forum_weights(gramian, pi, reward)
    assert w.min() >= 0 and abs(w[:T].sum() - 1) < 1e-8 and w[T] >= pi @ w[:T] - 1e-8
    expected = _forum_qp_by_quadprog(gramian, pi, reward)
    np.testing.assert_allclose(w, expected, atol=1e-5)


def test_forum_equals_libmtls_procedure():
    trainer, bench = _trainer("forum", ("method.forum.inner_steps=2",
                                        "method.forum.outer_lr=0.05", *PLAIN_SGD))
    reference = copy.deepcopy(trainer.model)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    logits = torch.full((3,), 1 / 3, requires_grad=True)
    logit_opt = torch.optim.Adam([logits], lr=0.05)
    lambd = np.zeros(3)
    phi, inner_lr = 0.1, 0.1
    for batch, (outer_batch,) in _steps(trainer, bench):
        params = list(reference.parameters())
        losses = _losses(bench, reference, batch)
        f = (F.softmax(logits, -1) * torch.stack(losses)).sum()
        g_f = torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, [logits] + params)])
        inner = copy.deepcopy(reference)
        inner_opt = torch.optim.SGD(inner.parameters(), lr=inner_lr)
        for _ in range(2):
            loss = (F.softmax(logits, -1) * torch.stack(_losses(bench, inner, batch))).sum()
            inner_opt.zero_grad()
            loss.backward()
            inner_opt.step()
        loss = (F.softmax(logits, -1) * torch.stack(_losses(bench, inner, batch))).sum()
        g_hat = torch.autograd.grad(loss, logits)[0]
        g_q = g_f.clone()
        g_q[:3] -= g_hat
        rows = torch.stack([_flat(torch.autograd.grad(l, params, retain_graph=True,
                                                      allow_unused=True), params)
                            for l in _losses(bench, reference, outer_batch)])
        rows = rows / rows.norm(dim=1, keepdim=True)
        rows = torch.cat([torch.zeros(3, 3), rows], dim=1)
        q_sq = g_q.norm().pow(2) + 1e-8
        pi = np.array([phi - float((g_q * rows[t]).sum() / q_sq) for t in range(3)])
        A = torch.cat([rows, g_q[None]]).double()
        w = _forum_qp_by_quadprog((A @ A.T).numpy(), pi, phi * float(q_sq))
        lambd = lambd + 1.0 * (w[:3] - lambd)  # epoch 0: rate 1
        nu = max(float(lambd @ pi), 0.0)
        final = sum(float(lambd[t]) * rows[t] for t in range(3)) + nu * g_q
        logit_opt.zero_grad()
        logits.grad = final[:3].clone()
        logit_opt.step()
        opt.zero_grad()
        begin = 3
        for p in params:
            p.grad = final[begin:begin + p.numel()].view_as(p).clone()
            begin += p.numel()
        opt.step()
        torch.testing.assert_close(trainer.primary.lambd, torch.from_numpy(lambd),
                                   rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(trainer.primary.task_weights.logits.detach(), logits.detach(),
                                   rtol=1e-4, atol=1e-6)
        _same(trainer.model, reference, rtol=1e-3, atol=1e-5)
