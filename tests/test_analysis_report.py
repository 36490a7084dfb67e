"""The report end to end on a synthetic results folder with every file runs write, plus bad
input (failed, running, corrupt runs): files written, runs left out with reasons, no crash."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.collect import load_runs
from analysis.conflict import conflict_summary, load_conflicts
from analysis.report import build_report
from analysis.toy import load_trajectories, raw_losses
from engine.cli import main
from tests.test_analysis_support import const, write_run

TASKS = {("a", "acc"): (True, "%"), ("b", "err"): (False, "")}


def _extras(seed: int, cos: float):
    steps = np.arange(10, 2001, 10)
    mid = steps - 4.5  # a record is the mean loss of its 10 steps: it sits at their midpoint
    curve = [{"step": int(s), "epoch": int(s // 1000), "losses": {"a": 2 * m ** -0.5 + 0.1,
                                                                  "b": 3 * m ** -0.3 + 0.2}}
             for s, m in zip(steps, mid)]
    conflict = [{"step": int(s), "epoch": 0, "space": "param",
                 "cosine": {"a|b": cos + 0.001 * i}, "norms": {"a": 1.0, "b": 4.0}}
                for i, s in enumerate(range(10, 110, 10))]
    torch.manual_seed(seed)
    model = {"encoders.0.fc.weight": torch.randn(64, 80), "heads.a.fc.weight": torch.randn(60, 64),
             "heads.b.fc.weight": torch.randn(60, 64)}
    return {"curve": curve, "conflict": conflict, "model": model}


@pytest.fixture()
def results(tmp_path):
    root = tmp_path / "results"
    for seed in (0, 1):
        write_run(root, "bench", "stl", seed, {("a", "acc"): const(80 + seed), ("b", "err"): const(2.0)},
                  tasks=TASKS, config_hash="s", **_extras(seed, 0.5))
        write_run(root, "bench", "ew", seed, {("a", "acc"): const(78 + seed), ("b", "err"): const(2.2)},
                  tasks=TASKS, config_hash="e", weights=[{"a": 1.0, "b": 1.0}] * 3,
                  **_extras(seed, -0.2))
        write_run(root, "bench", "uw", seed, {("a", "acc"): const(82 + seed), ("b", "err"): const(1.9)},
                  tasks=TASKS, config_hash="u",
                  weights=[{"a": 0.5 + 0.1 * e, "b": 1.5 - 0.1 * e} for e in range(3)],
                  **_extras(seed, 0.1))
    # bad input of every kind
    write_run(root, "bench", "mgda", 0, {("a", "acc"): const(1.0)}, tasks=TASKS, status="failed",
              reason="RuntimeError: solver exploded")
    write_run(root, "bench", "mgda", 1, {("a", "acc"): const(1.0)}, tasks=TASKS, status="diverged",
              reason="non-finite loss of a at step 3 (epoch 0)")
    write_run(root, "bench", "cagrad", 0, {("a", "acc"): const(1.0)}, tasks=TASKS, status="running")
    bad = write_run(root, "bench", "pcgrad", 0, {("a", "acc"): const(1.0)}, tasks=TASKS)
    (bad / "summary.json").write_text("{not json")
    torn = write_run(root, "bench", "graddrop", 0, {("a", "acc"): const(1.0)}, tasks=TASKS)
    with open(torn / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "split": "te')
    empty = write_run(root, "bench", "imtl", 0, {("a", "acc"): const(1.0)}, tasks=TASKS)
    (empty / "metrics.jsonl").write_text("")
    broken = write_run(root, "bench", "dwa", 0, {("a", "acc"): const(70.0), ("b", "err"): const(2.0)},
                       tasks=TASKS, model={"encoders.0.fc.weight": torch.randn(64, 80)})
    (broken / "checkpoint.pt").write_bytes(b"garbage")
    (broken / "conflict.jsonl").write_text("nope\n")
    # toy trajectories: a shared point (ew) and one point per encoder (stl)
    toy_tasks = {("L1", "value"): (False, ""), ("L2", "value"): (False, "")}
    path = [{"step": i, "point": [-8.5 + 0.5 * i, 7.5 - 1.5 * i], "losses": [0.0, 0.0]} for i in range(11)]
    write_run(root, "toy2d", "ew", 0, {k: const(1.0) for k in toy_tasks}, tasks=toy_tasks, trajectory=path)
    path2 = [{"step": i, "point": [9 - i, 9 - 1.7 * i, -8 + i, 9 - 1.7 * i], "losses": [0.0, 0.0]} for i in range(11)]
    write_run(root, "toy2d", "stl", 0, {k: const(1.0) for k in toy_tasks}, tasks=toy_tasks, trajectory=path2)
    return root


def test_bad_runs_are_listed_with_reasons(results):
    runs = load_runs(results).set_index("method")
    assert not runs.loc["mgda"].usable.any()
    assert runs.loc["pcgrad", "status"] == "corrupt" and "summary.json" in runs.loc["pcgrad", "reason"]
    assert "corrupt" in runs.loc["graddrop", "reason"] and not runs.loc["graddrop", "usable"]
    assert runs.loc["imtl", "reason"] == "metrics.jsonl has no test metrics"
    assert runs.loc["cagrad", "status"] == "running"
    assert runs.loc["dwa", "usable"]


def test_conflict_statistics(results):
    steps, _pairs, problems = load_conflicts(load_runs(results))
    s = conflict_summary(steps).set_index("method")
    assert s.loc["ew", "conflict_fraction"] == 1.0 and s.loc["uw", "conflict_fraction"] == 0.0
    assert s.loc["ew", "norm_ratio"] == pytest.approx(4.0)
    assert s.loc["stl", "mean_cosine"] == pytest.approx(0.5 + 0.001 * 4.5)
    assert s.loc["ew", "seeds"] == 2
    assert any("conflict.jsonl" in p for p in problems.values())


def test_toy_trajectories(results):
    traj, problems = load_trajectories(load_runs(results))
    assert set(traj) == {"ew", "stl"} and not problems
    pts = traj["stl"][0][1]
    losses = raw_losses(pts)
    single = raw_losses(pts[:, :2])
    other = raw_losses(pts[:, 2:])
    np.testing.assert_allclose(losses[:, 0], single[:, 0])
    np.testing.assert_allclose(losses[:, 1], other[:, 1])
    # L1 at the start (-8.5, 7.5) from the toy's formula, by hand
    x1, x2 = -8.5, 7.5
    g1 = np.log(max(abs(0.5 * (-x1 - 7) - np.tanh(-x2)), 5e-6)) + 6
    h1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    l1 = max(np.tanh(x2 / 2), 0) * g1 + max(np.tanh(-x2 / 2), 0) * h1
    assert raw_losses(traj["ew"][0][1])[0, 0] == pytest.approx(l1)


@pytest.mark.slow
def test_report_files(results, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(results), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for section in ("Comparison: bench", "Negative transfer: bench", "Cost: bench", "Task weights: bench",
                    "Gradient conflict: bench (param space)", "Power laws of the training curves: bench",
                    "Weight spectra: bench", "Trajectories: toy2d", "Runs left out"):
        assert section in md, section
    assert "test metrics at the last epoch" in md
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"negative_transfer_bench", "weights_bench", "conflict_bench_param",
            "conflict_pairs_bench_param",
            "curves_bench", "alpha_bench", "esd_bench", "toy_params_toy2d",
            "toy_losses_toy2d"} <= figures
    assert all((out / "figures" / f"{s}.pdf").exists() for s in figures)
    # self-contained: every figure embedded, no links to files
    assert html.count("data:image/png;base64,") == len(re.findall(r"!\[", md))
    assert "src='figures" not in html
    comp = pd.read_csv(out / "tables" / "comparison_bench.csv", index_col="method")
    assert list(comp.index) == ["stl", "dwa", "ew", "uw"]
    assert comp.loc["uw", "a_acc"] == 82.5 and comp.loc["uw", "seeds"] == 2
    assert comp.loc["ew", "delta_p_task"] == pytest.approx(
        100 * ((78.5 - 80.5) / 80.5 - (2.2 - 2.0) / 2.0) / 2)
    tex = (out / "tables" / "comparison_bench.tex").read_text()
    assert r"\textbf{" in tex and r"\underline{" not in tex  # best bold; no untested "second"
    assert r"\resizebox" not in tex
    for path in (out / "tables").glob("*.tex"):  # pdflatex-safe: symbols become LaTeX
        assert path.read_text().isascii(), path.name
    left = pd.read_csv(out / "tables" / "left_out.csv")
    assert set(left.method) == {"mgda", "cagrad", "pcgrad", "graddrop", "imtl"}
    assert "solver exploded" in " ".join(left.reason)
    assert len(left) == 6
    problems = pd.read_csv(out / "tables" / "unreadable_files.csv")
    assert any("checkpoint.pt" in p for p in problems.problem)
    cost = pd.read_csv(out / "tables" / "cost_bench.csv").set_index("method")
    assert cost.loc["ew", "step_time_ms"] == pytest.approx(10.0) and cost.loc["ew", "seeds"] == 2
    assert cost.loc["ew", "peak_memory_mib"] == pytest.approx(1 / 2 ** 20)
    fits = pd.read_csv(out / "tables" / "curve_fits_bench.csv").set_index(["method", "task"])
    assert fits.loc[("ew", "a"), "alpha"] == pytest.approx(0.5, rel=0.03)
    assert fits.loc[("ew", "b"), "alpha"] == pytest.approx(0.3, rel=0.03)


@pytest.mark.slow
def test_report_formats_and_options(results, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(results), "--out", str(out), "--format", "md,csv", "-b", "bench",
                 "--skip", "spectra,curves,conflict", "--select", "last_k", "--k", "2"]) == 0
    assert (out / "report.md").exists() and not (out / "report.html").exists()
    assert not list((out / "tables").glob("*.tex"))
    md = (out / "report.md").read_text()
    assert "averaged over the last 2 epochs" in md and "Weight spectra" not in md
    assert "toy2d" not in md
    with pytest.raises(SystemExit):
        main(["report", str(results), "--format", "docx"])
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_report_of_an_empty_folder(tmp_path):
    written = build_report(tmp_path, tmp_path / "rep")
    assert (tmp_path / "rep" / "report.md") in written
    assert "None: every run folder" in (tmp_path / "rep" / "report.md").read_text()


def test_summary_json_is_not_an_object(tmp_path):
    run = write_run(tmp_path, "bench", "ew", 0, {("a", "acc"): const(1.0)}, tasks=TASKS)
    (run / "summary.json").write_text(json.dumps([1, 2]))
    assert load_runs(tmp_path).status.tolist() == ["corrupt"]


def test_metric_without_direction_is_corrupt(tmp_path):
    write_run(tmp_path, "bench", "ew", 0, {("a", "acc"): const(1.0), ("z", "new"): const(2.0)},
              tasks=TASKS)
    runs = load_runs(tmp_path)
    assert runs.status.tolist() == ["corrupt"]
    assert "no direction for metric z.new" in runs.reason.iloc[0]


def test_published_vs_reproduced_in_the_report(tmp_path):
    tasks = {("seg", "miou"): (True, "%"), ("seg", "pixacc"): (True, "%"),
             ("depth", "abs_err"): (False, ""), ("depth", "rel_err"): (False, "")}
    for seed, miou in enumerate([69.5, 69.9]):
        write_run(tmp_path / "res", "cityscapes", "repmtl", seed,
                  {("seg", "miou"): [miou], ("seg", "pixacc"): [91.85], ("depth", "abs_err"): [0.0127],
                   ("depth", "rel_err"): [0.4342]}, tasks=tasks)
    out = tmp_path / "rep"
    build_report(tmp_path / "res", out, ("md", "csv"),
                 skip=("weights", "conflict", "curves", "spectra", "toy"))
    md = (out / "report.md").read_text()
    assert "Published vs reproduced: cityscapes" in md and "published STL row" in md
    diff = pd.read_csv(out / "tables" / "published_vs_reproduced_cityscapes.csv")
    ours, pub, delta = diff.iloc[0], diff.iloc[1], diff.iloc[2]
    assert (ours["values"], pub["values"], delta["values"]) == ("ours", "published", "difference")
    # Rep-MTL (EW) printed: 69.72, 91.85, 0.01270, 43.42 (rel_err in %), Δp_task +0.62
    assert ours["seg miou"] == pytest.approx(69.7) and pub["seg miou"] == 69.72
    assert delta["seg miou"] == pytest.approx(69.7 - 69.72)
    assert ours["depth rel_err"] == pytest.approx(43.42) and delta["depth rel_err"] == pytest.approx(0)
    assert pub["Δp_task (%)"] == 0.62
    published = pd.read_csv(out / "tables" / "published_cityscapes.csv").set_index("method")
    assert published.loc["Rep-MTL (EW)", "Δp_task recomputed"] == pytest.approx(0.62, abs=0.006)
    assert published.loc["Rep-MTL (EW)", "Δp_task printed"] == 0.62
