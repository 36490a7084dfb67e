"""Heavy-tailed weight spectra (Martin & Mahoney; WeightWatcher), as the Rep-MTL paper
reports them: the power-law exponent α of the empirical spectral density of every layer of
the shared encoder and of each task head, read from a run's checkpoint.pt.

- Layers: every parameter named ``*.weight`` with two or more dimensions. ``encoders.<i>.*``
  is the shared encoder (``encoder``; ``encoder<i>`` when a run has several, as ``stl``
  does), ``heads.<task>.*`` the head of ``task``.
- Eigenvalues of WᵀW are the squared singular values of W (N × M). A conv weight
  (out, in, kh, kw) contributes the kh·kw matrices W[:, :, i, j], whose eigenvalues are
  pooled. Eigenvalues ≤ 1e-5 are dropped; layers with fewer than ``min_eigs`` (50) left are
  listed with the mark "too few eigenvalues" and no fit. A fit whose tail holds more than
  half of the layer's eigenvalues (``MAX_TAIL_FRACTION``) is marked "tail is most of the
  spectrum": a power law "tail" is then a description of the whole, small spectrum.
- Random-matrix reference: the Marchenko–Pastur upper edge of a random matrix of the same
  shape and entry variance, λ+ = σ²(√N + √M)² for W (N × M) with entry variance σ² (the
  layer's own). ``above_mp`` counts the eigenvalues above it: a heavy tail is many
  eigenvalues beyond the random bulk, a few above it are spikes.
- Fit (Clauset, Shalizi, Newman 2009; as the ``powerlaw`` package): for every candidate
  x_min (each distinct sorted eigenvalue but the largest) α̂ = 1 + n / Σ_{λ ≥ x_min} ln(λ/x_min)
  over the n eigenvalues of the tail; the x_min with the smallest Kolmogorov–Smirnov distance
  between the tail's empirical CDF and 1 − (λ/x_min)^(1−α̂) wins; σ(α̂) = (α̂ − 1)/√n.
- Reading: 2 ≤ α ≤ 6 well trained, α > 6 under-trained, α < 2 over-trained; fits with
  α > 8 are flagged as not trustworthy.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Patch

from analysis.plots import grid, log_ticks, plt, save

EIG_FLOOR = 1e-5
MIN_EIGS = 50
MAX_TAIL_FRACTION = 0.5
MAX_ALPHA = 8.0
TAIL_MARK = "tail is most of the spectrum"
ALPHA_MARK = f"untrustworthy (α > {MAX_ALPHA:g})"


@dataclass
class SpectrumFit:
    alpha: float
    xmin: float
    ks: float
    n_tail: int
    sigma: float


def fit_spectrum(eigs) -> SpectrumFit:
    """Power-law MLE with the KS-optimal x_min (see the module docstring)."""
    x = np.sort(np.asarray(eigs, dtype=float))
    x = x[x > 0]
    candidates = np.unique(x)[:-1]
    if candidates.size == 0:
        raise ValueError("fewer than two distinct positive eigenvalues")
    best = None
    logx = np.log(x)
    for xmin in candidates:
        start = np.searchsorted(x, xmin, side="left")
        tail = logx[start:]
        n = tail.size
        s = float(np.sum(tail - np.log(xmin)))
        if s <= 0:
            continue
        alpha = 1.0 + n / s
        theory = 1.0 - np.exp((1.0 - alpha) * (tail - np.log(xmin)))
        empirical = np.arange(n) / n
        ks = float(np.max(np.abs(empirical - theory)))
        if best is None or ks < best.ks:
            best = SpectrumFit(alpha, float(xmin), ks, n, (alpha - 1.0) / np.sqrt(n))
    if best is None:
        raise ValueError("no candidate x_min gives a finite fit")
    return best


def layer_eigenvalues(weight: torch.Tensor) -> np.ndarray:
    """Pooled eigenvalues of WᵀW of a linear (2-D) or conv (4-D, per kernel position) weight."""
    w = weight.detach().to(torch.float64)
    if w.ndim == 2:
        mats = w.unsqueeze(0)
    else:
        mats = w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1)
    sv = torch.linalg.svdvals(mats)
    eigs = (sv ** 2).reshape(-1).numpy()
    return eigs[eigs > EIG_FLOOR]


def mp_edge(weight: torch.Tensor) -> float:
    """The Marchenko–Pastur upper edge σ²(√N + √M)² of the eigenvalues of WᵀW for a random
    N × M matrix with the entry variance of ``weight`` (per kernel position for a conv)."""
    w = weight.detach().to(torch.float64)
    n, m = int(w.shape[0]), int(w.shape[1])
    return float(w.var(unbiased=False)) * (np.sqrt(n) + np.sqrt(m)) ** 2


def layer_group(name: str, encoders: int) -> str | None:
    parts = name.split(".")
    if parts[0] == "encoders" and len(parts) > 2:
        return "encoder" if encoders <= 1 else f"encoder{parts[1]}"
    if parts[0] == "heads" and len(parts) > 2:
        return f"head {parts[1]}"
    return None


def checkpoint_spectra(path: Path, min_eigs: int = MIN_EIGS, keep_eigs: bool = False
                       ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """α of every layer of one checkpoint (columns: group, layer, shape, eigenvalues, mp_edge,
    above_mp, alpha, sigma, xmin, ks, n_tail, tail_fraction, trust: the marks; layers with too
    few eigenvalues have no fit) and, with ``keep_eigs``, the eigenvalues and the MP edge
    by layer name (``(eigs, edge)``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(model, dict):
        # bad data in the file, reported with the other unreadable-checkpoint errors
        raise ValueError(f"{path} holds no model state_dict")  # noqa: TRY004
    encoders = len({k.split(".")[1] for k in model if k.startswith("encoders.")})
    rows, kept = [], {}
    for name, tensor in model.items():
        if not name.endswith(".weight") or not torch.is_tensor(tensor) or tensor.ndim < 2:
            continue
        group = layer_group(name, encoders)
        if group is None:
            continue
        eigs = layer_eigenvalues(tensor)
        edge = mp_edge(tensor)
        row = {"group": group, "layer": name[: -len(".weight")],
               "shape": "×".join(map(str, tensor.shape)), "eigenvalues": int(eigs.size),
               "mp_edge": edge, "above_mp": int(np.sum(eigs > edge))}
        if eigs.size < min_eigs:
            rows.append({**row, "alpha": np.nan, "sigma": np.nan, "xmin": np.nan, "ks": np.nan,
                         "n_tail": 0, "tail_fraction": np.nan,
                         "trust": f"too few eigenvalues (< {min_eigs}): not fitted"})
            continue
        fit = fit_spectrum(eigs)
        marks = []
        if fit.alpha > MAX_ALPHA:
            marks.append(ALPHA_MARK)
        if fit.n_tail / eigs.size > MAX_TAIL_FRACTION:
            marks.append(TAIL_MARK)
        rows.append({**row, "alpha": fit.alpha, "sigma": fit.sigma, "xmin": fit.xmin,
                     "ks": fit.ks, "n_tail": fit.n_tail, "tail_fraction": fit.n_tail / eigs.size,
                     "trust": "; ".join(marks)})
        if keep_eigs and eigs.size >= min_eigs:
            kept[name[: -len(".weight")]] = (eigs, edge)
    return pd.DataFrame(rows), kept


def load_spectra(runs: pd.DataFrame, min_eigs: int = MIN_EIGS
                 ) -> tuple[pd.DataFrame, dict[str, str], dict[tuple[str, str], dict]]:
    """α per layer for every usable run with a checkpoint (plus benchmark, method, seed),
    problems by run folder (a missing or unreadable checkpoint), and the eigenvalues of the
    lowest readable seed of each (benchmark, method), keyed ``(benchmark, method, seed)``."""
    frames, problems, eigs = [], {}, {}
    shown: set[tuple[str, str]] = set()
    for run in runs[runs.usable].sort_values("seed", kind="stable").itertuples():
        path = Path(run.run_dir) / "checkpoint.pt"
        if not path.exists():
            problems[run.run_dir] = "no checkpoint.pt: left out of the weight spectra"
            continue
        first = (run.benchmark, run.method) not in shown
        try:
            table, kept = checkpoint_spectra(path, min_eigs, keep_eigs=first)
        except (OSError, EOFError, RuntimeError, ValueError, KeyError, AttributeError,
                pickle.UnpicklingError) as exc:
            problems[run.run_dir] = f"checkpoint.pt unreadable ({type(exc).__name__}: {exc})"
            continue
        if first:
            shown.add((run.benchmark, run.method))
            eigs[(run.benchmark, run.method, run.seed)] = kept
        frames.append(table.assign(benchmark=run.benchmark, method=run.method, seed=run.seed))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), problems, eigs


def spectra_summary(spectra: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark, method, group and layer: α (mean, std, min and max over seeds), the
    fit's σ, x_min, KS distance, n_tail and tail fraction (means over seeds), the eigenvalue
    count, the Marchenko–Pastur edge and the eigenvalues above it, and the marks with the
    number of seeds whose own fit carries each (``seed_marks``): the numbers beside a mark
    are means, so a mark says how many seeds it holds for, never more."""
    out = (spectra.groupby(["benchmark", "method", "group", "layer"], sort=False)
           .agg(alpha=("alpha", "mean"), alpha_std=("alpha", "std"),
                alpha_min=("alpha", "min"), alpha_max=("alpha", "max"),
                seeds=("seed", "nunique"),
                sigma=("sigma", "mean"), xmin=("xmin", "mean"), ks=("ks", "mean"),
                n_tail=("n_tail", "mean"), tail_fraction=("tail_fraction", "mean"),
                eigenvalues=("eigenvalues", "first"), mp_edge=("mp_edge", "mean"),
                above_mp=("above_mp", "mean"), marks=("trust", seed_marks))
           .reset_index())
    return out


def seed_marks(trust: pd.Series) -> str:
    """The marks of the seeds of one layer (``trust``: one "; "-joined string per seed),
    each with the number of seeds that carry it: "tail is most of the spectrum (tail
    fraction > 0.5) in 1/3 seeds"; "too few eigenvalues" as it is (the same for every
    seed)."""
    per_seed = [{m for m in str(x).split("; ") if m and m != "nan"} for x in trust]
    n = len(per_seed)
    out = []
    for mark in sorted(set().union(*per_seed)) if per_seed else []:
        k = sum(mark in marks for marks in per_seed)
        if mark.startswith("too few eigenvalues"):
            out.append(mark)
            continue
        text = (f"{TAIL_MARK} (tail fraction > {MAX_TAIL_FRACTION:g})" if mark == TAIL_MARK
                else mark)
        out.append(f"{text} in {k}/{n} seeds")
    return "; ".join(out)


def plot_alpha_bars(summary: pd.DataFrame, stem: Path, title: str) -> Path:
    """One panel per group (encoder, each head): α per fitted layer, one bar per method
    (the mean over seeds, as in the table), whiskers from the smallest to the largest seed's
    α (the range: never below the data, unlike mean ± std), hatched where some seed's fit is
    marked (``seed_marks``). Layers without a fit (too few eigenvalues) get no slot; the
    panel names them. The legend lists the methods of that panel."""
    groups = list(dict.fromkeys(summary.group))
    methods = sorted(summary.method.unique())
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = grid(len(groups), 6.5, 3.6, cols=2)
    for ax, group in zip(axes, groups):
        part = summary[summary.group == group]
        fitted = part[part.alpha.notna()]
        layers = list(dict.fromkeys(fitted.layer))
        unfitted = [lay for lay in dict.fromkeys(part.layer) if lay not in set(layers)]
        here = [m for m in methods if fitted[fitted.method == m].alpha.notna().any()]
        width = 0.8 / max(len(here), 1)
        handles = []
        for i, method in enumerate(here):
            m = fitted[fitted.method == method].set_index("layer").reindex(layers)
            lo = (m.alpha - m.alpha_min.fillna(m.alpha)).clip(lower=0).to_numpy()
            hi = (m.alpha_max.fillna(m.alpha) - m.alpha).clip(lower=0).to_numpy()
            marked = m.marks.fillna("").str.contains(" seeds").to_numpy()
            color = colors[methods.index(method) % len(colors)]
            bars = ax.bar(np.arange(len(layers)) + i * width, m.alpha.to_numpy(), width,
                          yerr=np.vstack([lo, hi]), capsize=2, color=color,
                          error_kw={"lw": 0.8})
            for bar, flag in zip(bars, marked):
                if flag:
                    bar.set_hatch("///")
                    bar.set_edgecolor("black")
            handles.append(Patch(color=color, label=method))
        ax.axhspan(2, 6, color="green", alpha=0.07)
        handles.append(Patch(color="green", alpha=0.07, label="2 ≤ α ≤ 6"))
        if fitted.marks.fillna("").str.contains(" seeds").any():
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="///",
                                 label="marked in the table"))
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2,
                      [_short(lay) for lay in layers], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("power-law exponent α")
        ax.set_title(group)
        if unfitted:
            ax.set_xlabel(f"not fitted (< {MIN_EIGS} eigenvalues): "
                          + ", ".join(_short(lay) for lay in unfitted), fontsize=7)
        ax.legend(handles=handles, fontsize=7)
    fig.suptitle(title + " (bar: mean over seeds; whiskers: range over seeds)")
    return save(fig, stem)


def _short(layer: str) -> str:
    """A readable tick label: the layer's path without its group prefix."""
    parts = layer.split(".")
    return ".".join(parts[2:]) if parts[0] in ("encoders", "heads") and len(parts) > 2 else layer


def esd_points(eigs: np.ndarray, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, densities) of the log-binned empirical spectral density, only the
    non-empty bins: drawn as points, an empty bin shows as a gap, never bridged by a line."""
    x = np.asarray(eigs, dtype=float)
    edges = np.geomspace(x.min(), x.max(), bins + 1)
    dens, edges = np.histogram(x, bins=edges, density=True)
    mid = np.sqrt(edges[1:] * edges[:-1])
    return mid[dens > 0], dens[dens > 0]


def plot_esd(eigs_by_method: dict[str, dict[str, tuple[np.ndarray, float]]], layers: list[str],
             stem: Path, title: str, seeds: dict[str, object] | None = None,
             summary: pd.DataFrame | None = None) -> Path:
    """Empirical spectral densities of the chosen layers on log-log axes: the non-empty
    log bins as points (one colour per method; the legend lists the methods of the panel),
    the fitted power law over its tail (dashed) and the Marchenko–Pastur edge of a random
    matrix of the same shape (dotted). The spectra are those of one seed per method
    (``seeds``, named in the legend with that seed's α and n_tail, the numbers of the dashed
    line); with ``summary`` the legend also gives the table's α, the mean over seeds."""
    methods = sorted(eigs_by_method)
    # the legend (one line per method) goes below each panel, never over the points
    fig, axes = grid(len(layers), 4.6, 3.2 + 0.16 * (len(methods) + 1))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    table = ({} if summary is None else
             {(r.method, r.layer): r for r in summary.itertuples()})
    for ax, layer in zip(axes, layers):
        for method in methods:
            if layer not in eigs_by_method[method]:
                continue
            x, edge = eigs_by_method[method][layer]
            color = colors[methods.index(method) % len(colors)]
            mid, dens = esd_points(x)
            ax.plot(mid, dens, "o", ms=3, color=color)
            fit = fit_spectrum(x)
            frac = fit.n_tail / x.size
            t = np.geomspace(fit.xmin, x.max(), 50)
            who = method if seeds is None else f"{method} seed {seeds[method]}"
            label = f"{who}: α={fit.alpha:.2f}, tail {fit.n_tail}/{x.size}"
            if frac > MAX_TAIL_FRACTION:
                label += " (most of it)"
            row = table.get((method, layer))
            if row is not None and row.seeds > 1 and np.isfinite(row.alpha):
                label += f"; mean α {row.alpha:.2f} ({row.seeds} seeds)"
            ax.plot(t, frac * (fit.alpha - 1) / fit.xmin * (t / fit.xmin) ** (-fit.alpha), "--",
                    color=color, label=label)
            ax.axvline(edge, color=color, ls=":", lw=1)
        ax.plot([], [], "k:", lw=1, label="MP edge (random matrix)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        log_ticks(ax, "x")
        log_ticks(ax, "y")
        ax.set_xlabel("eigenvalue λ of WᵀW")
        ax.set_ylabel("density")
        ax.set_title(layer, fontsize=8)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.suptitle(title + " (one seed per method; points: non-empty log bins; dashed: "
                 "power-law tail fit of that seed)")
    return save(fig, stem)
