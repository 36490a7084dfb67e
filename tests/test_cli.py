"""The command line as a user meets it: help, list, bad input, exit codes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2",
        "--set", "data.train_size=64", "--set", "data.val_size=32", "--set", "data.test_size=32",
        "--set", "train.batch_size=16"]


def cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, str(ROOT / "run_bench.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["list", "--help"]])
def test_help_explains_options_with_examples(args):
    result = cli(*args)
    assert result.returncode == 0
    assert "Example" in result.stdout


@pytest.mark.slow
def test_run_help_documents_every_option():
    text = cli("run", "--help").stdout
    for option in ("-b", "-m", "-s", "--profile", "--set", "--device", "--out", "--plugin",
                   "--force", "--data-root"):
        assert option in text


@pytest.mark.slow
def test_list_shows_methods_with_kind_and_needs_and_benchmarks():
    result = cli("list")
    assert result.returncode == 0
    assert "ew" in result.stdout and "weighting" in result.stdout and "needs:" in result.stdout
    assert "digits_tasks" in result.stdout
    methods_only = cli("list", "methods").stdout
    assert "benchmarks:" not in methods_only


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["run", "-m", "ewx"], "unknown method 'ewx'; did you mean ew"),
    (["run", "-b", "digit_tasks"], "unknown benchmark 'digit_tasks'; did you mean digits_tasks"),
    (["run", "-m", "ew", "--set", "train.lr"], "malformed"),
    (["run", "-m", "ew", "--set", "train.lr=fast"], "expected a number"),
    (["run", "-m", "ew", "--set", "train.epoch=2"], "did you mean train.epochs"),
    (["run", "-s", "-1"], "negative"),
    (["run", "-s", "1.5"], "not an integer"),
    (["run", "--device", "cuda:7"], "cuda"),
    (["run", "--device", "tpu"], "expected auto, cpu"),
    (["run", "-m", "ew+stl"], "combines"),
    (["list", "everything"], "invalid choice"),
    (["run", "-b", "nyuv2", "-m", "ew"], "pass --data-root"),
    (["run", "-b", "office31", "-m", "ew", "--data-root", "/no/such/folder"], "no such folder"),
    (["run", "--strict"], "no official counts"),
    (["run", "-b", "office31", "-m", "ew", "--data-root", "EMPTY"], "holds no file it reads"),
])
def test_user_mistakes_get_one_line_and_non_zero_exit(args, message, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    result = cli(*args, "--out", str(tmp_path / "out")) if args[0] == "run" else cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # refused before any run was started


@pytest.mark.slow
def test_unwritable_output_folder_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli("run", "-m", "ew", "--out", str(blocker / "sub"), *TINY)
    assert result.returncode == 2
    assert "cannot write to output folder" in result.stderr


@pytest.mark.slow
def test_run_writes_every_file_and_skips_complete_runs(tmp_path):
    first = cli("run", "-m", "ew", "stl", "-s", "0", "--out", str(tmp_path), "--no-progress", *TINY)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert any(line.startswith("stl ") for line in lines)
    assert any(line.startswith("ew ") for line in lines)
    run_dir = next((tmp_path / "digits_tasks" / "ew").iterdir())
    for name in ("config.json", "env.json", "metrics.jsonl", "summary.json", "checkpoint.pt"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["peak_memory_bytes"] > 0
    env = json.loads((run_dir / "env.json").read_text())
    assert env["packages"]["torch"].startswith("2.14") and env["device"] == "cpu"
    config = json.loads((run_dir / "config.json").read_text())
    assert run_dir.name == f"seed0-{config['config_hash']}"
    again = cli("run", "-m", "ew", "-s", "0", "--out", str(tmp_path), "--no-progress", *TINY)
    assert again.returncode == 0 and "already complete" in again.stderr


@pytest.mark.slow
def test_diverged_run_gives_non_zero_exit_and_others_complete(tmp_path):
    plugin = tmp_path / "explode.py"
    plugin.write_text(
        "import torch\n"
        "from methods.base import Weighted, Weighting\n"
        "from methods.registry import register_method\n\n"
        "@register_method('explode')\n"
        "class Explode(Weighting):\n"
        "    description = 'infinite weights at step 1'\n"
        "    def weigh(self, ctx):\n"
        "        return Weighted(torch.ones(3) * (float('inf') if ctx.step == 1 else 1.0))\n")
    result = cli("run", "--plugin", str(plugin), "-m", "explode", "ew", "--out",
                 str(tmp_path / "r"), "--no-progress", *TINY[:2], "--set",
                 "train.max_steps_per_epoch=4", *TINY[4:])
    assert result.returncode == 1
    assert "diverged" in result.stderr
    assert (tmp_path / "r" / "digits_tasks" / "ew").exists()


def test_install_puts_no_generic_packages_on_the_path(tmp_path):
    # Outside the repository, the project's top-level folders are not importable.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c",
                            "import importlib.util as u; print([n for n in ('methods', 'engine', "
                            "'benchmarks', 'analysis') if u.find_spec(n)])"],
                           cwd=tmp_path, capture_output=True, text=True, env=env)
    assert probe.stdout.strip() == "[]", probe.stdout


@pytest.mark.slow
def test_list_imports_no_analysis_stack():
    # `list` (and building the parser of every command) must not pay for pandas, scipy or
    # matplotlib: they are imported where a report, a solver or a rendering uses them.
    code = ("import sys, io, contextlib\nfrom engine.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['list']) == 0\n"
            "heavy = ('pandas', 'scipy', 'matplotlib', 'sklearn', 'analysis.report')\n"
            "print(sorted(m for m in heavy if m in sys.modules))")
    probe = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"
