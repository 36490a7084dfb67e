"""Resuming: a run killed with SIGKILL finishes, when the same command is run again, with
exactly the metrics of an uninterrupted run; corrupt and foreign checkpoints are handled."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.core import checkpoint as C
from engine.core.identity import Identity
from engine.runs.runner import build_requests, execute
from tests.helpers import TINY_DIGITS, read_records, read_summary

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 4
# Several short epochs, long enough that the kill lands well before the end.
LONGER = [*TINY_DIGITS, f"train.epochs={EPOCHS}", "train.max_steps_per_epoch=3"]


def run_command(out: Path) -> list[str]:
    sets = [arg for o in LONGER for arg in ("--set", o)]
    return [sys.executable, "run_bench.py", "run", "-b", "digits_tasks", "-m", "ew", "-s", "0",
            "--device", "cpu", "--no-progress", "--out", str(out), *sets]


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "step_time_s"} for r in records]


def same_traces(a: Path, b: Path) -> bool:
    """The step-level traces (curve.jsonl, ...) of two runs exist and are identical."""
    names = sorted(p.name for p in a.glob("*.jsonl") if p.name != "metrics.jsonl")
    others = sorted(p.name for p in b.glob("*.jsonl") if p.name != "metrics.jsonl")
    return bool(names) and names == others and all(
        (a / n).read_text() == (b / n).read_text() for n in names)


def only_run_dir(out: Path) -> Path:
    (run_dir,) = (out / "digits_tasks" / "ew").iterdir()
    return run_dir


@pytest.mark.slow
def test_sigkilled_run_resumes_to_identical_metrics(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    reference = execute(_request(), tmp_path / "reference", progress=False)
    assert reference.status == "complete"

    out = tmp_path / "killed"
    proc = subprocess.Popen(run_command(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("digits_tasks/ew/*/checkpoint.pt")):
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    run_dir = only_run_dir(out)
    assert read_summary(run_dir)["status"] == "running"  # killed mid-run, not finished

    again = subprocess.run(run_command(out), cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "complete"
    assert 1 <= summary["resumed_from_epoch"] < EPOCHS
    resumed, uninterrupted = read_records(run_dir), read_records(reference.run_dir)
    assert len(resumed) == 3 * EPOCHS
    assert comparable(resumed) == comparable(uninterrupted)
    assert same_traces(run_dir, reference.run_dir)
    assert "resuming" in (run_dir / "run.log").read_text()


def _request(overrides=LONGER):
    (request,) = build_requests("digits_tasks", ["ew"], [0], "quick", list(overrides), "cpu", None)
    return request


def test_truncated_checkpoint_falls_back_to_previous(tmp_path, caplog):
    request = _request([*TINY_DIGITS, "train.epochs=2"])
    outcome = execute(request, tmp_path, progress=False)
    assert outcome.status == "complete"
    run_dir = outcome.run_dir
    full = read_records(run_dir)
    # Make the run look interrupted after the last epoch, with its newest checkpoint torn.
    summary = read_summary(run_dir)
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    latest = run_dir / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    with caplog.at_level(logging.INFO, logger="engine.core.checkpoint"):
        outcome = execute(request, tmp_path, progress=False)
    assert outcome.status == "complete"
    assert (run_dir / "checkpoint.corrupt").exists()
    assert read_summary(run_dir)["resumed_from_epoch"] == 1
    assert "checkpoint.prev.pt" in caplog.text and "unreadable" in caplog.text
    assert comparable(read_records(run_dir)) == comparable(full)


def test_all_checkpoints_corrupt_restarts_from_scratch(tmp_path, caplog):
    request = _request([*TINY_DIGITS, "train.epochs=2"])
    outcome = execute(request, tmp_path, progress=False)
    run_dir = outcome.run_dir
    full = read_records(run_dir)
    summary = read_summary(run_dir)
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / name).write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.INFO, logger="engine.core.checkpoint"):
        outcome = execute(request, tmp_path, progress=False)
    assert outcome.status == "complete"
    assert read_summary(run_dir)["resumed_from_epoch"] == 0
    assert "from scratch" in caplog.text
    assert comparable(read_records(run_dir)) == comparable(full)


def test_checkpoint_of_another_config_is_refused_until_force(tmp_path):
    request = _request([*TINY_DIGITS, "train.epochs=2"])
    run_dir = request.dir(tmp_path)
    run_dir.mkdir(parents=True)
    C.save_checkpoint(run_dir, {"epoch": 0, "config_hash": "deadbeef"})
    outcome = execute(request, tmp_path, progress=False)
    assert outcome.status == "failed"
    assert "deadbeef" in outcome.reason and "--force" in outcome.reason
    # Without --retry-failed the failed run stays failed; --force starts it over.
    assert execute(request, tmp_path, progress=False).state == "failed"
    outcome = execute(request, tmp_path, progress=False, force=True)
    assert outcome.status == "complete"
    assert read_summary(run_dir)["resumed_from_epoch"] == 0


def test_checkpoints_load_with_weights_only(tmp_path, monkeypatch):
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    C.save_checkpoint(tmp_path, {"epoch": 3, "config_hash": "abc", "records": [{"x": 1.5}]})
    state = C.load_checkpoint(tmp_path, Identity("abc", 0))
    assert state["epoch"] == 3 and state["records"] == [{"x": 1.5}]
    assert seen == [True]


def test_failed_run_is_skipped_unless_retried(tmp_path, monkeypatch):
    request = _request([*TINY_DIGITS, "train.epochs=2"])
    from engine.core import trainer as T

    real_fit = T.Trainer.fit

    def broken(self, resume=True, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(T.Trainer, "fit", broken)
    outcome = execute(request, tmp_path, progress=False)
    assert outcome.status == "failed" and "out of memory" in outcome.reason
    summary = read_summary(outcome.run_dir)
    assert summary["traceback"] == "traceback.txt"
    assert "RuntimeError" in (outcome.run_dir / "traceback.txt").read_text()
    monkeypatch.setattr(T.Trainer, "fit", real_fit)
    skipped = execute(request, tmp_path, progress=False)
    assert skipped.status == "skipped" and skipped.state == "failed"
    assert "--retry-failed" in skipped.reason
    retried = execute(request, tmp_path, progress=False, retry_failed=True)
    assert retried.status == "complete"
    assert execute(request, tmp_path, progress=False).previous == "complete"


@pytest.mark.parametrize("status", ["complete", "running"])
def test_locked_run_is_not_trained_twice(tmp_path, status):
    from engine.runs.locks import RunLock

    request = _request([*TINY_DIGITS])
    run_dir = request.dir(tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": status}))
    # A lock held by another process: the OS releases it when that process dies.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from engine.runs.locks import RunLock;"
        "lock = RunLock(Path(sys.argv[2])); lock.acquire(); print('held', flush=True);"
        "time.sleep(60)"), str(ROOT), str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        outcome = execute(request, tmp_path, progress=False)
        if status == "complete":
            assert outcome.status == "skipped"
        else:
            assert outcome.status == "locked" and outcome.state == "pending"
            assert f"pid {holder.pid}" in outcome.reason
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run_dir):  # released by the OS once the holder is gone
        pass


# Methods with state (EMAs, loss histories, learnable weights) or randomness of their own:
# resuming must restore all of it (MoDo and SDMGrad: also their stream of extra batches).
STATEFUL = ["autol", "cr_mogm", "dwa", "excessmtl", "famo", "forum", "modo", "moml", "pcd", "rlw",
            "repmtl", "sdmgrad"]


@pytest.mark.slow
@pytest.mark.parametrize("method", STATEFUL)
def test_resume_restores_method_state_exactly(tmp_path, method):
    from methods.registry import METHODS

    if method not in METHODS:
        pytest.skip(f"{method} is not registered")
    (request,) = build_requests("digits_tasks", [method], [0], "quick",
                                [*TINY_DIGITS, "train.epochs=3"], "cpu", None)
    outcome = execute(request, tmp_path, progress=False)
    assert outcome.status == "complete", outcome.reason
    run_dir = outcome.run_dir
    full = read_records(run_dir)
    traces = tmp_path / "traces"
    traces.mkdir()
    for path in run_dir.glob("*.jsonl"):
        (traces / path.name).write_text(path.read_text())
    # Back to the end of epoch 1, as if killed during epoch 2.
    os.replace(run_dir / "checkpoint.prev.pt", run_dir / "checkpoint.pt")
    summary = read_summary(run_dir)
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    assert execute(request, tmp_path, progress=False).status == "complete"
    assert read_summary(run_dir)["resumed_from_epoch"] == 2
    assert comparable(read_records(run_dir)) == comparable(full)
    assert same_traces(run_dir, traces)
