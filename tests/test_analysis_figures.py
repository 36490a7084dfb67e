"""What a reader sees in the report's figures and cost table: titles inside the figure, small
task weights visible, spectrum marks and whiskers that agree with the table's numbers, the
ESD legend naming the seed it shows, no promise of lines that are not drawn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import curves, spectra, transfer, weights
from analysis.plots import plt, wrap


@pytest.fixture()
def figures(monkeypatch):
    """Every figure the plotting functions save, kept open (laid out as saved) for checks."""
    kept = []

    def keep(fig, stem):
        fig.tight_layout()
        fig.canvas.draw()
        kept.append(fig)
        return stem

    for module in (transfer, weights, spectra, curves):
        monkeypatch.setattr(module, "save", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


def _inside(fig, text) -> bool:
    box = text.get_window_extent(fig.canvas.get_renderer())
    whole = fig.bbox
    return box.x0 >= whole.x0 - 1 and box.x1 <= whole.x1 + 1 and box.y1 <= whole.y1 + 1


def test_wrap_keeps_lines_within_the_width():
    text = "* significant negative transfer: " + "word " * 60
    lines = wrap(text, 4.0, 8).splitlines()
    assert len(lines) > 1 and all(len(x) <= int(4.0 * 72 / (0.55 * 8)) for x in lines)


def test_heat_map_title_is_never_clipped(figures, tmp_path):
    report = pd.DataFrame({"method": ["ew", "ew"], "task": ["a", "b"], "change_pct": [-1.0, 2.0],
                           "significant_negative": [False, False],
                           "test": ["Welch t-test vs the stl seeds (a long description of the "
                                    "test and of its correction over the family)"] * 2,
                           "p": [0.5, 0.6], "p_adjusted": [1.0, 1.0]})
    transfer.heatmap(report, tmp_path / "h", "a benchmark with a long name: change vs STL (%)")
    (fig,) = figures
    assert fig._suptitle is not None and _inside(fig, fig._suptitle)
    assert "significant negative transfer" in fig._suptitle.get_text()


def test_all_zero_heat_map_has_a_plain_colour_scale(figures, tmp_path):
    report = pd.DataFrame({"method": ["ew"], "task": ["a"], "change_pct": [0.0],
                           "significant_negative": [False], "test": ["no test"], "p": [np.nan],
                           "p_adjusted": [np.nan]})
    transfer.heatmap(report, tmp_path / "h", "zero")
    image = figures[0].axes[0].images[0]
    assert image.get_clim() == (-1.0, 1.0)


def test_task_weights_share_a_log_scale_so_small_weights_are_not_zero(figures, tmp_path):
    rows = [{"benchmark": "b", "method": m, "seed": s, "epoch": e, "task": t, "weight": w}
            for m, ws in {"ew": {"x": 1.0, "y": 1.0}, "famo": {"x": 1e-3, "y": 2.0}}.items()
            for s in (0, 1) for e in range(3) for t, w in ws.items()]
    weights.plot_weights(pd.DataFrame(rows), tmp_path / "w", "weights")
    (fig,) = figures
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert all(ax.get_yscale() == "log" for ax in axes)
    assert len({ax.get_ylim() for ax in axes}) == 1  # one scale for every panel
    lo, hi = axes[0].get_ylim()
    assert lo < 1e-3 < 2.0 < hi  # the small weight is drawn, not at the floor
    assert "log scale, shared by the panels" in fig._suptitle.get_text()
    assert weights.weight_scale([0.0, 0.5, 1.0]) == ("symlog", {"linthresh": 0.5})
    assert weights.weight_scale([-1.0, 1.0]) == ("linear", {})


def _spectra_rows(alphas, tails, eigs=64):
    rows = []
    for seed, (alpha, tail) in enumerate(zip(alphas, tails)):
        marks = [m for m, bad in ((spectra.ALPHA_MARK, alpha > spectra.MAX_ALPHA),
                                  (spectra.TAIL_MARK, tail > spectra.MAX_TAIL_FRACTION)) if bad]
        rows.append({"benchmark": "b", "method": "ew", "group": "head t", "layer": "heads.t.1",
                     "seed": seed, "alpha": alpha, "sigma": 0.1, "xmin": 0.1, "ks": 0.05,
                     "n_tail": round(tail * eigs), "tail_fraction": tail, "eigenvalues": eigs,
                     "mp_edge": 1.0, "above_mp": 2, "trust": "; ".join(marks)})
    return pd.DataFrame(rows)


def test_spectrum_marks_say_how_many_seeds_carry_them():
    """Mean tail fraction 0.49 and mean α 5.3 beside marks: the marks count their seeds and
    alpha_max shows the seed above 8, so nothing beside a mark contradicts it."""
    summary = spectra.spectra_summary(_spectra_rows([3.0, 3.6, 9.3], [0.46, 0.49, 0.52])).iloc[0]
    assert summary.alpha == pytest.approx(5.3) and summary.tail_fraction == pytest.approx(0.49)
    assert summary.alpha_max == pytest.approx(9.3) and summary.alpha_min == pytest.approx(3.0)
    assert "untrustworthy (α > 8) in 1/3 seeds" in summary.marks
    assert "tail is most of the spectrum (tail fraction > 0.5) in 1/3 seeds" in summary.marks
    clean = spectra.spectra_summary(_spectra_rows([3.0, 3.1], [0.3, 0.4])).iloc[0]
    assert clean.marks == ""


def test_alpha_whiskers_are_the_seed_range_never_below_zero(figures, tmp_path):
    summary = spectra.spectra_summary(_spectra_rows([1.5, 1.6, 9.0], [0.3, 0.3, 0.3]))
    assert summary.alpha.iloc[0] - summary.alpha_std.iloc[0] < 0  # mean − std would be < 0
    spectra.plot_alpha_bars(summary, tmp_path / "a", "alpha")
    (fig,) = figures
    ax = fig.axes[0]
    segments = [seg for coll in ax.collections for seg in getattr(coll, "get_segments", list)()]
    ys = np.concatenate([np.asarray(seg)[:, 1] for seg in segments])
    assert ys.min() == pytest.approx(1.5) and ys.max() == pytest.approx(9.0)
    assert ax.get_ylim()[0] == 0
    assert "whiskers: range over seeds" in fig._suptitle.get_text()


def test_esd_legend_names_the_seed_and_the_tables_mean(figures, tmp_path):
    rng = np.random.default_rng(0)
    eigs = rng.pareto(2.0, 300) + 0.1
    summary = spectra.spectra_summary(_spectra_rows([2.0, 2.2, 2.4], [0.3, 0.3, 0.3]))
    spectra.plot_esd({"ew": {"heads.t.1": (eigs, 1.0)}}, ["heads.t.1"], tmp_path / "e", "esd",
                     seeds={"ew": 0}, summary=summary)
    (fig,) = figures
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    fit = spectra.fit_spectrum(eigs)
    assert labels[0].startswith(f"ew seed 0: α={fit.alpha:.2f}")
    assert "mean α 2.20 (3 seeds)" in labels[0]
    assert "one seed per method" in fig._suptitle.get_text()


def _curve_frame(loss):
    steps = np.arange(10, 2001, 10, dtype=float)
    return pd.DataFrame({"benchmark": "b", "method": "ew", "seed": 0, "run_dir": "r", "step": steps,
                         "step_end": steps, "epoch": 0, "task": "a", "loss": loss(steps),
                         "lr_drop_step": np.nan})


@pytest.mark.parametrize("loss, drawn", [(lambda t: 2 * t ** -0.5, True),
                                         (lambda t: 0.2 + 2 / (1 + (t / 300) ** 3), False)])
def test_curve_figure_promises_dashed_fits_only_when_it_draws_them(figures, tmp_path, loss, drawn):
    curves.plot_curves(_curve_frame(loss), tmp_path / "c", "curves")
    (fig,) = figures
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--" and len(ln.get_xdata())]
    title = fig._suptitle.get_text()
    assert bool(dashed) == drawn
    assert ("dashed" in title and "where identified" in title) if drawn else "none is drawn" in title
