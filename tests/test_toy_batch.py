"""The batched toy2d runner (engine/runs/toy_batch.py, `run_bench.py toy`): the same records
as the engine's per-start runs, the same losses, gradients and Adam steps as autograd and
torch.optim, its refusals, and the two-task CAGrad solve."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.toy2d import toy_task_loss
from datasets.toy import EPS, STARTS
from engine.cli import main as cli_main
from engine.errors import UserError
from engine.runs.runner import build_requests, run_all
from engine.runs.toy_batch import (AdamStep, ToyGradient, cagrad_two_task_weights, plan,
                                   run_batches)
from methods.cagrad import cagrad_weights

SHORT = ["train.epochs=2", "data.steps_per_epoch=15", "data.trajectory_every=5",
         "engine.curve_every=7"]
FILES = ("trajectory.jsonl", "curve.jsonl", "metrics.jsonl")


def _requests(methods, profile, starts, overrides=()):
    return [r for i in range(starts)
            for r in build_requests("toy2d", methods, [0], profile,
                                    [*SHORT, *overrides, f"data.start={i}"], "cpu", None)]


def _records(run_dir, name):
    records = [json.loads(line) for line in (run_dir / name).read_text().splitlines()]
    for record in records:
        record.pop("step_time_s", None)  # wall-clock, not a result
    return records


@pytest.mark.parametrize("profile, methods, starts, overrides", [
    ("cagrad", ["ew", "pcgrad", "mgda", "cagrad"], 3, []),
    ("famo", ["famo", "pcgrad"], 5, []),
    # the optimizer's own step (SGD), MGDA's normalised solve, shifted losses
    ("quick", ["ew", "mgda"], 2, ["train.optimizer=sgd", "method.mgda.normalization=loss+",
                                  "data.loss_scale=[0.1, 1.0]", "data.l_star=[-2.1, -21.0]"]),
    # AdamW's decoupled weight decay, a learning rate that changes between epochs
    ("quick", ["ew", "cagrad"], 2, ["train.optimizer=adamw", "train.weight_decay=0.01",
                                    "train.scheduler=step", "train.step_size=1"]),
])
def test_batched_runs_equal_the_engine_runs_bit_for_bit(profile, methods, starts, overrides,
                                                        tmp_path):
    # Every start of the protocol, several methods in one batch, against one engine run each.
    engine_out, batch_out = tmp_path / "engine", tmp_path / "batch"
    engine = run_all(_requests(methods, profile, starts, overrides), engine_out, progress=False)
    assert {o.status for o in engine} == {"complete"}
    requests = _requests(methods, profile, starts, overrides)
    assert len(plan(requests)) == 1  # one computation for all of them
    batch = run_batches(requests, batch_out, progress=False, exact_cagrad=True)
    assert [o.status for o in batch] == ["complete"] * len(requests)
    for request in requests:
        mine, theirs = request.dir(batch_out), request.dir(engine_out)
        for name in FILES:
            assert _records(mine, name) == _records(theirs, name), (request.method_name, name)
        summary = json.loads((mine / "summary.json").read_text())
        reference = json.loads((theirs / "summary.json").read_text())
        assert summary["runner"] == "toy_batch" and summary["status"] == "complete"
        assert summary["methods"] == reference["methods"]
        assert summary["tasks"] == reference["tasks"]
        assert json.loads((mine / "config.json").read_text()) == \
            json.loads((theirs / "config.json").read_text())


def _engine_task_gradients(points, seeds, loss_scale, l_star):
    """Per point: the task losses [T] and the per-task gradients [T, 2] as the engine's
    autograd computes them (its encoder's batch of one, task t's loss, backpropagated
    from seeds[r, t])."""
    offsets = l_star or (0.0, 0.0)
    losses, grads = [], []
    for point, seed in zip(points, seeds):
        x = point.clone().requires_grad_()
        pred = x.unsqueeze(0).expand(1, 2)
        task = [toy_task_loss(pred, torch.zeros(1), t, loss_scale[t], offsets[t]) for t in (0, 1)]
        losses.append(torch.stack(task).detach())
        grads.append(torch.stack([torch.autograd.grad(task[t], x, seed[t])[0] for t in (0, 1)]))
    return torch.stack(losses), torch.stack(grads)


def _toy_points():
    gen = torch.Generator().manual_seed(0)
    special = [p for s in STARTS.values() for p in s] + [
        (0.0, 0.0), (3.0, -0.0), (2.0, 1e-30), (2.0, -1e-30), (0.0, -8.3552),
        (-7.0, -EPS), (-7.0, EPS),  # |a1| = ε exactly: maximum's tie
        (40.0, 30.0), (-40.0, -30.0)]  # tanh saturated
    # around the kinks of g1 and g2 (|a| below ε), where log(|a|) is steepest
    x2 = torch.rand(30, generator=gen) * 8 + 0.05
    kinks = [torch.stack([root + k * 1e-6, x2], 1)
             for root in (-7 + 2 * torch.tanh(x2), 7 - 2 * torch.tanh(x2)) for k in range(-8, 9)]
    return torch.cat([torch.tensor(special), *kinks,
                      torch.rand(300, 2, generator=gen) * 24 - 12]).float()


@pytest.mark.parametrize("loss_scale, l_star", [((1.0, 1.0), ()), ((0.1, 1.0), ()),
                                                ((0.1, 1.0), (-2.1, -21.0))])
def test_toy_gradient_equals_autograd_bit_for_bit(loss_scale, l_star):
    points = _toy_points()
    seeds = torch.rand(len(points), 2, generator=torch.Generator().manual_seed(1)) + 0.01
    seeds[::3] = 1.0  # aggregator rows backpropagate from 1
    want_losses, want_grads = _engine_task_gradients(points, seeds, loss_scale, l_star)
    bits = lambda t: t.contiguous().view(torch.int32)  # noqa: E731 (so that −0 ≠ +0)
    # few rows (the kernels' scalar loops) and many (their vectorised ones)
    for rows in (slice(0, 3), slice(3, 9), slice(None)):
        toy = ToyGradient(points[rows].clone(), loss_scale, l_star)
        losses = toy.losses()
        toy.seeds.copy_(seeds[rows])
        assert torch.equal(bits(losses), bits(want_losses[rows]))
        assert torch.equal(bits(toy.gradients()), bits(want_grads[rows]))
    # maximum's tie (½) and its flat part below ε (0) were met
    assert (toy.dg.abs() == 0.5).any() and (toy.dg == 0).any()


@pytest.mark.parametrize("name, weight_decay", [("Adam", 0.0), ("Adam", 0.01), ("AdamW", 0.01)])
def test_adam_step_equals_torch_optim_bit_for_bit(name, weight_decay):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(12, 2, generator=gen)
    reference = torch.nn.Parameter(start.clone())
    optimizer = getattr(torch.optim, name)([reference], lr=1e-2, weight_decay=weight_decay)
    mine = start.clone()
    step = AdamStep.of(getattr(torch.optim, name)([torch.nn.Parameter(mine)], lr=1e-2,
                                                  weight_decay=weight_decay), mine)
    for i in range(50):
        grad = torch.randn(12, 2, generator=gen) * 10 ** (i % 5 - 2)
        reference.grad = grad.clone()
        optimizer.step()
        step(grad)
        if i == 20:  # a scheduler's change of the learning rate
            optimizer.param_groups[0]["lr"] = step.group["lr"] = 3e-3
    assert torch.equal(mine.view(torch.int32), reference.detach().view(torch.int32))
    assert AdamStep.of(torch.optim.Adam([reference], amsgrad=True), mine) is None
    assert AdamStep.of(torch.optim.SGD([reference], lr=0.1), mine) is None


def test_closed_form_cagrad_follows_the_engine_to_float_tolerance(tmp_path):
    requests = _requests(["cagrad"], "cagrad", 3)
    run_batches(requests, tmp_path / "closed", progress=False)
    run_batches(_requests(["cagrad"], "cagrad", 3), tmp_path / "exact", progress=False,
                exact_cagrad=True)
    for request in requests:
        a = _records(request.dir(tmp_path / "closed"), "trajectory.jsonl")
        b = _records(request.dir(tmp_path / "exact"), "trajectory.jsonl")
        points = torch.tensor([r["point"] for r in a])
        assert torch.allclose(points, torch.tensor([r["point"] for r in b]), rtol=0, atol=1e-5)


def test_two_task_cagrad_solve_matches_the_method_solver():
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(200, 2, 3, generator=gen, dtype=torch.float64)
    grads[:40, 1] = -grads[:40, 0] * torch.rand(40, 1, generator=gen, dtype=torch.float64)
    grads[40:50, 1] = grads[40:50, 0]          # identical gradients
    grads[50:55, 0] = 0.0                      # one zero gradient
    grads[55:60] = 0.0                         # both zero
    grads[60:80, 1] *= 1e3                     # very different scales
    grams = grads @ grads.transpose(1, 2)
    for c, rescale in ((0.4, 1), (0.5, 0), (2.0, 2), (0.0, 1)):
        mine = torch.tensor([cagrad_two_task_weights(g[0][0], g[0][1], g[1][1], c, rescale)
                             for g in grams.tolist()], dtype=torch.float64)
        solutions = [cagrad_weights(g, c, rescale) for g in grams]
        # Where the method's active set stalls (nearly opposed gradients at large c) its
        # SLSQP fallback stops at gaps up to ~1e-5; the closed form is exact there.
        certified = torch.tensor([s.gap <= 1e-9 for s in solutions])
        assert certified.sum() >= 100
        ref = torch.stack([s.weights for s in solutions])
        assert torch.allclose(mine[certified], ref[certified], rtol=1e-6, atol=1e-7), (c, rescale)
        assert torch.allclose(mine, ref, rtol=1e-3), (c, rescale)


def test_complete_runs_are_skipped_and_force_retrains(tmp_path):
    requests = _requests(["ew"], "quick", 1, ["train.epochs=1"])
    assert [o.status for o in run_batches(requests, tmp_path, progress=False)] == ["complete"]
    assert [o.status for o in run_batches(requests, tmp_path, progress=False)] == ["skipped"]
    assert [o.status for o in run_batches(requests, tmp_path, force=True,
                                          progress=False)] == ["complete"]


@pytest.mark.parametrize("method, overrides, message", [
    ("nashmtl", [], "implements ew, famo, pcgrad, mgda and cagrad"),
    ("pcgrad+repmtl_tsr", [], "implements ew, famo"),
    ("ew", ["engine.amp=bf16"], "engine.amp=bf16"),
    ("ew", ["engine.conflict_every=5"], "engine.conflict_every"),
    ("ew", ["data.start_point=[1.0, 2.0]"], "data.start_point"),
])
def test_refusals_name_the_reason(method, overrides, message):
    requests = build_requests("toy2d", [method], [0], "quick", overrides, "cpu", None)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("+", r"\+")):
        plan(requests)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "res"
    args = ["toy", "--protocol", "quick", "-m", "ew", "mgda", "--starts", "0", "2", "--out",
            str(out), "--no-progress", "--set", "train.epochs=1", "--set",
            "data.steps_per_epoch=20"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert text.count("complete") == 4 and "Pareto dist" in text
    assert len(list((out / "toy2d").glob("*/seed0-*/trajectory.jsonl"))) == 4
    assert cli_main(["toy", "--starts", "3", "--out", str(out)]) == 2
    assert "protocol cagrad has 3 start points" in capsys.readouterr().err
    assert cli_main(["toy", "-m", "uw", "--out", str(out)]) == 2
    assert "uw: the batched toy runner implements" in capsys.readouterr().err
    assert cli_main(["toy", "--set", "data.start=1", "--out", str(out)]) == 2
    assert "--starts" in capsys.readouterr().err
