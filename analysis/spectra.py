"""Heavy-tailed weight spectra (Martin & Mahoney; WeightWatcher), as the Rep-MTL paper
reports them: the power-law exponent α of the empirical spectral density of every layer of
the shared encoder and of each task head, read from a run's checkpoint.pt.

- Layers: every parameter named ``*.weight`` with two or more dimensions. ``encoders.<i>.*``
  is the shared encoder (``encoder``; ``encoder<i>`` when a run has several, as ``stl``
  does), ``heads.<task>.*`` the head of ``task``.
- Eigenvalues of WᵀW are the squared singular values of W (N × M). A conv weight
  (out, in, kh, kw) contributes the kh·kw matrices W[:, :, i, j], whose eigenvalues are
  pooled. Eigenvalues ≤ 1e-5 are dropped; layers with fewer than ``min_eigs`` (50) left are
  skipped.
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

from analysis.plots import grid, plt, save

EIG_FLOOR = 1e-5
MIN_EIGS = 50


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


def layer_group(name: str, encoders: int) -> str | None:
    parts = name.split(".")
    if parts[0] == "encoders" and len(parts) > 2:
        return "encoder" if encoders <= 1 else f"encoder{parts[1]}"
    if parts[0] == "heads" and len(parts) > 2:
        return f"head {parts[1]}"
    return None


def checkpoint_spectra(path: Path, min_eigs: int = MIN_EIGS, keep_eigs: bool = False
                       ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """α of every large-enough layer of one checkpoint (columns: group, layer, shape,
    eigenvalues, alpha, sigma, xmin, ks, n_tail, trust) and, with ``keep_eigs``, the
    eigenvalues by layer name."""
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
        if eigs.size < min_eigs:
            continue
        fit = fit_spectrum(eigs)
        rows.append({"group": group, "layer": name[: -len(".weight")],
                     "shape": "×".join(map(str, tensor.shape)), "eigenvalues": int(eigs.size),
                     "alpha": fit.alpha, "sigma": fit.sigma, "xmin": fit.xmin, "ks": fit.ks,
                     "n_tail": fit.n_tail, "trust": "untrustworthy (α > 8)" if fit.alpha > 8 else ""})
        if keep_eigs:
            kept[name[: -len(".weight")]] = eigs
    return pd.DataFrame(rows), kept


def load_spectra(runs: pd.DataFrame, min_eigs: int = MIN_EIGS
                 ) -> tuple[pd.DataFrame, dict[str, str], dict[tuple[str, str], dict]]:
    """α per layer for every usable run with a checkpoint (plus benchmark, method, seed),
    problems by run folder, and the eigenvalues of the first seed of each (benchmark, method)."""
    frames, problems, eigs = [], {}, {}
    for run in runs[runs.usable].itertuples():
        path = Path(run.run_dir) / "checkpoint.pt"
        if not path.exists():
            continue
        first = (run.benchmark, run.method) not in eigs
        try:
            table, kept = checkpoint_spectra(path, min_eigs, keep_eigs=first)
        except (OSError, EOFError, RuntimeError, ValueError, KeyError, AttributeError,
                pickle.UnpicklingError) as exc:
            problems[run.run_dir] = f"checkpoint.pt unreadable ({type(exc).__name__}: {exc})"
            continue
        if first:
            eigs[(run.benchmark, run.method)] = kept
        frames.append(table.assign(benchmark=run.benchmark, method=run.method, seed=run.seed))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), problems, eigs


def spectra_summary(spectra: pd.DataFrame) -> pd.DataFrame:
    """α per benchmark, method, group and layer: mean and std over seeds."""
    return (spectra.groupby(["benchmark", "method", "group", "layer"], sort=False)
            .agg(alpha=("alpha", "mean"), alpha_std=("alpha", "std"), seeds=("seed", "nunique"),
                 eigenvalues=("eigenvalues", "first")).reset_index())


def plot_alpha_bars(summary: pd.DataFrame, stem: Path, title: str) -> Path:
    """One panel per group (encoder, each head): α per layer, one bar per method."""
    groups = list(dict.fromkeys(summary.group))
    methods = sorted(summary.method.unique())
    fig, axes = grid(len(groups), 6.0, 3.2, cols=2)
    width = 0.8 / max(len(methods), 1)
    for ax, group in zip(axes, groups):
        part = summary[summary.group == group]
        layers = list(dict.fromkeys(part.layer))
        for i, method in enumerate(methods):
            m = part[part.method == method].set_index("layer").reindex(layers)
            ax.bar(np.arange(len(layers)) + i * width, m.alpha.to_numpy(), width,
                   yerr=m.alpha_std.fillna(0).to_numpy(), label=method)
        ax.axhspan(2, 6, color="green", alpha=0.07, label="2 ≤ α ≤ 6")
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2,
                      [lay.split(".", 2)[-1] for lay in layers], rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("power-law exponent α")
        ax.set_title(group)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    return save(fig, stem)


def plot_esd(eigs_by_method: dict[str, dict[str, np.ndarray]], layers: list[str], stem: Path,
             title: str) -> Path:
    """Empirical spectral densities (log-log histograms) of the chosen layers, one line per
    method, with the fitted power law over its tail (dashed)."""
    fig, axes = grid(len(layers), 4.2, 3.2)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, layer in zip(axes, layers):
        for i, (method, eigs) in enumerate(sorted(eigs_by_method.items())):
            if layer not in eigs:
                continue
            x = eigs[layer]
            color = colors[i % len(colors)]
            bins = np.geomspace(x.min(), x.max(), 40)
            dens, edges = np.histogram(x, bins=bins, density=True)
            mid = np.sqrt(edges[1:] * edges[:-1])
            ax.plot(mid[dens > 0], dens[dens > 0], color=color, lw=1)
            fit = fit_spectrum(x)
            frac = fit.n_tail / x.size
            t = mid[mid >= fit.xmin]
            ax.plot(t, frac * (fit.alpha - 1) / fit.xmin * (t / fit.xmin) ** (-fit.alpha), "--",
                    color=color, label=f"{method} α={fit.alpha:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue λ of WᵀW")
        ax.set_ylabel("density")
        ax.set_title(layer, fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, stem)
