"""A run's identity (config hash, seed, data fingerprint): what the fingerprint covers, and
that every record of a folder and its checkpoint are checked against it, by resume and by
the report's repair alike."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core import identity
from engine.core import results as R
from engine.cli import main
from engine.runs.runner import build_requests, execute
from tests.helpers import TINY_DIGITS, read_records, read_summary

TWO_EPOCHS = [*TINY_DIGITS, "train.epochs=2"]
TINY_DENSE = ["train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=2",
              "data.head_channels=8", "data.aspp_rates=[1,2]", "data.workers=1",
              "data.val_fraction=0.25", "data.height=24", "data.width=32"]


def dense_folder(root: Path, n: int = 4, seed: int = 0) -> Path:
    """ROOT/{train,val}/{image,label,depth,normal}/<i>.npy, as the NYUv2 reader expects."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for kind, shape in (("image", (24, 32, 3)), ("label", (24, 32)), ("depth", (24, 32, 1)),
                            ("normal", (24, 32, 3))):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if kind == "label":
                    value = rng.integers(0, 13, shape).astype(np.float32)
                elif kind == "normal":
                    value = rng.normal(size=shape)
                    value = value / np.linalg.norm(value, axis=-1, keepdims=True)
                else:
                    value = rng.random(shape).astype(np.float32)
                np.save(root / split / kind / f"{i}.npy", np.asarray(value, np.float32))
    return root


def nyuv2_fingerprint(data: Path, out: Path | None = None) -> str:
    identity._files_cache.clear()  # the data change within this process
    (request,) = build_requests("nyuv2", ["ew"], [0], "quick", [], "cpu", str(data), out=out)
    return request.data_fingerprint


def trained(out: Path, seed: int = 0):
    (request,) = build_requests("digits_tasks", ["ew"], [seed], "quick", list(TWO_EPOCHS),
                                "cpu", None)
    outcome = execute(request, out, progress=False)
    assert outcome.status == "complete", outcome.reason
    return request, outcome.run_dir


def report(root: Path, capsys) -> tuple[int, str, str]:
    code = main(["report", str(root), "--format", "md", "--skip",
                 "curves,spectra,weights,conflict,toy,transfer"])
    captured = capsys.readouterr()
    md = (root / "report" / "report.md").read_text() if code == 0 else ""
    return code, md, captured.err


# --------------------------------------------------------------------------- fingerprint

def test_a_symlinked_split_counts_and_a_link_loop_ends(tmp_path):
    disk_a = dense_folder(tmp_path / "disk_a", seed=0)
    disk_b = dense_folder(tmp_path / "disk_b", n=5, seed=1)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train").symlink_to(disk_a / "train", target_is_directory=True)
    (data / "val").symlink_to(disk_a / "val", target_is_directory=True)
    (disk_a / "val" / "image" / "loop").symlink_to(data, target_is_directory=True)
    first = nyuv2_fingerprint(data)
    assert first == nyuv2_fingerprint(disk_a)  # what the links point to, as if copied there
    (data / "train").unlink()
    (data / "train").symlink_to(disk_b / "train", target_is_directory=True)
    assert nyuv2_fingerprint(data) != first


@pytest.mark.slow
def test_notes_and_results_beside_the_data_leave_the_fingerprint_alone(tmp_path, capsys):
    data = dense_folder(tmp_path / "data")
    out = data / "results"  # --out inside --data-root
    command = ["run", "-b", "nyuv2", "-m", "ew", "--data-root", str(data), "--out", str(out),
               "--device", "cpu", "--no-progress", *[a for o in TINY_DENSE for a in ("--set", o)]]
    assert main(command) == 0, capsys.readouterr().err
    (data / "NOTES.txt").write_text("where these arrays come from\n")
    (data / ".DS_Store").write_bytes(b"\0")
    (data / "train" / "README.md").write_text("train split\n")
    capsys.readouterr()
    identity._files_cache.clear()  # as a new process would
    assert main(command) == 0
    assert "already complete" in capsys.readouterr().err
    # A benchmark that reads every file (a plugin's default) still leaves the results out.
    everything = identity.files_fingerprint(data, exclude=out)
    (out / "more.txt").write_text("written by a later run\n")
    assert identity.files_fingerprint(data, exclude=out) == everything
    # What the benchmark reads still counts.
    before = nyuv2_fingerprint(data, out)
    np.save(data / "val" / "depth" / "0.npy", np.zeros((24, 32, 1), np.float32))
    assert nyuv2_fingerprint(data, out) != before


# --------------------------------------------------------------------------- records

def test_a_missing_config_leaves_the_summary_to_check(tmp_path):
    request, run_dir = trained(tmp_path)
    (run_dir / R.CONFIG).unlink()
    summary = read_summary(run_dir)
    summary["data_fingerprint"] = "files:0123456789abcdef"  # trained on other data
    (run_dir / R.SUMMARY).write_text(json.dumps(summary))
    outcome = execute(request, tmp_path, progress=False)
    assert outcome.status == "refused" and outcome.user_error
    assert "data fingerprint files:0123456789abcdef" in outcome.reason


def test_a_missing_config_still_checks_the_epochs_in_the_report(tmp_path, capsys):
    _, run_dir = trained(tmp_path)
    (run_dir / R.CONFIG).unlink()
    (run_dir / R.CHECKPOINT).unlink()
    R.write_jsonl(run_dir / R.METRICS, [r for r in read_records(run_dir) if r["epoch"] == 0])
    code, md, _ = report(tmp_path, capsys)
    assert code == 0 and "0 usable runs, 1 left out" in md
    assert "missing epoch 1" in md


# --------------------------------------------------------------------------- repair

def test_the_report_repairs_nothing_from_another_seeds_checkpoint(tmp_path, capsys):
    _, seed1 = trained(tmp_path, seed=1)
    _, seed0 = trained(tmp_path, seed=0)
    shutil.copy(seed1 / R.CHECKPOINT, seed0 / R.CHECKPOINT)
    (seed0 / R.METRICS).unlink()
    code, md, _ = report(tmp_path, capsys)
    assert code == 0 and "1 usable runs, 1 left out" in md
    assert "belongs to seed 1, not 0" in md
    assert not (seed0 / R.METRICS).exists()


def test_the_report_repairs_nothing_from_a_checkpoint_of_other_data(tmp_path, capsys):
    _, run_dir = trained(tmp_path)
    state = torch.load(run_dir / R.CHECKPOINT, weights_only=True)
    state["data_fingerprint"] = "files:0123456789abcdef"
    torch.save(state, run_dir / R.CHECKPOINT)
    (run_dir / R.METRICS).unlink()
    code, md, _ = report(tmp_path, capsys)
    assert code == 0 and "0 usable runs, 1 left out" in md and "other data" in md
    assert not (run_dir / R.METRICS).exists()


def test_a_string_metric_in_the_checkpoint_is_not_written_back(tmp_path, capsys):
    _, run_dir = trained(tmp_path)
    state = torch.load(run_dir / R.CHECKPOINT, weights_only=True)
    test = next(r for r in state["records"] if r["split"] == "test" and r["epoch"] == 1)
    task = next(iter(test["metrics"]))
    metric = next(iter(test["metrics"][task]))
    test["metrics"][task][metric] = "high"
    torch.save(state, run_dir / R.CHECKPOINT)
    (run_dir / R.METRICS).unlink()
    code, md, err = report(tmp_path, capsys)
    assert code == 0 and "Traceback" not in err
    assert "0 usable runs, 1 left out" in md and f"{task}.{metric} is 'high', not a number" in md
    assert not (run_dir / R.METRICS).exists()


@pytest.mark.parametrize("what", ["config_hash", "epoch"])
def test_the_report_repairs_nothing_from_another_config_or_epoch(tmp_path, capsys, what):
    _, run_dir = trained(tmp_path)
    state = torch.load(run_dir / R.CHECKPOINT, weights_only=True)
    state[what] = "0000000000" if what == "config_hash" else 0
    torch.save(state, run_dir / R.CHECKPOINT)
    (run_dir / R.METRICS).unlink()
    code, md, _ = report(tmp_path, capsys)
    assert code == 0 and "0 usable runs, 1 left out" in md
    expected = "config 0000000000, not" if what == "config_hash" else "not of the last epoch"
    assert expected in md
