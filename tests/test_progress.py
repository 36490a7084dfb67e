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
