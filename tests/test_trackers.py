"""Trackers: TensorBoard events and Weights & Biases for `run` (sweeps: test_sweeps_exec.py).
Neither package is required: TensorBoard's writer is replaced by a recorder, and the W&B test
runs in W&B's offline mode only where wandb is installed."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from engine.cli import main
from tests.helpers import TINY_DIGITS, read_records

ROOT = Path(__file__).resolve().parent.parent
TINY = [arg for override in [*TINY_DIGITS, "train.epochs=2"] for arg in ("--set", override)]


def only_run_dir(out: Path, method: str) -> Path:
    (run_dir,) = (out / "digits_tasks" / method).iterdir()
    return run_dir


def _recording_writer(monkeypatch) -> list:
    scalars = []

    class Writer:  # stands in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, log_dir):
            scalars.append(("opened", log_dir, None))
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "events.out.tfevents.test").write_text("")

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            scalars.append(("closed", None, None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=Writer))
    return scalars


def test_tensorboard_on_a_complete_run_writes_its_recorded_metrics(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert main(["run", "-m", "ew", "-s", "0", "--out", str(out), "--no-progress", *TINY]) == 0
    run_dir = only_run_dir(out, "ew")
    scalars = _recording_writer(monkeypatch)
    assert main(["run", "-m", "ew", "-s", "0", "--out", str(out), "--no-progress",
                 "--tensorboard", *TINY]) == 0
    assert scalars[0] == ("opened", str(run_dir / "tensorboard"), None)
    records = read_records(run_dir)
    for epoch in (0, 1):
        test = next(r for r in records if r["split"] == "test" and r["epoch"] == epoch)
        assert ("test/first/acc", test["metrics"]["first"]["acc"], epoch) in scalars
    assert scalars[-1][0] == "closed"
    scalars.clear()  # events exist now: a third call does not write them twice
    assert main(["run", "-m", "ew", "-s", "0", "--out", str(out), "--no-progress",
                 "--tensorboard", *TINY]) == 0
    assert scalars == []


def test_run_writes_tensorboard_events(tmp_path, monkeypatch):
    scalars = []

    class Writer:  # stands in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, log_dir):
            scalars.append(("opened", log_dir, None))

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            scalars.append(("closed", None, None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=Writer))
    out = tmp_path / "out"
    assert main(["run", "-m", "ew", "-s", "0", "--out", str(out), "--no-progress",
                 "--tensorboard", *TINY]) == 0
    run_dir = only_run_dir(out, "ew")
    assert scalars[0] == ("opened", str(run_dir / "tensorboard"), None)
    records = read_records(run_dir)
    test_1 = next(r for r in records if r["split"] == "test" and r["epoch"] == 1)
    assert ("test/first/acc", test_1["metrics"]["first"]["acc"], 1) in scalars
    assert scalars[-1][0] == "closed"


def test_run_refuses_a_missing_tracker_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "out"
    assert main(["run", "-m", "ew", "-s", "0", "--out", str(out), "--wandb", *TINY]) == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is an optional extra (pip install -e '.[wandb]'); not installed")
def test_run_logs_to_wandb_offline(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_PROJECT": "mtl-harness-test"}
    done = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "run", "-m", "ew", "-s",
                           "0", "--out", str(out), "--no-progress", "--wandb", *TINY],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wandb" not in (done.stdout + done.stderr).replace(str(tmp_path), "")  # silent
    run_dir = only_run_dir(out, "ew")
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (events,) = offline.glob("*.wandb")  # W&B's record of the run, synced later if wanted
    logged = events.read_bytes()
    assert b"test/first/acc" in logged and b"loss/train/sum" in logged  # the epoch scalars
    assert b"batch_size" in logged and b"digits_tasks" in logged        # the resolved config
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
