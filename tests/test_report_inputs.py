"""The report on hostile or damaged results: text from run folders never becomes markup,
bad output folders are one-line errors before anything is written, and what the report
leaves out or cannot average is said."""
from __future__ import annotations

import json
import pathlib
import re
from pathlib import Path

import pytest
import torch

from analysis.markup import escape
from engine.cli import main
from tests.test_analysis_support import const, write_run

TASKS = {("a", "acc"): (True, "%"), ("b", "err"): (False, "")}
SKIP = ["--skip", "curves,spectra,weights,conflict,toy"]


def report(root: Path, *args: str) -> int:
    return main(["report", str(root), *args])


def repairable(root: Path) -> Path:
    """A complete run whose metrics.jsonl is gone and whose checkpoint could restore it."""
    run_dir = write_run(root, "bench", "ew", 0, {k: const(1.0) for k in TASKS}, tasks=TASKS)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    torch.save({"epoch": 2, "config_hash": "h0", "seed": 0, "records": records},
               run_dir / "checkpoint.pt")
    (run_dir / "metrics.jsonl").unlink()
    return run_dir


# --------------------------------------------------------------------------- escaping

PAYLOADS = {
    "benchmark": "bench<script>B()",
    "method": "m<iframe src=M>[x](javascript:M)",
    "task": "t<object data=T>",
    "metric": "k<svg onload=K>|k",
    "reason": "failed <script>R()\n\n# heading\n- item",
    "folder": "h<a href=F>",
    "setting": "<iframe src=S>",
}


@pytest.mark.slow
def test_every_field_from_the_runs_is_escaped_in_markdown_and_html(tmp_path):
    root = tmp_path / "results"
    bench, method = PAYLOADS["benchmark"], PAYLOADS["method"]
    tasks = {(PAYLOADS["task"], PAYLOADS["metric"]): (True, "%"), ("b", "err"): (False, "")}
    for seed in (0, 1):
        write_run(root, bench, "stl", seed, {k: const(80.0 + seed) for k in tasks}, tasks=tasks,
                  config_hash="s")
        for i, value in enumerate(("plain", PAYLOADS["setting"])):
            write_run(root, bench, method, seed, {k: const(70.0 + seed + i) for k in tasks},
                      tasks=tasks, config_hash=f"c{i}", data={"seed": 0, "name": value})
    write_run(root, bench, "mgda", 0, {k: const(1.0) for k in tasks}, tasks=tasks,
              status="failed", reason=PAYLOADS["reason"], config_hash=PAYLOADS["folder"])
    assert report(root, "--out", str(tmp_path / "rep"), "--format", "md,html",
                  "--skip", "curves,spectra,conflict,toy") == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    for field, payload in PAYLOADS.items():
        for line in payload.splitlines():
            assert escape(line, "md") in md, field
            assert escape(line, "html") in page, field
    for text in (md, page):
        for tag in ("<script", "<iframe", "<object", "<svg", "<a href"):  # none the report uses
            assert tag not in text
    assert "](javascript:" not in md.replace("\\](javascript:", "")
    assert "\n# heading" not in md and "\n- item" not in md
    # A pipe in a name never adds a column: every row of a table has the header's cells.
    for table in re.findall(r"(?:^\|.*\|\n)+", md, flags=re.M):
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in table.splitlines()}
        assert len(widths) == 1, table


# --------------------------------------------------------------------------- output folder

def test_an_output_that_is_a_file_is_refused_before_anything_is_written(tmp_path, capsys):
    root = tmp_path / "results"
    run_dir = repairable(root)
    target = tmp_path / "report.txt"
    target.write_text("not a folder")
    assert report(root, "--out", str(target)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err
    assert not (run_dir / "metrics.jsonl").exists()  # not repaired either


def test_a_read_only_results_folder_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                          monkeypatch):
    root = tmp_path / "results"
    run_dir = repairable(root)
    real_mkdir, real_write = pathlib.Path.mkdir, pathlib.Path.write_text

    def read_only(real):
        # What a process that may not write there sees (root ignores permission bits).
        def guarded(self, *args, **kwargs):
            if str(self).startswith(str(root)):
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)
        return guarded

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only(real_mkdir))
    monkeypatch.setattr(pathlib.Path, "write_text", read_only(real_write))
    assert report(root) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and "--out" in err
    assert not (run_dir / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- what is said

def test_non_finite_metric_values_are_reported(tmp_path):
    root = tmp_path / "results"
    write_run(root, "bench", "stl", 0, {("a", "acc"): const(80.0), ("b", "err"): const(2.0)},
              tasks=TASKS)
    write_run(root, "bench", "ew", 0, {("a", "acc"): [70.0, None, 71.0],
                                       ("b", "err"): [2.0, 2.0, "inf"]}, tasks=TASKS)
    assert report(root, "--format", "md", *SKIP) == 0
    md = (root / "report" / "report.md").read_text()
    assert "1 usable run(s) have non-finite metric values" in md
    section = md[md.index("## Non-finite metric values"):]
    assert re.search(r"\| test \| a \| acc \| 1 \|", section)
    assert re.search(r"\| test \| b \| err \| 2 \|", section)


@pytest.mark.slow
def test_runs_without_a_checkpoint_are_named_in_the_spectra_section(tmp_path):
    root = tmp_path / "results"
    model = {"encoders.0.fc.weight": torch.randn(64, 80), "heads.a.fc.weight": torch.randn(60, 64)}
    for method in ("stl", "ew"):
        write_run(root, "bench", method, 0, {k: const(1.0) for k in TASKS}, tasks=TASKS,
                  model=model if method == "stl" else None)
    assert report(root, "--format", "md", "--skip", "curves,weights,conflict,toy") == 0
    md = (root / "report" / "report.md").read_text()
    assert "Weight spectra: bench" in md
    assert re.search(r"ew/seed0-h0 \| no checkpoint\.pt: left out of the weight spectra", md)
