"""benchmarks/scripts/vs_torchjd.py: the harness against TorchJD, on a tiny model."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scripts" / "vs_torchjd.py"
HAS_TORCHJD = importlib.util.find_spec("torchjd") is not None
HAS_LIBMTL = importlib.util.find_spec("LibMTL") is not None


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


def _cells(line: str) -> int:
    return line.count("|") - 1


@pytest.mark.skipif(not (HAS_TORCHJD and HAS_LIBMTL),
                    reason="torchjd and LibMTL are not both installed (the `compare` extra)")
def test_libmtl_column_agrees_where_deterministic():
    vs = load_script()
    methods = ["ew", "mgda", "cagrad", "imtl", "pcgrad", "graddrop", "upgrad"]
    result = vs.measure(["tiny"], methods, rounds=1, steps=1, warmup=0, memory=False,
                        log=lambda _line: None)
    assert result["libmtl"] and result["libmtl_absent"] is None
    rows = {row["method"]: row for row in result["models"][0]["rows"]}
    for name in ("ew", "mgda", "cagrad", "imtl"):
        agreement = rows[name]["agreement_libmtl"]
        assert agreement["agrees"] and agreement["cos_shared"] >= vs.AGREEMENT, name
        # The same settings (CAGrad c 0.4 divided by 1 + c², MGDA unnormalised): same scale.
        assert abs(agreement["norm_ratio_shared"] - 1) < 1e-3, name
        assert rows[name]["libmtl"]["median_ms"] > 0 and rows[name]["ratio_libmtl"] > 0
    for name in ("pcgrad", "graddrop"):
        assert rows[name]["agreement_libmtl"] == {"checked": False, "why": "random"}
    assert rows["imtl"]["torchjd"] == {"unavailable": "not in TorchJD"}
    assert rows["upgrad"]["libmtl"] == {"unavailable": "not in LibMTL"}
    table = vs.format_tables(result)
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len({_cells(line) for line in lines}) == 1 and _cells(lines[0]) == 14
    assert "harness / LibMTL" in lines[0] and f"LibMTL {result['libmtl']}:" in table


@pytest.mark.skipif(not HAS_TORCHJD, reason="torchjd is not installed (the `compare` extra: "
                                            "pip install -e \".[compare]\")")
def test_without_libmtl_runs_and_says_so_in_one_line(tmp_path):
    # A process where `import LibMTL` fails, whether or not it is installed here.
    (tmp_path / "LibMTL.py").write_text("raise ImportError('blocked')\n")
    args = ["vs_torchjd.py", "--models", "tiny", "--methods", "ew,mgda", "--rounds", "1",
            "--steps", "1", "--warmup", "0", "--no-memory", "--threads", "1"]
    proc = subprocess.run([sys.executable, "-c",
                           f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
                           f"sys.argv = {args!r}; "
                           f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "LibMTL" in line]
    assert len(notes) == 1 and "no LibMTL columns" in notes[0]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| method"))
    assert "LibMTL" not in header and _cells(header) == 9
    assert "LibMTL: not measured" in proc.stdout
