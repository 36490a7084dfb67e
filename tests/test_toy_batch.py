"""The batched toy2d runner (engine/runs/toy_batch.py, `run_bench.py toy`): the same records
as the engine's per-start runs, its refusals, and the two-task CAGrad solve."""
from __future__ import annotations

import json

import pytest
import torch

from engine.cli import main as cli_main
from engine.errors import UserError
from engine.runs.runner import build_requests, run_all
from engine.runs.toy_batch import cagrad_two_task_weights, plan, run_batches
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


@pytest.mark.parametrize("profile, methods, starts", [
    ("cagrad", ["ew", "pcgrad", "mgda", "cagrad"], 3),
    ("famo", ["famo"], 5),
])
def test_batched_runs_equal_the_engine_runs_bit_for_bit(profile, methods, starts, tmp_path):
    # Every start of the protocol, several methods in one batch, against one engine run each.
    engine_out, batch_out = tmp_path / "engine", tmp_path / "batch"
    engine = run_all(_requests(methods, profile, starts), engine_out, progress=False)
    assert {o.status for o in engine} == {"complete"}
    requests = _requests(methods, profile, starts)
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
        mine = cagrad_two_task_weights(grams, c, rescale)
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
