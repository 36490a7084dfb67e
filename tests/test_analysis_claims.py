"""What the analysis claims: selection rules named for what they do, published comparisons
like for like (or warned), tests named and corrected, honest intervals, identified fits,
readable spectra. Expected values are recomputed independently (by hand, scipy, powerlaw)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.reference import clean, decimals, load_published, paper_protocol
from analysis.report import build_report
from analysis.table import comparisons
from tests.test_analysis_support import write_run

A, ERR = ("a", "acc"), ("b", "err")
TASKS = {A: (True, "%"), ERR: (False, "")}
CITY = {("seg", "miou"): (True, "%"), ("seg", "pixacc"): (True, "%"),
        ("depth", "abs_err"): (False, ""), ("depth", "rel_err"): (False, "")}
ONLY_TABLES = ("weights", "conflict", "curves", "spectra", "toy", "transfer", "cost")


def _dp(row, base, higher):
    """Δp_task by hand (one metric per task here)."""
    return np.mean([(1 if h else -1) * (r - b) / b for r, b, h in zip(row, base, higher)]) * 100


def test_best_test_dp_takes_the_best_test_delta_vs_the_first_epoch(tmp_path):
    test = {A: [50, 60, 55, 70], ERR: [1.0, 0.8, 0.5, 1.6]}
    write_run(tmp_path, "bench", "ew", 0, test, tasks=TASKS,
              val={A: [50, 90, 50, 50], ERR: [1.0, 1.0, 1.0, 1.0]})
    rows = list(zip(test[A], test[ERR]))
    scores = [_dp(r, rows[0], [True, False]) for r in rows]
    best = int(np.argmax(scores))  # epoch 2: +5% on a, +50% on b
    assert best == 2
    (table,), _ = comparisons(tmp_path, "best_test_dp")
    assert table.mean.loc["ew", A] == test[A][best]
    assert table.test_selected and "TEST-SELECTED" in table.note()
    (table,), _ = comparisons(tmp_path, "best_val_dp")
    assert table.mean.loc["ew", A] == 60 and not table.test_selected  # epoch 1 best on val
    (table,), _ = comparisons(tmp_path, "last")
    assert "TEST-SELECTED" not in table.note()


def test_best_test_dp_keeps_the_earliest_of_equal_epochs(tmp_path):
    # LibMTL replaces the best only when strictly better
    write_run(tmp_path, "bench", "ew", 0, {A: [50, 60, 60], ERR: [1.0, 1.0, 1.0]}, tasks=TASKS)
    write_run(tmp_path, "bench", "pcgrad", 0, {A: [50, 40, 45], ERR: [1.0, 1.0, 1.0]}, tasks=TASKS)
    (table,), _ = comparisons(tmp_path, "best_test_dp")
    assert table.mean.loc["ew", A] == 60 and table.mean.loc["pcgrad", A] == 50


def test_best_test_dp_never_picks_an_epoch_with_a_missing_metric(tmp_path):
    """Epoch 2 has no value for a: it is not eligible, and a's other epochs still count
    (dropping the metric instead would pick epoch 2, by b alone)."""
    test = {A: [50, 60, float("nan"), 55], ERR: [1.0, 1.0, 0.5, 0.5]}
    write_run(tmp_path, "bench", "ew", 0, test, tasks=TASKS)
    (table,), _ = comparisons(tmp_path, "best_test_dp")
    # epoch 1: (+20% + 0) / 2 = 10; epoch 3: (+10% + 50%) / 2 = 30
    assert table.mean.loc["ew", A] == 55 and table.mean.loc["ew", ERR] == 0.5


def test_libmtl_protocol_with_validation_selection_is_test_selected(tmp_path):
    write_run(tmp_path, "bench", "ew", 0, {A: [1, 2], ERR: [1.0, 1.0]}, tasks=TASKS,
              protocol="libmtl")
    assert comparisons(tmp_path, "best_val")[0][0].test_selected
    assert not comparisons(tmp_path, "last")[0][0].test_selected


def test_clean_and_decimals():
    assert clean(-1.7e-18, 4) == 0.0 and str(clean(-1e-9, 2)) == "0.0"
    assert clean(0.12345, 2) == 0.12
    assert (decimals("0.01282"), decimals("69"), decimals("-1.70")) == (5, 0, 2)


def test_paper_protocols():
    assert paper_protocol("NYUv2").rule == "best_test_dp"
    assert paper_protocol("office-31").rule == "best_val_dp"
    assert paper_protocol("digits_tasks") is None


def _city_runs(root, epochs=2, profile=None):
    for seed, miou in enumerate([69.5, 69.9]):
        run = write_run(root, "cityscapes", "repmtl", seed,
                        {("seg", "miou"): [60.0] * (epochs - 1) + [miou],
                         ("seg", "pixacc"): [91.85] * epochs, ("depth", "abs_err"): [0.0127] * epochs,
                         ("depth", "rel_err"): [0.4342] * epochs}, tasks=CITY)
        if profile:
            import json
            cfg = json.loads((run / "config.json").read_text())
            cfg.update(profile=profile)
            cfg["data"]["protocol"] = "libmtl"
            (run / "config.json").write_text(json.dumps(cfg))


@pytest.mark.slow
def test_published_vs_reproduced_states_and_warns(tmp_path):
    _city_runs(tmp_path / "res")
    out = tmp_path / "rep"
    build_report(tmp_path / "res", out, ("md", "csv"), skip=ONLY_TABLES)
    md = (out / "report.md").read_text()
    assert "Warning: not like for like" in md
    assert "profile quick (paper: paper)" in md and "2 epochs (paper: 200)" in md
    assert "TEST-SELECTED" in md and "(rule best_test_dp)" in md
    assert "69.70 ± 0.28" in md and "seg miou (%) ↑" in md and "depth abs_err ↓" in md
    assert "+0.62 ± 0.53" in md  # the published Δp_task std
    diff = pd.read_csv(out / "tables" / "published_vs_reproduced_cityscapes.csv")
    d = diff[diff["values"] == "difference"].iloc[0]
    assert d["depth rel_err"] == 0.0 and d["seg miou"] == pytest.approx(-0.02)
    assert d["seg miou_std"] != d["seg miou_std"]  # NaN: a difference has no std here
    # the published rule picks the best test epoch, not the last one
    ours = diff[diff["values"] == "ours"].iloc[0]
    assert ours["seg miou"] == pytest.approx(69.7)


@pytest.mark.slow
def test_published_vs_reproduced_of_a_like_run_has_no_warning(tmp_path):
    _city_runs(tmp_path / "res", epochs=200, profile="paper")
    out = tmp_path / "rep"
    build_report(tmp_path / "res", out, ("md",), skip=ONLY_TABLES)
    md = (out / "report.md").read_text()
    assert "Published vs reproduced" in md and "not like for like" not in md
    build_report(tmp_path / "res", out, ("md",), skip=ONLY_TABLES, published_rule="last")
    assert "selection last (paper: best_test_dp)" in (out / "report.md").read_text()


def test_published_table_loads_printed_cells():
    pub = load_published("cityscapes")
    assert pub.printed.loc["STL", "depth_abs_err"] == "0.01282"


def _transfer_runs(root, stl=True):
    tasks = {("a", "acc"): (True, "%"), ("c", "acc"): (True, "%"), ("d", "acc"): (True, "%")}
    if stl:
        for seed, (a, c, d) in enumerate([(80, 50, 40), (82, 51, 41), (81, 49, 39)]):
            write_run(root, "bench", "stl", seed, {("a", "acc"): [a], ("c", "acc"): [c],
                                                   ("d", "acc"): [d]}, tasks=tasks)
    for seed, (a, c, d) in enumerate([(70, 50.5, 38.0), (71, 49.5, 39.5), (72, 50.2, 38.4)]):
        write_run(root, "bench", "ew", seed, {("a", "acc"): [a], ("c", "acc"): [c],
                                              ("d", "acc"): [d]}, tasks=tasks)
    for seed, (a, c, d) in enumerate([(79, 48.0, 40.5), (80.5, 49.0, 39.0), (80, 48.6, 40.1)]):
        write_run(root, "bench", "pcgrad", seed, {("a", "acc"): [a], ("c", "acc"): [c],
                                                  ("d", "acc"): [d]}, tasks=tasks)


@pytest.mark.parametrize("correction", ["holm", "bh", "none"])
def test_negative_transfer_tests_are_named_and_corrected(tmp_path, correction):
    from scipy import stats

    from analysis.transfer import WELCH, negative_transfer, tests_description
    _transfer_runs(tmp_path)
    (table,), _ = comparisons(tmp_path)
    report = negative_transfer(table, correction=correction)
    assert set(report.test) == {WELCH}
    per_seed = table.per_seed
    p = []
    for row in report.itertuples():
        col = (row.task, "acc")
        base = per_seed.xs("stl", level="row")[col]
        r = 100 * (per_seed.xs(row.method, level="row")[col] - base.mean()) / base.mean()
        ref = 100 * (base - base.mean()) / base.mean()
        p.append(stats.ttest_ind(r, ref, equal_var=False).pvalue)
    assert report.p.to_numpy() == pytest.approx(p)
    if correction == "holm":
        m = len(p)
        order = np.argsort(p)
        adj = np.minimum(np.maximum.accumulate(np.array(p)[order] * (m - np.arange(m))), 1)
        want = np.empty(m)
        want[order] = adj
    elif correction == "bh":
        want = stats.false_discovery_control(p, method="bh")
    else:
        want = np.array(p)
    assert report.p_adjusted.to_numpy() == pytest.approx(want)
    assert list(report.significant_negative) == [bool(c < 0 and q < 0.05) for c, q in
                                                 zip(report.change_pct, want)]
    text = tests_description(report)
    assert "Welch" in text and f"over {len(p)} tests" in text
    assert {"holm": "Holm", "bh": "Benjamini–Hochberg", "none": "no correction"}[correction] in text


def test_published_baseline_runs_a_one_sample_test_and_says_so(tmp_path):
    from scipy import stats

    from analysis.transfer import ONE_SAMPLE, negative_transfer, tests_description
    for seed, miou in enumerate([60.0, 61.0, 62.5]):
        write_run(tmp_path, "cityscapes", "ew", seed,
                  {("seg", "miou"): [miou], ("seg", "pixacc"): [91.0], ("depth", "abs_err"): [0.013],
                   ("depth", "rel_err"): [0.44 + seed / 100]}, tasks=CITY)
    (table,), _ = comparisons(tmp_path)
    report = negative_transfer(table).set_index("task")
    assert set(report.test) == {ONE_SAMPLE}
    seg = [100 * ((m - 69.06) / 69.06 + (91.0 - 91.54) / 91.54) / 2 for m in (60.0, 61.0, 62.5)]
    assert report.loc["seg", "p"] == pytest.approx(stats.ttest_1samp(seg, 0).pvalue)
    assert "one-sample t-test" in tests_description(report) and "Welch" not in \
        tests_description(report)


@pytest.mark.slow
def test_report_captions_name_the_test_and_correction(tmp_path):
    _transfer_runs(tmp_path / "res")
    out = tmp_path / "rep"
    build_report(tmp_path / "res", out, ("md",), skip=("weights", "conflict", "curves",
                                                       "spectra", "toy", "cost"), correction="bh")
    md = (out / "report.md").read_text()
    assert "Benjamini–Hochberg correction over 6 tests" in md


def test_seed_interval_is_scipys_t_interval():
    from scipy import stats

    from analysis.intervals import seed_interval, value_range
    x = [0.41, 0.52, 0.47]
    iv = seed_interval(x)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert iv.kind == "95% t-interval, n=3"
    assert iv.lo < min(x) and iv.hi > max(x)  # wider than the range of 3 seeds
    assert not seed_interval([0.4, 0.5]).exists and "n=2 < 3" in seed_interval([0.4, 0.5]).kind
    r = value_range([0.4, 0.5])
    assert (r.lo, r.hi, r.kind) == (0.4, 0.5, "range, n=2")


def _power_curve(root, method, alpha, c, noise, seeds=3):
    rng = np.random.default_rng(0)
    for seed in range(seeds):
        steps = np.arange(10, 3001, 10)
        loss = 3.0 * (steps - 4.5) ** (-alpha) + c
        loss = loss * np.exp(noise * rng.standard_normal(loss.size))
        curve = [{"step": int(s), "epoch": 0, "losses": {"a": float(v)}} for s, v in zip(steps, loss)]
        write_run(root, "bench", method, seed, {("a", "acc"): [1.0]}, curve=curve,
                  tasks={("a", "acc"): (True, "%")})


def test_unidentified_curve_fits_show_no_alpha(tmp_path):
    from analysis.collect import load_runs
    from analysis.curves import R2_MIN, fit_curves, load_curves, plot_curves
    _power_curve(tmp_path, "ew", 0.5, 0.1 * (1 + 0.0), 0.0)      # a clean power law
    _power_curve(tmp_path, "flat", 0.0, 1.0, 0.05)                # noise around a constant
    data, _ = load_curves(load_runs(tmp_path))
    fits = fit_curves(data).set_index("method")
    assert fits.loc["ew", "status"] == "identified"
    assert fits.loc["ew", "alpha"] == pytest.approx(0.5, rel=0.03)
    assert fits.loc["ew", "interval"] == "95% t-interval, n=3"
    flat = fits.loc["flat"]
    assert flat.status.startswith("unidentified") and np.isnan(flat.alpha)
    assert np.isnan(flat.alpha_lo) and flat.interval == "–"
    assert f"R² < {R2_MIN:g}" in flat.status or "at a bound" in flat.status
    png = plot_curves(data, tmp_path / "fig", "t", fits.reset_index())
    assert png.exists()


def test_curve_points_sit_at_their_interval_midpoints(tmp_path):
    from analysis.collect import load_runs
    from analysis.curves import load_curves
    curve = [{"step": s, "epoch": 0, "losses": {"a": 1.0}} for s in (10, 20, 25)]
    write_run(tmp_path, "bench", "ew", 0, {("a", "acc"): [1.0]}, curve=curve,
              tasks={("a", "acc"): (True, "%")})
    data, _ = load_curves(load_runs(tmp_path))
    assert list(data.step) == [5.5, 15.5, 23.0] and list(data.step_end) == [10, 20, 25]


@pytest.mark.parametrize("bench", ["nyuv2", "cityscapes", "office31", "officehome"])
def test_published_check_bound_covers_every_rounding(bench):
    from analysis.measures import delta_p_metric, delta_p_task
    from analysis.reference import _half_unit, _printed_cell, published_check
    pub = load_published(bench)
    check = published_check(pub).set_index("method")
    cols = list(pub.values.columns)
    higher = [pub.higher[c] for c in cols]
    tasks = [c[0] for c in cols]
    rng = np.random.default_rng(1)
    for method in pub.values.index[1:]:
        half_m = np.array([_half_unit(_printed_cell(pub, method, c)) for c in cols])
        half_b = np.array([_half_unit(_printed_cell(pub, "STL", c)) for c in cols])
        m, b = pub.values.loc[method, cols].to_numpy(), pub.stl[cols].to_numpy()
        rec = check.loc[method, "Δp_task recomputed"]
        assert rec == pytest.approx(delta_p_task(m, b, higher, tasks), abs=1e-4)
        assert check.loc[method, "Δm% recomputed"] == pytest.approx(-delta_p_metric(m, b, higher),
                                                                     abs=1e-4)
        for _ in range(50):  # any unrounded values stay within the bound
            mm = m + half_m * rng.uniform(-1, 1, m.size)
            bb = b + half_b * rng.uniform(-1, 1, b.size)
            assert abs(delta_p_task(mm, bb, higher, tasks) - rec) <= check.loc[method, "Δp_task bound"]


def test_published_check_flags_the_known_disagreements():
    from analysis.reference import published_check
    flagged = {b: set(published_check(load_published(b)).query("disagrees != ''").method)
               for b in ("nyuv2", "cityscapes", "office31", "officehome")}
    assert "Rep-MTL (EW)" in flagged["office31"]  # 1.379 recomputed, 1.31 printed
    assert {"CAGrad", "IMTL-G"} <= flagged["officehome"]
    assert len(flagged["cityscapes"]) == 8 and not flagged["nyuv2"]
    nyu = published_check(load_published("nyuv2")).set_index("method")
    assert nyu.loc["EW", "Δp_metric printed"] == -3.85 and nyu.loc["EW", "Δm% printed"] == 3.85
    ranks = nyu["mean rank recomputed"].drop("STL")
    assert ranks.min() >= 1 and np.isnan(nyu.loc["STL", "mean rank recomputed"])


def test_spectra_marks_small_layers_and_reports_the_random_matrix_edge(tmp_path):
    import torch

    from analysis.spectra import MIN_EIGS, checkpoint_spectra, mp_edge
    torch.manual_seed(0)
    rand = torch.randn(400, 200, dtype=torch.float64)
    u, v = torch.randn(400, 1, dtype=torch.float64), torch.randn(1, 200, dtype=torch.float64)
    spiked = rand + 0.5 * u @ v  # one planted spike far above the random bulk
    model = {"encoders.0.a.weight": rand, "encoders.0.b.weight": spiked,
             "heads.t.fc.weight": torch.randn(10, 30, dtype=torch.float64)}
    torch.save({"model": model}, tmp_path / "checkpoint.pt")
    table, _ = checkpoint_spectra(tmp_path / "checkpoint.pt")
    table = table.set_index("layer")
    # Marchenko–Pastur: λ+ = σ²(√N + √M)²; the largest eigenvalue of a Gaussian matrix sits
    # at the edge (within a few % at this size), a planted rank-one spike far above it
    sv = np.linalg.svd(rand.numpy(), compute_uv=False) ** 2
    edge = rand.var(unbiased=False).item() * (np.sqrt(400) + np.sqrt(200)) ** 2
    assert mp_edge(rand) == pytest.approx(edge)
    assert sv.max() == pytest.approx(edge, rel=0.05)
    assert table.loc["encoders.0.a", "above_mp"] <= 2
    assert table.loc["encoders.0.b", "above_mp"] >= 1
    small = table.loc["heads.t.fc"]
    assert small.eigenvalues == 10 < MIN_EIGS and np.isnan(small.alpha)
    assert "too few eigenvalues" in small.trust
    for col in ("n_tail", "sigma", "xmin", "ks", "tail_fraction"):
        assert np.isfinite(table.loc["encoders.0.a", col])


def test_spectrum_tail_matches_powerlaw_and_is_marked_when_it_is_the_spectrum():
    import powerlaw

    from analysis.spectra import MAX_TAIL_FRACTION, fit_spectrum
    rng = np.random.default_rng(3)
    x = rng.pareto(2.5, 64) + 1.0  # a pure power law of 64 values: the tail is all of it
    fit = fit_spectrum(x)
    ref = powerlaw.Fit(x, verbose=False, parameter_ranges={"alpha": [1, 20]})
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-6)
    assert fit.ks == pytest.approx(ref.power_law.D, rel=1e-6)
    assert fit.n_tail == int(np.sum(x >= ref.xmin))
    assert fit.n_tail / x.size > MAX_TAIL_FRACTION


def test_esd_points_leave_empty_bins_empty():
    from analysis.spectra import esd_points
    x = np.concatenate([np.linspace(1, 2, 100), [50.0, 80.0, 100.0]])  # three isolated values
    mid, dens = esd_points(x, bins=40)
    edges = np.geomspace(1, 100, 41)
    counts, _ = np.histogram(x, edges)
    assert len(mid) == int((counts > 0).sum()) < 40 and (dens > 0).all()


@pytest.mark.slow
def test_every_section_keeps_configurations_apart(tmp_path):
    import json

    import torch
    root = tmp_path / "res"
    for alpha, h in ((1.5, "g15"), (2.0, "g20")):
        for seed in (0, 1):
            steps = np.arange(10, 2001, 10)
            curve = [{"step": int(s), "epoch": 0, "losses": {"a": float(2 * (s - 4.5) ** -alpha / 4 + 0.1)}}
                     for s in steps]
            conflict = [{"step": s, "epoch": 0, "space": "param", "cosine": {"a|b": alpha / 10},
                         "norms": {"a": 1.0, "b": 1.0}} for s in (10, 20)]
            torch.manual_seed(seed)
            run = write_run(root, "bench", "gradnorm", seed, {A: [80.0], ERR: [2.0]}, tasks=TASKS,
                            config_hash=h, curve=curve, conflict=conflict,
                            model={"encoders.0.fc.weight": torch.randn(64, 80)})
            cfg = json.loads((run / "config.json").read_text())
            cfg["methods"] = {"gradnorm": {"alpha": alpha}, "ew": {"unused": 1}}
            (run / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "rep"
    build_report(root, out, ("md", "csv"), skip=("toy",))
    labels = {"gradnorm α=1.5", "gradnorm α=2"}
    for name in ("comparison_bench", "cost_bench", "conflict_bench_param", "curve_fits_bench",
                 "spectra_layers_bench", "spectra_groups_bench"):
        frame = pd.read_csv(out / "tables" / f"{name}.csv")
        assert set(frame.method) == labels, name
    conflict = pd.read_csv(out / "tables" / "conflict_bench_param.csv").set_index("method")
    assert conflict.filter(like="cos").iloc[:, 0].to_dict() == pytest.approx(
        {"gradnorm α=1.5": 0.15, "gradnorm α=2": 0.2})
    md = (out / "report.md").read_text()
    assert "[g15]" not in md


def test_best_test_dp_leaves_out_a_metric_that_starts_at_zero(tmp_path):
    # a's first value is 0 (no relative change): epochs are scored by b alone
    write_run(tmp_path, "bench", "ew", 0, {A: [0.0, 90.0, 10.0], ERR: [1.0, 0.9, 0.5]}, tasks=TASKS)
    assert comparisons(tmp_path, "best_test_dp")[0][0].mean.loc["ew", A] == 10.0


def test_report_lists_the_published_rows_that_disagree(tmp_path):
    _city_runs(tmp_path / "res")
    out = tmp_path / "rep"
    build_report(tmp_path / "res", out, ("md",), skip=ONLY_TABLES)
    md = (out / "report.md").read_text()
    assert "8 published row(s) disagree with their own table beyond rounding" in md
    assert "MTAdam (Δp_task: printed Δp_task -2.74, recomputed -2.64)" in md
    docs = Path(__file__).parent.parent / "docs" / "analysis.md"
    assert "the paper averages per-seed" not in docs.read_text()
