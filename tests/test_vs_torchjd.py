"""benchmarks/scripts/vs_torchjd.py: the harness against TorchJD, on a tiny model."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scripts" / "vs_torchjd.py"
HAS_TORCHJD = importlib.util.find_spec("torchjd") is not None


def load_script():
    spec = importlib.util.spec_from_file_location("vs_torchjd", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not HAS_TORCHJD, reason="torchjd is not installed (the `compare` extra: "
                                            "pip install -e \".[compare]\")")
def test_measure_tiny_model_two_methods():
    vs = load_script()
    result = vs.measure(["tiny"], ["upgrad", "pcgrad"], rounds=1, steps=1, warmup=1,
                        memory=False, log=lambda _line: None)
    (model,) = result["models"]
    rows = {row["method"]: row for row in model["rows"]}
    assert set(rows) == {"upgrad", "pcgrad"}
    for row in rows.values():
        assert row["harness"]["median_ms"] > 0 and row["torchjd"]["median_ms"] > 0
        assert row["ratio"] > 0
    # UPGrad is deterministic: both sides compute the same update; PCGrad's order is random.
    assert rows["upgrad"]["agreement"]["agrees"]
    assert rows["upgrad"]["agreement"]["cos_shared"] >= vs.AGREEMENT
    assert rows["pcgrad"]["agreement"] == {"checked": False, "why": "random"}
    table = vs.format_tables(result)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    for name in ("upgrad", "pcgrad", vs.FLOOR_SUM, vs.FLOOR_PASSES):
        assert name in lines
    assert "same (cos" in lines["upgrad"] and "random: not checked" in lines["pcgrad"]
    assert f"TorchJD {result['torchjd']}" in table


@pytest.mark.skipif(not HAS_TORCHJD, reason="torchjd is not installed (the `compare` extra: "
                                            "pip install -e \".[compare]\")")
def test_dualproj_config_krum_trimmed_mean_and_mean_agree_with_torchjd():
    vs = load_script()
    methods = ["dualproj", "config", "krum", "trimmed_mean", "mean"]
    assert all(vs.PAIRS[m].harness == m for m in methods)
    result = vs.measure(["tiny"], methods, rounds=1, steps=1, warmup=0, memory=False,
                        log=lambda _line: None)
    for row in result["models"][0]["rows"]:
        assert row["agreement"]["agrees"], row
        assert row["agreement"]["cos_shared"] >= 1 - 1e-9, row
        assert row["harness"]["median_ms"] > 0 and row["torchjd"]["median_ms"] > 0


def test_without_torchjd_exits_2_in_one_line(tmp_path):
    # A process where `import torchjd` fails, whether or not it is installed here.
    blocker = tmp_path / "torchjd.py"
    blocker.write_text("raise ImportError('blocked')\n")
    env_path = f"{tmp_path}"
    proc = subprocess.run([sys.executable, "-c",
                           f"import sys; sys.path.insert(0, {env_path!r}); "
                           f"sys.argv = ['vs_torchjd.py']; "
                           f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "torchjd is not installed" in proc.stderr


@pytest.mark.skipif(not HAS_TORCHJD, reason="torchjd is not installed (the `compare` extra: "
                                            "pip install -e \".[compare]\")")
def test_the_cpu_clock_times_the_process_and_says_so():
    vs = load_script()
    result = vs.measure(["tiny"], ["mgda"], rounds=1, steps=2, warmup=0, memory=False,
                        log=lambda _line: None, clock="cpu")
    (row,) = result["models"][0]["rows"]
    assert result["clock"] == "cpu" and row["harness"]["median_ms"] > 0
    assert "CPU time of the process" in vs.format_tables(result)
