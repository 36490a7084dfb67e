"""The Python entry point (mtl_harness, docs/library.md): importable from any folder,
serving only the harness's own packages, and the page's examples run as written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
EXAMPLES = re.findall(r"```python\n(.*?)```", PAGE, re.DOTALL)


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    # Found through the editable install (the README's), not through the checkout's folder.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


def test_importable_elsewhere_serving_only_the_harness_packages(tmp_path):
    code = ("import sys, importlib.util\n"
            "sys.path = [p for p in sys.path if p not in ('', '.')]\n"
            "import mtl_harness as mh\n"
            "import engine, datasets\n"
            f"assert engine.__file__.startswith({str(ROOT)!r}), engine.__file__\n"
            f"assert datasets.__file__.startswith({str(ROOT)!r}), datasets.__file__\n"
            "assert importlib.util.find_spec('run_bench') is None\n"
            "assert 'pandas' not in sys.modules  # compare() is imported on first use\n"
            "assert 'pcgrad' in mh.method_names()\n")
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr


def test_another_datasets_package_is_refused_in_one_line(tmp_path):
    code = ("import sys, types\n"
            "sys.modules['datasets'] = types.ModuleType('datasets')\n"
            "import mtl_harness\n")
    done = _python(code, tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: mtl_harness serves its own `datasets` package"), last


def test_the_pages_examples_are_complete():
    assert len(EXAMPLES) == 2
    assert "MethodStep(" in EXAMPLES[0] and "compare(" in EXAMPLES[1]
    assert len(EXAMPLES[0].strip().splitlines()) <= 32


@pytest.mark.slow
def test_the_training_loop_example_runs_as_written(tmp_path):
    done = _python(EXAMPLES[0], tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 3  # one line per epoch
    assert (tmp_path / "ckpt.pt").is_file()


@pytest.mark.slow
def test_the_comparison_example_runs_as_written(tmp_path):
    done = _python(EXAMPLES[1], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "delta_p_task" in done.stdout and "pcgrad" in done.stdout
    assert (tmp_path / "results_py" / "digits_tasks").is_dir()
