"""Progress output: bars on a terminal only; one line per finished run in a log."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY_DIGITS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_log_gets_one_line_per_run_and_no_bars(tmp_path):
    sets = [a for o in TINY_DIGITS for a in ("--set", o)]
    done = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "run", "-m", "ew", "uw",
                           "-s", "0", "--out", str(tmp_path), *sets],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr and "step/s" not in done.stderr and "it/s" not in done.stderr
    assert [line for line in lines if line.startswith("[")] == [
        "[1/2] digits_tasks/ew/seed0: complete", "[2/2] digits_tasks/uw/seed0: complete"]
    again = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "run", "-m", "ew",
                            "-s", "0", "--out", str(tmp_path), "--no-progress", *sets],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert not [line for line in again.stderr.splitlines() if line.startswith("[")]


@pytest.mark.slow
def test_run_jobs_trains_in_processes_with_the_same_results(tmp_path):
    """--jobs 2 trains each run in its own process; the metrics equal a sequential run's."""
    sets = [a for o in TINY_DIGITS for a in ("--set", o)]
    for out, extra in ((tmp_path / "seq", []), (tmp_path / "par", ["--jobs", "2"])):
        done = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "run", "-m", "ew",
                               "uw", "-s", "0", "--out", str(out), "--no-progress", *sets,
                               *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "ew " in done.stdout and "uw " in done.stdout
    for method in ("ew", "uw"):
        (seq,) = (tmp_path / "seq" / "digits_tasks" / method).iterdir()
        (par,) = (tmp_path / "par" / "digits_tasks" / method).iterdir()
        assert _metrics(seq) == _metrics(par)  # step times aside


def _metrics(run_dir: Path) -> list:
    import json
    return [{k: v for k, v in json.loads(line).items() if k != "step_time_s"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_default_comparison_trains_two_runs_at_a_time_on_two_cores(monkeypatch):
    from engine.cli import cmd_run
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    argv = cmd_run.default_argv()
    assert argv[argv.index("--jobs") + 1] == "2"
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    argv = cmd_run.default_argv()
    assert argv[argv.index("--jobs") + 1] == "1"
