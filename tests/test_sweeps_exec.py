"""Running sweeps: failures recorded while the sweep goes on, --retry-failed, parallel
processes (a crashed worker included), one results root shared by two sweeps, the SLURM
path through submitit's local executor (preemption and requeue included), TensorBoard."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from engine.cli import main
from tests.helpers import read_records, read_summary

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = '''
"""Methods that fail on purpose, for the sweep tests."""
import os
import signal

import torch

from methods.base import Weighted, Weighting
from methods.registry import register_method


@register_method("sweeptest_boom")
class Boom(Weighting):
    description = "raises at its first step"

    def weigh(self, ctx):
        raise RuntimeError(f"boom at step {ctx.step}")


@register_method("sweeptest_nan")
class NaNWeights(Weighting):
    description = "NaN weights, so the losses diverge"

    def weigh(self, ctx):
        return Weighted(weights=torch.full_like(ctx.losses.detach(), float("nan")))


@register_method("sweeptest_kill")
class Kill(Weighting):
    description = "kills its own process (a crash no exception handler sees)"

    def weigh(self, ctx):
        os.kill(os.getpid(), signal.SIGKILL)
'''
TINY = """
[set]
train.max_steps_per_epoch = 2
data.train_size = 64
data.val_size = 32
data.test_size = 32
train.batch_size = 16
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("plugin") / "sweeptest_methods.py"
    path.write_text(PLUGIN)
    return str(path)


def sweep_file(tmp_path: Path, methods: list[str], seeds=(0,), epochs: int = 1,
               extra: str = "") -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(f'benchmarks = ["digits_tasks"]\nmethods = {methods!r}\n'.replace("'", '"')
                    + f"seeds = {list(seeds)}\ndevice = \"cpu\"\n{extra}"
                    + TINY + f"train.epochs = {epochs}\n")
    return path


def run_dir(out: Path, method: str, seed: int = 0) -> Path:
    (path,) = (out / "digits_tasks" / method).glob(f"seed{seed}-*")
    return path


def total_row(text: str) -> list[str]:
    return next(line for line in text.splitlines() if line.startswith("total")).split()[1:]


def test_local_sweep_records_failures_goes_on_and_retries_on_request(tmp_path, plugin, capsys,
                                                                    monkeypatch):
    path = sweep_file(tmp_path, ["ew", "sweeptest_boom", "sweeptest_nan"])
    out = tmp_path / "out"
    args = ["sweep", "--plugin", plugin, str(path), "--out", str(out), "--no-progress"]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert total_row(text) == ["1", "1", "1", "0"]  # complete, failed, diverged, pending
    boom = read_summary(run_dir(out, "sweeptest_boom"))
    assert boom["status"] == "failed" and "boom at step 0" in boom["reason"]
    assert "RuntimeError" in (run_dir(out, "sweeptest_boom") / boom["traceback"]).read_text()
    assert "traceback.txt" in text
    nan = read_summary(run_dir(out, "sweeptest_nan"))
    assert nan["status"] == "diverged" and "non-finite" in nan["reason"]
    assert read_summary(run_dir(out, "ew"))["status"] == "complete"
    assert "boom" in (run_dir(out, "sweeptest_boom") / "run.log").read_text()

    # Again: nothing is retrained, the failures are still reported.
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "0 to train" in captured.err and total_row(captured.out) == ["1", "1", "1", "0"]

    # With --retry-failed the failed runs train again (the "bug" is fixed meanwhile).
    from methods.ew import EqualWeighting
    from methods.registry import METHODS

    monkeypatch.setattr(METHODS.get("sweeptest_boom"), "weigh", EqualWeighting.weigh)
    assert main([*args, "--retry-failed"]) == 1  # the NaN run diverges again
    captured = capsys.readouterr()
    assert "2 to train" in captured.err
    assert total_row(captured.out) == ["2", "0", "1", "0"]
    assert read_summary(run_dir(out, "sweeptest_boom"))["status"] == "complete"


@pytest.mark.slow
def test_processes_executor_runs_in_parallel_and_survives_a_crash(tmp_path, plugin, capsys):
    path = sweep_file(tmp_path, ["ew", "sweeptest_kill"])
    out = tmp_path / "out"
    code = main(["sweep", "--plugin", plugin, str(path), "--out", str(out), "--no-progress",
                 "--executor", "processes", "--jobs", "2"])
    assert code == 1
    assert total_row(capsys.readouterr().out) == ["1", "1", "0", "0"]
    assert read_summary(run_dir(out, "ew"))["status"] == "complete"
    killed = read_summary(run_dir(out, "sweeptest_kill"))
    assert killed["status"] == "failed" and "SIGKILL" in killed["reason"]


@pytest.mark.slow
def test_two_sweeps_on_one_results_root_train_each_run_once(tmp_path):
    path = sweep_file(tmp_path, ["ew", "uw"], epochs=2)
    out = tmp_path / "out"
    command = [sys.executable, "run_bench.py", "sweep", str(path), "--out", str(out),
               "--no-progress"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    # A sweep that found a run locked by the other one did not finish it: it says so and
    # exits 1; one that trained or skipped everything exits 0.
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode in (0, 1), outputs
        assert (proc.returncode == 1) == ("still pending" in err), outputs
    for method in ("ew", "uw"):
        folder = run_dir(out, method)
        assert read_summary(folder)["status"] == "complete"
        assert len(read_records(folder)) == 6
        starts = [line for line in (folder / "run.log").read_text().splitlines()
                  if f"{method} on digits_tasks" in line]
        assert len(starts) == 1, starts  # trained by exactly one of the two sweeps
        assert not list(folder.glob(".*.tmp"))


@pytest.mark.slow
def test_slurm_path_through_submitit_local_with_preemption(tmp_path, capsys):
    from engine.runs.executors import Options, submit_slurm, wait_jobs
    from engine.runs.sweep import expand, load_sweep

    path = sweep_file(tmp_path, ["ew"], seeds=(0,), epochs=4,
                      extra='[slurm]\ntime_min = 10\ncpus_per_task = 1\n')
    out = tmp_path / "out"
    sweep = load_sweep(path)
    specs = [spec for spec, _ in expand(sweep, out)]
    (job,) = submit_slurm(specs, Options(str(out)), tmp_path / "jobs", sweep.slurm, "local")
    checkpoint = Path(specs[0].run_dir) / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert not job.done(), job.stderr()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # What SLURM does on preemption or near the time limit: USR2 to the job's process (the
    # one holding the run's lock). submitit checkpoints the job and requeues it.
    holder = (Path(specs[0].run_dir) / "run.lock").read_text().split()
    os.kill(int(holder[-1]), signal.SIGUSR2)
    (result,) = wait_jobs(specs, [job], progress=False, poll_s=0.2)
    assert result.status == "complete", job.stderr()
    summary = read_summary(Path(specs[0].run_dir))
    assert summary["status"] == "complete" and summary["resumed_from_epoch"] >= 1
    assert len(read_records(Path(specs[0].run_dir))) == 12

    # The command sees a finished sweep and submits nothing.
    assert main(["sweep", str(path), "--out", str(out), "--no-progress", "--executor", "slurm",
                 "--submitit-cluster", "local"]) == 0
    captured = capsys.readouterr()
    assert "0 to train" in captured.err and total_row(captured.out) == ["1", "0", "0", "0"]


def test_slurm_without_a_cluster_is_refused(tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    path = sweep_file(tmp_path, ["ew"])
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--executor", "slurm"]) == 2
    assert "sbatch not found" in capsys.readouterr().err


def test_tensorboard_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    path = sweep_file(tmp_path, ["ew"])
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--tensorboard"]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tensorboard_events_per_epoch(tmp_path, monkeypatch):
    scalars = []

    class Writer:  # stands in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            scalars.append(("closed", None, None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=Writer))
    path = sweep_file(tmp_path, ["ew"], epochs=2)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--no-progress", "--tensorboard"]) == 0
    records = read_records(run_dir(out, "ew"))
    test_1 = next(r for r in records if r["split"] == "test" and r["epoch"] == 1)
    assert ("test/first/acc", test_1["metrics"]["first"]["acc"], 1) in scalars
    assert ("loss/train/sum", records[0]["losses"]["sum"], 0) in scalars
    assert scalars[-1][0] == "closed"


def test_workers_take_gpus_round_robin(monkeypatch):
    import torch

    from engine.runs.executors import worker_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices("auto", 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices("cpu", 2) == [None, None]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_devices("cuda", 2) == [None, None]  # one GPU: every worker keeps it
