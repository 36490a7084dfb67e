"""Nothing silently wrong: a run folder's identity (config, seed, data) is checked before it
is skipped or resumed, checkpoints are checked on load, method state is checked at the first
checkpoint, report checks the epochs and repairs what it can, temporaries are removed, and
bad input ends in one line (exit 2), not a traceback or a silent acceptance."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core import checkpoint as C
from engine.core import results as R
from engine.cli import main
from engine.core.config import TrainConfig, resolve
from engine.errors import ConfigError, UserError, check_range
from engine.core.identity import Identity, files_fingerprint
from engine.runs.runner import build_requests, execute, run_all
from methods.base import Weighted, Weighting
from methods.registry import METHODS, register_method
from tests.helpers import TINY_DIGITS, read_records, read_summary

ROOT = Path(__file__).resolve().parent.parent
TWO_EPOCHS = [*TINY_DIGITS, "train.epochs=2"]


def request(method: str = "ew", seed: int = 0, overrides=TWO_EPOCHS, data_root=None):
    (req,) = build_requests("digits_tasks", [method], [seed], "quick", list(overrides), "cpu",
                            data_root)
    return req


def trained(out: Path, method: str = "ew", seed: int = 0, overrides=TWO_EPOCHS):
    req = request(method, seed, overrides)
    outcome = execute(req, out, progress=False)
    assert outcome.status == "complete", outcome.reason
    return req, outcome.run_dir


# --------------------------------------------------------------------------- identity

def test_the_data_fingerprint_is_recorded_and_another_one_is_refused(tmp_path, capsys):
    req, run_dir = trained(tmp_path)
    fingerprint = json.loads((run_dir / R.CONFIG).read_text())["data_fingerprint"]
    assert fingerprint == req.data_fingerprint and fingerprint.startswith("generated:")
    assert read_summary(run_dir)["data_fingerprint"] == fingerprint
    state = torch.load(run_dir / R.CHECKPOINT, weights_only=True)
    assert state["data_fingerprint"] == fingerprint and state["seed"] == 0

    # The same folder, but recorded for other data: never taken as complete.
    config = json.loads((run_dir / R.CONFIG).read_text())
    config["data_fingerprint"] = "files:0123456789abcdef"
    (run_dir / R.CONFIG).write_text(json.dumps(config))
    outcome = execute(request(), tmp_path, progress=False)
    assert outcome.status == "refused" and outcome.state == "failed" and outcome.user_error
    assert "data fingerprint files:0123456789abcdef" in outcome.reason
    with pytest.raises(UserError, match="data fingerprint"):
        run_all([request()], tmp_path, progress=False)
    sets = [a for o in TWO_EPOCHS for a in ("--set", o)]
    code = main(["run", "-m", "ew", "-s", "0", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path), *sets])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to skip or resume" in err and "Traceback" not in err
    # --force trains it again and records the right fingerprint.
    assert execute(request(), tmp_path, force=True, progress=False).status == "complete"
    assert json.loads((run_dir / R.CONFIG).read_text())["data_fingerprint"] == fingerprint


def test_a_folder_of_another_seed_is_refused(tmp_path):
    _, run_dir = trained(tmp_path)
    config = json.loads((run_dir / R.CONFIG).read_text())
    config["seed"] = 7
    (run_dir / R.CONFIG).write_text(json.dumps(config))
    outcome = execute(request(), tmp_path, progress=False)
    assert outcome.status == "refused" and "seed 7, not 0" in outcome.reason


def test_folders_without_a_fingerprint_stay_valid(tmp_path):
    _, run_dir = trained(tmp_path)
    config = json.loads((run_dir / R.CONFIG).read_text())
    del config["data_fingerprint"]
    (run_dir / R.CONFIG).write_text(json.dumps(config))
    assert execute(request(), tmp_path, progress=False).status == "skipped"


def test_files_fingerprint_sees_names_sizes_and_times(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.npy").write_bytes(b"12345")
    first = files_fingerprint(tmp_path)
    assert files_fingerprint(tmp_path) == first
    (tmp_path / "a" / "0.npy").write_bytes(b"123456")
    second = files_fingerprint(tmp_path)
    assert second != first
    (tmp_path / "a" / "1.npy").write_bytes(b"x")
    assert files_fingerprint(tmp_path) != second
    os.utime(tmp_path / "a" / "1.npy", ns=(1, 1))
    assert files_fingerprint(tmp_path) not in (first, second)


def test_another_seeds_checkpoint_is_not_resumed(tmp_path):
    _, seed1 = trained(tmp_path, seed=1)
    _, seed0 = trained(tmp_path, seed=0)
    # A run of seed 0 interrupted after epoch 0, with seed 1's checkpoint copied in.
    state = torch.load(seed1 / R.CHECKPOINT, weights_only=True)
    state["epoch"] = 0
    torch.save(state, seed0 / R.CHECKPOINT)
    (seed0 / C.PREVIOUS).unlink(missing_ok=True)
    summary = read_summary(seed0)
    summary["status"] = "running"
    (seed0 / R.SUMMARY).write_text(json.dumps(summary))
    outcome = execute(request(seed=0), tmp_path, progress=False)
    assert outcome.status == "failed" and outcome.user_error
    assert "belongs to seed 1, not 0" in outcome.reason
    with pytest.raises(C.CheckpointMismatch, match="other data"):
        C.load_checkpoint(seed1, Identity(state["config_hash"], 1, "generated:other"))


# --------------------------------------------------------------------------- method state

class ArrayState(Weighting):
    description = "equal weighting with numpy arrays in its extra state (tests)"

    def __init__(self, config, task_names):
        super().__init__(config, task_names)
        self.history = np.zeros(0)

    def weigh(self, ctx):
        self.history = np.append(self.history, float(ctx.losses.detach().sum()))
        return Weighted(weights=torch.ones_like(ctx.losses.detach()))

    def get_extra_state(self):
        return {"history": self.history, "count": np.int64(len(self.history))}

    def set_extra_state(self, state):
        assert isinstance(state["history"], np.ndarray)
        self.history = state["history"]


class Opaque:
    """An object that weights_only loading refuses (not a tensor, number or container)."""


class UnsavableState(Weighting):
    description = "equal weighting whose extra state cannot be loaded back (tests)"

    def weigh(self, ctx):
        return Weighted(weights=torch.ones_like(ctx.losses.detach()))

    def get_extra_state(self):
        return {"opaque": Opaque()}

    def set_extra_state(self, state):
        pass


@pytest.fixture(scope="module")
def state_methods():
    for name, cls in (("robust_arrays", ArrayState), ("robust_unsavable", UnsavableState)):
        if name not in METHODS:
            register_method(name)(cls)


def test_numpy_method_state_survives_a_resume(tmp_path, state_methods):
    from benchmarks.registry import BENCHMARKS
    from engine.core.run_folder import RunFolder
    from engine.core.trainer import Trainer

    req = request("robust_arrays", overrides=[*TINY_DIGITS, "train.epochs=1"])
    outcome = execute(req, tmp_path, progress=False)
    assert outcome.status == "complete", outcome.reason
    state = C.load_checkpoint(outcome.run_dir, req.identity)
    assert state is not None  # read back, not set aside as unreadable
    assert not list(outcome.run_dir.glob("*.corrupt"))
    cpu = torch.device("cpu")
    benchmark = BENCHMARKS.get("digits_tasks")(req.config.data, None, cpu)
    trainer = Trainer(req.config, benchmark, req.composition, cpu, RunFolder(outcome.run_dir), False,
                      data_fingerprint=req.data_fingerprint)
    trainer.load_state(state)
    history = trainer.primary.history
    assert isinstance(history, np.ndarray) and len(history) == 2  # two steps trained


def test_unsavable_method_state_fails_at_the_first_checkpoint_naming_the_method(
        tmp_path, state_methods):
    outcome = execute(request("robust_unsavable"), tmp_path, progress=False)
    assert outcome.status == "failed" and outcome.user_error
    assert outcome.reason.startswith("method robust_unsavable: its state cannot be saved")
    assert not (outcome.run_dir / R.CHECKPOINT).exists()


def test_portable_round_trip():
    state = {"a": np.arange(3.0), "b": [np.float32(1.5)], "c": (torch.ones(1), "x")}
    back = C.restore(C.portable(state))
    assert isinstance(back["a"], np.ndarray) and back["a"].tolist() == [0.0, 1.0, 2.0]
    assert back["b"] == [1.5] and back["c"][1] == "x"
    C.check_loadable("m", C.portable(state))
    with pytest.raises(UserError, match="method m"):
        C.check_loadable("m", {"x": np.array([object()], dtype=object)})


# --------------------------------------------------------------------------- report

def _report_runs(root: Path, repair: bool = False):
    from analysis.collect import load_runs

    return load_runs(root, repair=repair).set_index("method")


def test_report_marks_missing_epochs_and_repairs_from_the_checkpoint(tmp_path):
    _, run_dir = trained(tmp_path)
    records = read_records(run_dir)
    full = (run_dir / R.METRICS).read_text()
    R.write_jsonl(run_dir / R.METRICS, [r for r in records if r["epoch"] == 0])
    row = _report_runs(tmp_path).loc["ew"]
    assert not row.usable and row.reason.startswith("incomplete")
    assert "missing epoch 1" in row.reason
    row = _report_runs(tmp_path, repair=True).loc["ew"]
    assert row.usable and (run_dir / R.METRICS).read_text() == full
    # Deleted: rewritten too. Without a checkpoint: left out, with the reason.
    (run_dir / R.METRICS).unlink()
    assert _report_runs(tmp_path, repair=True).loc["ew"].usable
    (run_dir / R.METRICS).unlink()
    (run_dir / R.CHECKPOINT).unlink()
    row = _report_runs(tmp_path, repair=True).loc["ew"]
    assert not row.usable and "no checkpoint to repair it from" in row.reason


def test_a_rebuilt_summary_keeps_the_runs_wall_time(tmp_path):
    req, run_dir = trained(tmp_path)
    first = read_summary(run_dir)["wall_time_s"]
    time.sleep(0.05)
    (run_dir / R.SUMMARY).unlink()
    outcome = execute(req, tmp_path, progress=False)  # resumes at its end: nothing to train
    summary = read_summary(run_dir)
    assert outcome.status == "complete" and summary["resumed_from_epoch"] == 2
    # This process trained nothing: the run cost what its last checkpoint recorded.
    recorded = torch.load(run_dir / R.CHECKPOINT, weights_only=True)["wall_time_s"]
    assert summary["wall_time_s"] == recorded <= first
    for damage in ("[]", '{"status": "compl'):  # summary.json not an object, or truncated
        (run_dir / R.SUMMARY).write_text(damage)
        assert execute(req, tmp_path, progress=False).status == "complete"
        assert read_summary(run_dir)["wall_time_s"] == recorded


def test_report_on_an_empty_folder_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no runs" in capsys.readouterr().err


def test_every_name_is_escaped_in_the_html_report(tmp_path):
    from analysis.report import build_report

    _, run_dir = trained(tmp_path)
    crafted = tmp_path / "digits_tasks" / "evil" / run_dir.name
    shutil.copytree(run_dir, crafted)
    summary = read_summary(crafted)
    summary["method"] = "<script>alert('m')</script>"
    summary["notes"] = ["<img src=x onerror=alert(1)>"]
    (crafted / R.SUMMARY).write_text(json.dumps(summary))
    written = build_report(tmp_path, tmp_path / "rep", ("html", "md"),
                           skip=("curves", "spectra", "weights", "conflict", "toy"))
    page = next(p for p in written if p.name == "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(" in page
    assert "<img src=x" not in page


# --------------------------------------------------------------------------- leftovers

def test_temporary_files_are_removed_on_start_and_completion(tmp_path):
    req, run_dir = trained(tmp_path)
    leftover = run_dir / ".checkpoint.pt.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    (run_dir / R.SUMMARY).unlink()
    assert execute(req, tmp_path, progress=False).status == "complete"
    assert not leftover.exists() and not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_a_worker_dies_with_its_parent(tmp_path):
    child_code = ("import sys, time; sys.path.insert(0, sys.argv[1]); "
                  "from engine.runs.executors import die_with_parent; "
                  "die_with_parent(int(sys.argv[2])); print('ready', flush=True); time.sleep(120)")
    parent_code = ("import os, subprocess, sys, time; "
                   f"p = subprocess.Popen([sys.executable, '-c', {child_code!r}, sys.argv[1], "
                   "str(os.getpid())], stdout=subprocess.PIPE, text=True); "
                   "p.stdout.readline(); print(p.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(ROOT)],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0]
    except OSError:
        return False
    return state not in "ZX"


def test_a_sweep_that_leaves_runs_pending_exits_non_zero(tmp_path, capsys):
    from engine.runs.locks import RunLock

    path = tmp_path / "sweep.toml"
    path.write_text('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n'
                    'device = "cpu"\n[set]\n' + "\n".join(
                        f"{k} = {v}" for k, v in dict(o.split("=") for o in TWO_EPOCHS).items())
                    + "\n")
    run_dir = request().dir(tmp_path / "out")
    with RunLock(run_dir):  # another sweep trains it
        code = main(["sweep", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "1 run(s) still pending" in err and "seed0" in err


# --------------------------------------------------------------------------- bad input

def test_plugins_that_fail_on_import_are_one_line_errors(tmp_path, capsys):
    raising = tmp_path / "raising_plugin.py"
    raising.write_text("x = 1 / 0\n")
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("def f(:\n")
    assert main(["list", "--plugin", str(raising)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ZeroDivisionError" in err and "line 1" in err
    assert main(["list", "--plugin", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "syntax error" in err and "broken_plugin.py" in err


def test_a_plugin_failing_inside_a_sweep_worker_fails_that_run(tmp_path):
    import dataclasses

    from engine.runs.executors import Options, run_spec
    from engine.runs.sweep import RunSpec

    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise RuntimeError('no GPU driver here')\n")
    req = request()
    spec = RunSpec("digits_tasks", "ew", 0, "quick", tuple(TWO_EPOCHS), "cpu", None,
                   req.config.hash(), str(req.dir(tmp_path)), (), "")
    result = run_spec(dataclasses.replace(spec, plugins=(str(bad),)), Options(str(tmp_path)))
    assert result.state == "failed" and result.user_error
    assert "no GPU driver here" in result.reason


def test_decompression_bombs_are_refused_naming_the_file(tmp_path, monkeypatch):
    from PIL import Image

    from datasets.image_folders import Entry, ImageItems, check_headers
    from engine.errors import DataError

    Image.new("RGB", (64, 64)).save(tmp_path / "big.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    entry = Entry("big.jpg", 0)
    with pytest.raises(DataError, match="big.jpg: too large to decode safely"):
        check_headers(tmp_path, [entry], 1)
    item = ImageItems(tmp_path, [("t", entry)], 8)[0]
    assert item.image is None and "big.jpg: too large" in item.error


def test_an_unwritable_run_folder_fails_that_run_only(tmp_path):
    blocked = request("ew", overrides=TINY_DIGITS)
    other = request("stl", overrides=TINY_DIGITS)
    (tmp_path / "digits_tasks").mkdir()
    (tmp_path / "digits_tasks" / "ew").write_text("a file where the folder goes")
    outcomes = run_all([blocked, other], tmp_path, force=True, progress=False)
    assert outcomes[0].status == "refused" and "cannot write to run folder" in outcomes[0].reason
    assert outcomes[1].status == "complete"


def test_a_summary_that_is_not_an_object_and_a_lock_that_is_a_folder(tmp_path):
    req, run_dir = trained(tmp_path, overrides=TINY_DIGITS)
    (run_dir / R.SUMMARY).write_text("[1, 2]")
    state = R.run_state(run_dir)
    assert state.status == R.STATUS_UNREADABLE and state.summary == {}
    assert execute(req, tmp_path, progress=False).status == "complete"  # resumed, rewritten
    (run_dir / R.SUMMARY).write_text('"done"')
    (run_dir / "run.lock").unlink()
    (run_dir / "run.lock").mkdir()
    outcome = execute(req, tmp_path, progress=False)
    assert outcome.status == "refused" and "cannot open the lock file" in outcome.reason


def test_non_finite_numbers_are_refused_like_nan():
    from benchmarks.registry import BENCHMARKS, PROFILE_DIR

    bench = BENCHMARKS.get("digits_tasks")
    for override in ("train.lr=inf", "train.lr=nan", "train.weight_decay=-inf",
                     "method.repmtl.lambda_tsr=inf"):
        with pytest.raises(ConfigError, match="finite"):
            resolve("digits_tasks", "repmtl", 0, "quick", [override], bench.Config,
                    {"ew": METHODS.get("ew").Config(), "repmtl": METHODS.get("repmtl").Config()},
                    PROFILE_DIR)
    with pytest.raises(ConfigError, match="finite"):
        check_range("x", float("inf"), 0)
    TrainConfig(lr=0.1).validate()


def test_compositions_have_one_name_however_spelled():
    requests = build_requests("digits_tasks", ["repmtl+pcgrad", "pcgrad+repmtl"], [0], "quick",
                              list(TINY_DIGITS), "cpu", None)
    assert [r.method_name for r in requests] == ["pcgrad+repmtl"]
    (alone,) = build_requests("digits_tasks", ["ew+repmtl"], [0], "quick", list(TINY_DIGITS),
                              "cpu", None)
    assert alone.method_name == "repmtl"


def test_a_repeated_set_key_warns_and_the_last_value_wins(caplog):
    with caplog.at_level("WARNING"):
        req = request(overrides=[*TINY_DIGITS, "train.lr=0.25", "train.lr=0.5"])
    assert req.config.train.lr == 0.5
    assert "--set train.lr is given more than once (0.25, then 0.5)" in caplog.text


def test_a_data_root_for_a_benchmark_that_reads_none_is_refused(tmp_path, capsys):
    assert main(["run", "-b", "digits_tasks", "--data-root", str(tmp_path),
                 "--no-progress"]) == 2
    assert "reads no data from disk" in capsys.readouterr().err


def test_a_run_failing_for_its_data_exits_2(tmp_path, capsys):
    # One file the benchmark reads, so that the run is built (an empty folder is refused
    # before any run) and fails when it loads its data.
    (tmp_path / "data" / "train" / "image").mkdir(parents=True)
    (tmp_path / "data" / "train" / "image" / "0.npy").write_bytes(b"")
    code = main(["run", "-b", "nyuv2", "-m", "ew", "--data-root", str(tmp_path / "data"),
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and "failed" in captured.err and "missing folder" in captured.err


def test_one_function_says_what_state_a_run_is_in(tmp_path):
    run_dir = tmp_path / "run"
    assert R.run_state(run_dir).status == R.STATUS_ABSENT
    run_dir.mkdir()
    (run_dir / R.SUMMARY).write_text("{not json")
    assert R.run_state(run_dir).status == R.STATUS_UNREADABLE
    (run_dir / R.SUMMARY).write_text('{"status": "running"}')
    running = R.run_state(run_dir)
    assert not running.final and "interrupted" in running.reason
    (run_dir / R.SUMMARY).write_text('{"status": "failed", "reason": "bad data", "user_error": true}')
    failed = R.run_state(run_dir)
    assert failed.final and failed.user_error and failed.reason == "bad data"
