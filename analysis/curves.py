"""Power-law fits of training curves (curve.jsonl): L(t) = a·t^(−α) + c per task and method.

Window rules (the power-law region), applied to each run's curve of one task:
1. steps t ≥ 1 only; the warm-up is dropped: points with t < ``warmup_fraction`` (1%) of the
   last recorded step;
2. the window stops before the first learning-rate drop (an epoch whose recorded lr is more
   than 1% below the previous epoch's, from metrics.jsonl): points of that epoch and later
   are dropped, because a drop starts a new regime;
3. at most ``points`` (40) points, taken nearest to log-spaced steps over the window so
   that late, dense points do not dominate; at least ``min_points`` (8) are needed.

Fit: ``scipy.optimize.least_squares`` on the residuals log(â·t^(−α̂) + ĉ) − log L (a loss on
log residuals treats early and late points alike) with the robust soft-L1 loss (scale 0.05),
a = exp(θ) > 0, 1e-6 ≤ α ≤ 10, 0 ≤ c ≤ (1 − 1e-6)·min L; several starts (c₀ = 0, ½ min L,
0.9 min L), the lowest cost wins. Reported: α, a, c, R² of log L, ``c_at_bound`` when ĉ
lies within 1e-3·min L of its upper bound min L (the curve ends flat: c and α trade off),
and an extrapolation check: the fit on the first 70% of the window's points predicts the rest;
the mean relative error of that prediction is ``extrapolation_error``. ĉ = 0 is not a
problem: it is the pure power law a·t^(−α), a member of the model.

Adequacy: the power law is compared with a plateau-then-drop alternative,
L(t) = c + a / (1 + (t/τ)^β) (a log-logistic decay: flat before τ, a power law of exponent β
well after it), fitted the same way. Both are scored by AIC on the log residuals,
n·log(max(RSS/n, σ²_min)) + 2k (k = 3 and 4; σ_min = 1e-3, a 0.1% noise floor below which
two exact fits are not told apart); the power law is **inadequate** when the alternative's
AIC is lower by more than ``AIC_MARGIN`` (10: strong evidence). A training curve that
plateaus, then drops, is not a power law even when R² is high.

Identification: a fit's α is **unidentified** when ĉ is at its upper bound, R² of log L is
below ``R2_MIN`` (0.5), α̂ is at one of its bounds (1e-6 or 10), or the power law is
inadequate. A method and task whose seeds are not all identified shows no α and no
interval, only the reasons (``status``). tests/test_analysis_powerlaw.py holds the two
constructed cases: 2·t^(−0.5) is identified (α = 0.5, c = 0); 0.2 + 2/(1 + (t/300)³) is not.

Across seeds: α per seed, its mean, and the 95% t-interval of the mean
(``analysis.intervals.seed_interval``; none with fewer than 3 identified seeds).

Points: a curve.jsonl record is the mean loss over the steps since the previous record, so it
is placed at the midpoint of that interval of steps, not at its end.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from analysis.collect import load_optional_jsonl, load_train_records
from analysis.intervals import seed_interval
from analysis.plots import grid, plt, save

WARMUP_FRACTION = 0.01
LR_DROP = 0.99
MAX_POINTS = 40
MIN_POINTS = 8
EXTRAPOLATION_SPLIT = 0.7
BOUND_TOL = 1e-3
R2_MIN = 0.5
ALPHA_BOUNDS = (1e-6, 10.0)
AIC_MARGIN = 10.0
NOISE_FLOOR = 1e-3


@dataclass
class PowerLawFit:
    a: float
    alpha: float
    c: float
    r2: float
    c_at_bound: bool
    n: int
    aic_gap: float = float("nan")
    """AIC of the power law minus the plateau alternative's (positive: the alternative fits
    better); NaN when the alternative was not fitted."""

    @property
    def alpha_at_bound(self) -> bool:
        lo, hi = ALPHA_BOUNDS
        return self.alpha <= lo * (1 + 1e-3) or self.alpha >= hi * (1 - 1e-3)

    def problems(self) -> list[str]:
        """Why α is not identified (empty when it is): see the module docstring."""
        out = []
        if self.c_at_bound:
            out.append("c at its upper bound")
        if not self.r2 >= R2_MIN:
            out.append(f"R² < {R2_MIN:g}")
        if self.alpha_at_bound:
            out.append("α at a bound")
        if self.aic_gap > AIC_MARGIN:
            out.append("a plateau-then-drop curve fits better")
        return out

    @property
    def identified(self) -> bool:
        return not self.problems()

    def predict(self, t: np.ndarray) -> np.ndarray:
        return self.a * np.asarray(t, dtype=float) ** (-self.alpha) + self.c


def power_law_window(steps: np.ndarray, losses: np.ndarray, lr_drop_step: float | None = None,
                     warmup_fraction: float = WARMUP_FRACTION, points: int = MAX_POINTS
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The log-spaced points of the power-law region (see the module docstring)."""
    steps = np.asarray(steps, dtype=float)
    losses = np.asarray(losses, dtype=float)
    keep = (steps >= 1) & np.isfinite(losses) & (losses > 0)
    steps, losses = steps[keep], losses[keep]
    if steps.size == 0:
        return steps, losses
    keep = steps >= warmup_fraction * steps.max()
    if lr_drop_step is not None:
        keep &= steps < lr_drop_step
    steps, losses = steps[keep], losses[keep]
    if steps.size <= points:
        return steps, losses
    targets = np.geomspace(steps[0], steps[-1], points)
    idx = np.unique([int(np.argmin(np.abs(np.log(steps) - np.log(t)))) for t in targets])
    return steps[idx], losses[idx]


def fit_power_law(steps, losses) -> PowerLawFit:
    """Fit L(t) = a·t^(−α) + c (see the module docstring); raises ValueError on fewer than
    MIN_POINTS points."""
    t = np.asarray(steps, dtype=float)
    y = np.asarray(losses, dtype=float)
    if t.size < MIN_POINTS:
        raise ValueError(f"{t.size} points in the power-law window, fewer than {MIN_POINTS}")
    logy = np.log(y)
    cmax = (1 - 1e-6) * y.min()

    def residuals(p):
        return np.log(np.exp(p[0]) * t ** (-p[1]) + p[2]) - logy

    slope, _intercept = np.polyfit(np.log(t), logy, 1)
    alpha0 = float(np.clip(-slope, 1e-3, 5.0))
    best = None
    for c0 in (0.0, 0.5 * y.min(), 0.9 * y.min()):
        a0 = max(float(np.mean((y - c0) * t ** alpha0)), 1e-12)
        sol = least_squares(residuals, [np.log(a0), alpha0, min(c0, cmax)],
                            bounds=([-np.inf, ALPHA_BOUNDS[0], 0.0], [np.inf, ALPHA_BOUNDS[1], cmax]),
                            loss="soft_l1", f_scale=0.05, max_nfev=2000)
        if best is None or sol.cost < best.cost:
            best = sol
    a, alpha, c = float(np.exp(best.x[0])), float(best.x[1]), float(best.x[2])
    res = residuals(best.x)
    r2 = 1.0 - float(np.sum(res ** 2)) / max(float(np.sum((logy - logy.mean()) ** 2)), 1e-300)
    at_bound = c >= cmax - BOUND_TOL * y.min()
    gap = _aic(res, 3) - _aic(_plateau_residuals(t, logy, cmax), 4)
    return PowerLawFit(a, alpha, c, r2, bool(at_bound), int(t.size), float(gap))


def _aic(residuals: np.ndarray, params: int) -> float:
    n = residuals.size
    return n * float(np.log(max(float(np.sum(residuals ** 2)) / n, NOISE_FLOOR ** 2))) + 2 * params


def _plateau_residuals(t: np.ndarray, logy: np.ndarray, cmax: float) -> np.ndarray:
    """Log residuals of the best fit of L = c + a/(1 + (t/τ)^β) (several starts)."""
    y = np.exp(logy)

    def residuals(p):
        return np.log(p[3] + np.exp(p[0]) / (1 + (t / np.exp(p[1])) ** p[2])) - logy

    best = None
    c0 = 0.5 * y.min()
    a0 = max(float(y.max() - c0), 1e-12)
    for tau0 in np.geomspace(t.min(), t.max(), 3):
        sol = least_squares(residuals, [np.log(a0), np.log(tau0), 1.0, c0],
                            bounds=([-np.inf, np.log(t.min()) - 5, 1e-3, 0.0],
                                    [np.inf, np.log(t.max()) + 5, 20.0, cmax]),
                            max_nfev=500)
        if best is None or sol.cost < best.cost:
            best = sol
    return residuals(best.x)


def extrapolation_error(steps, losses, split: float = EXTRAPOLATION_SPLIT) -> float:
    """Mean relative error on the last (1 − split) of the points of a fit on the first part."""
    steps, losses = np.asarray(steps, float), np.asarray(losses, float)
    cut = round(split * steps.size)
    if cut < MIN_POINTS or cut >= steps.size:
        return float("nan")
    fit = fit_power_law(steps[:cut], losses[:cut])
    return float(np.mean(np.abs(fit.predict(steps[cut:]) - losses[cut:]) / losses[cut:]))


def lr_drop_step(run_dir: Path, curve: pd.DataFrame) -> float | None:
    """The first step of the first epoch whose lr fell below LR_DROP × the previous epoch's."""
    records = sorted(load_train_records(run_dir), key=lambda r: r.get("epoch", 0))
    for prev, cur in itertools.pairwise(records):
        if prev.get("lr") and cur.get("lr") is not None and cur["lr"] < LR_DROP * prev["lr"]:
            later = curve[curve.epoch >= cur["epoch"]]
            return float(later.step.min()) if not later.empty else None
    return None


def _midpoints(records: list[dict]) -> list[float]:
    """The midpoint of the steps each record averages: steps p+1 … s for a record at step s
    after one at step p (the first starts at step 1)."""
    out, prev = [], 0
    for r in records:
        step = r.get("step")
        if not isinstance(step, (int, float)):
            out.append(float("nan"))
            continue
        out.append((prev + 1 + step) / 2)
        prev = step
    return out


def load_curves(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Long table (benchmark, method, seed, run_dir, step, epoch, task, loss, lr_drop_step)."""
    rows, problems = [], {}
    for run in runs[runs.usable].itertuples():
        records, problem = load_optional_jsonl(Path(run.run_dir), "curve.jsonl")
        if problem:
            problems[run.run_dir] = problem
        if not records:
            continue
        part = pd.DataFrame([{"step": mid, "step_end": r.get("step"), "epoch": r.get("epoch"),
                              "task": task, "loss": np.nan if v is None else float(v)}
                             for r, mid in zip(records, _midpoints(records))
                             for task, v in (r.get("losses") or {}).items()])
        drop = lr_drop_step(Path(run.run_dir), part)
        rows.append(part.assign(benchmark=run.benchmark, method=run.method, seed=run.seed,
                                run_dir=run.run_dir, lr_drop_step=drop))
    cols = ["benchmark", "method", "seed", "run_dir", "step", "step_end", "epoch", "task", "loss",
            "lr_drop_step"]
    return (pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)), problems


FIT_COLUMNS = ["benchmark", "method", "task", "status", "alpha", "alpha_lo", "alpha_hi", "interval",
               "seeds", "a", "c", "r2", "c_at_bound", "extrapolation_error", "points", "note"]


def fit_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark, method and task: ``status`` ("identified" or the reasons it is not, with
    how many seeds each), α (mean over seeds) with its t-interval (``interval`` says which)
    only when every seed's fit is identified, mean a, c, R², extrapolation error;
    ``c_at_bound`` when any seed's c is at its upper bound."""
    rows = []
    for (bench, method, task), part in curves.groupby(["benchmark", "method", "task"], sort=True):
        fits, extrap, notes = [], [], []
        for run_dir, run in part.groupby("run_dir", sort=True):
            run = run.sort_values("step")
            drop = run.lr_drop_step.iloc[0]
            t, y = power_law_window(run.step.to_numpy(), run.loss.to_numpy(),
                                    None if pd.isna(drop) else float(drop))
            try:
                fits.append(fit_power_law(t, y))
                extrap.append(extrapolation_error(t, y))
            except ValueError as exc:
                notes.append(f"seed {run.seed.iloc[0]}: {exc}")
        reasons = pd.Series([p for f in fits for p in f.problems()]).value_counts()
        status = ("identified" if fits and reasons.empty else "no fit" if not fits else
                  "unidentified: " + "; ".join(f"{r} ({n}/{len(fits)} seeds)"
                                               for r, n in reasons.items()))
        alphas = [f.alpha for f in fits]
        ok = status == "identified"
        interval = seed_interval(alphas) if ok else None
        rows.append({"benchmark": bench, "method": method, "task": task, "status": status,
                     "alpha": float(np.mean(alphas)) if ok else np.nan,
                     "alpha_lo": interval.lo if ok else np.nan,
                     "alpha_hi": interval.hi if ok else np.nan,
                     "interval": interval.kind if ok else "–", "seeds": len(fits),
                     "a": float(np.mean([f.a for f in fits])) if fits else np.nan,
                     "c": float(np.mean([f.c for f in fits])) if fits else np.nan,
                     "r2": float(np.mean([f.r2 for f in fits])) if fits else np.nan,
                     "c_at_bound": any(f.c_at_bound for f in fits),
                     "extrapolation_error": float(np.nanmean(extrap)) if any(np.isfinite(extrap)) else np.nan,
                     "points": int(np.mean([f.n for f in fits])) if fits else 0,
                     "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


def _alpha_text(row) -> str:
    if row is None or not np.isfinite(row.alpha):
        return "seed fits: α unidentified" if row is not None else "no fit"
    text = f"seed fits: α={row.alpha:.2f}"
    if np.isfinite(row.alpha_lo):
        text += f" [{row.alpha_lo:.2f}, {row.alpha_hi:.2f}]"
    return text


def plot_curves(curves: pd.DataFrame, stem: Path, title: str,
                fits: pd.DataFrame | None = None) -> Path:
    """Log-log training curves (mean over seeds, each point at its interval's midpoint), one
    panel per task, one colour per method (the legend lists the methods of that panel). The
    legend gives both estimators, labelled: the table's α (mean of the per-seed fits, from
    ``fits``; "unidentified" when the table says so) and the α of the fit of the mean curve,
    drawn dashed only when that fit is identified."""
    tasks = list(dict.fromkeys(curves.task))
    fits = fit_curves(curves) if fits is None else fits
    table = {(r.method, r.task): r for r in fits.itertuples()}
    fig, axes = grid(len(tasks), 4.6, 3.4)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted(curves.method.unique())
    drawn = 0
    for ax, task in zip(axes, tasks):
        for method, part in curves[curves.task == task].groupby("method", sort=True):
            color = colors[methods.index(method) % len(colors)]
            mean = part.groupby("step").loss.mean()
            ax.plot(mean.index, mean.to_numpy(), ".", ms=3, color=color, alpha=0.6)
            drop = part.lr_drop_step.min()
            t, y = power_law_window(mean.index.to_numpy(), mean.to_numpy(),
                                    None if pd.isna(drop) else float(drop))
            label = f"{method}: {_alpha_text(table.get((method, task)))}"
            try:
                fit = fit_power_law(t, y)
                if fit.identified:
                    ax.plot(t, fit.predict(t), "--", color=color)
                    drawn += 1
                    label += f"; mean-curve fit α={fit.alpha:.2f}"
                else:
                    label += "; mean-curve fit unidentified"
            except ValueError:
                label += "; mean curve: no fit"
            ax.plot([], [], ".-", color=color, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{task} train loss")
        ax.set_title(task)
        ax.legend(fontsize=6)
    fig.suptitle(title + ("  (dots: data; dashed: a·t^(−α)+c fitted to the mean curve, where "
                          "identified)" if drawn else "  (dots: data; no mean-curve fit is "
                          "identified, so none is drawn)"))
    return save(fig, stem)
