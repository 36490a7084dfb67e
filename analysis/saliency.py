"""Saliency maps and statistics of runs, side by side: the figures, tables and training
curves that ``run_bench.py saliency`` writes, and the report's section that shows them.

Everything here works on numpy arrays and the files runs write; the maps themselves are
computed from checkpoints by ``engine/runs/saliency.py``. docs/saliency.md defines every
map and number.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis.collect import load_train_records
from analysis.plots import plt

SUMMARY = "summary.csv"
SUMMARY_MD = "summary.md"
NOTES = "notes.txt"
TRAINING = "training"

KINDS = {
    "saliency": "|Ŝ_t| (channel-mean saliency at Z)",
    "distribution": "P_t (task distribution at Z) and its entropy",
    "gradcam": "Grad-CAM of L_t at Z, on the input",
    "input_grad": "|∂L_t/∂x| (max over input channels), on the input",
}


@dataclass
class RunMaps:
    """One run's maps on the chosen samples (S of them, T tasks, N positions of Z)."""

    run_dir: str
    label: str
    method: str
    seed: int
    config_hash: str
    epoch: int
    tasks: tuple[str, ...]
    spatial: tuple[int, ...] | None
    """Z's spatial shape (H', W'); None for vector features (N = 1)."""
    magnitude: np.ndarray
    """[T, S, N] |Ŝ_t|: the absolute channel mean of ∂L_t/∂Z."""
    distribution: np.ndarray
    """[T, S, N] P_t."""
    entropy: np.ndarray
    """[S, N] H = -Σ_t P_t log(P_t + ε)."""
    images: np.ndarray | None = None
    """[K, S, C, H, W] the inputs (K = 1 on single-input benchmarks, T on multi-input ones:
    each task's own image); None when the inputs are not images."""
    gradcam: np.ndarray | None = None
    """[T, S, H, W], on spatial Z with image inputs only."""
    input_grad: np.ndarray | None = None
    """[T, S, H, W], with image inputs only."""
    stats: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- tables

def summary_frame(maps: list[RunMaps]) -> pd.DataFrame:
    rows = []
    for m in maps:
        rows.append({"run": m.label, "method": m.method, "seed": m.seed,
                     "config_hash": m.config_hash, "epoch": m.epoch, **m.stats,
                     "run_dir": m.run_dir})
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if not np.isfinite(v) else f"{v:.{digits}g}"
        return str(v).replace("|", "\\|")

    cols = [c for c in frame.columns if c != "run_dir"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in frame[cols].itertuples(index=False)]
    return "\n".join(lines)


def printable(frame: pd.DataFrame) -> str:
    """The main columns, for the terminal."""
    keep = [c for c in ("run", "epoch", "samples", "positions", "entropy", "entropy_norm",
                        "topk_jaccard", "csa_pos", "csa_neg", "L_csa") if c in frame.columns]
    return markdown_table(frame[keep])


# --------------------------------------------------------------------------- figures

def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """[C, H, W] -> an array imshow draws (RGB for 3 channels, else grey), min-max scaled."""
    img = image.astype(np.float64)
    img = img if img.shape[0] in (1, 3) else img.mean(axis=0, keepdims=True)
    low, high = img.min(), img.max()
    img = (img - low) / (high - low) if high > low else np.zeros_like(img)
    if img.shape[0] == 3:
        return img.transpose(1, 2, 0), None
    return img[0], "gray"


def _save(fig, stem: Path, pdf: bool = True) -> Path:
    """``stem``.png, and ``stem``.pdf unless ``pdf`` is off (the maps of every sample but
    the first, which the report shows: rendering costs about a second per file)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".png"))
    if pdf:
        fig.savefig(stem.with_suffix(".pdf"))
    plt.close(fig)
    return stem.with_suffix(".png")


PANEL = 1.8      # inches per map panel
GAP = 0.42       # inches between panels (tick labels)
LEFT = 0.75      # inches for the row labels
TOP = 0.75       # inches for the title
BAR = 0.75       # inches under the panels for the colour bars and their labels


def _panel_grid(rows: int, cols: int):
    """rows × cols map panels of equal size, with room below each column for its colour
    bar (a fixed layout: constrained layout costs about a second per figure)."""
    width = LEFT + cols * PANEL + (cols - 1) * GAP + 0.15
    height = TOP + rows * PANEL + (rows - 1) * GAP + BAR + 0.35
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, gridspec_kw={
        "left": LEFT / width, "right": 1 - 0.15 / width, "top": 1 - TOP / height,
        "bottom": (BAR + 0.35) / height, "wspace": GAP / PANEL, "hspace": GAP / PANEL})
    for ax in axes.ravel():
        ax.grid(False)
        ax.tick_params(labelsize=6, length=2)
    return fig, axes


def _colour_bar(fig, im, column, label: str) -> None:
    """A horizontal colour bar under the bottom panel of ``column``."""
    box = column[-1].get_position()
    height = fig.get_figheight()
    cax = fig.add_axes([box.x0 + 0.05 * box.width, 0.52 / height, 0.9 * box.width,
                        0.1 / height])
    bar = fig.colorbar(im, cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=6)
    bar.set_label(label, fontsize=7)


def _scaled(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], float, str]:
    """The arrays divided by a power of ten that brings their maximum into [1, 10) when it
    is very small or large (the colour bar says so), with the shared maximum."""
    top = _column_scale(arrays)
    if 1e-2 <= top < 1e3:
        return arrays, top, ""
    power = math.floor(math.log10(top))
    factor = 10.0 ** power
    return [a / factor for a in arrays], top / factor, f" ×1e{power}"


def _column_scale(values: list[np.ndarray]) -> float:
    top = max(float(np.nanmax(v)) if v.size else 0.0 for v in values)
    return top if top > 0 and np.isfinite(top) else 1.0


def _image_of(m: RunMaps, task_index: int, sample: int) -> np.ndarray | None:
    if m.images is None:
        return None
    return m.images[task_index if m.images.shape[0] > 1 else 0, sample]


def _label_rows(axes, maps: list[RunMaps], what: str) -> None:
    for row, m in enumerate(maps):
        axes[row, 0].set_ylabel(f"{m.label}\n{what}", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("x", fontsize=7)


def plot_sample(maps: list[RunMaps], kind: str, sample: int, stem: Path, title: str) -> Path:
    """One figure of ``kind`` for one sample: rows = runs, columns = the input and the tasks
    (and the entropy for ``distribution``); every column has one colour scale across runs
    and its colour bar under it."""
    first = maps[0]
    tasks = first.tasks
    multi = first.images is not None and first.images.shape[0] > 1
    with_input = first.images is not None and not multi
    cols = int(with_input) + len(tasks) + int(kind == "distribution")
    fig, axes = _panel_grid(len(maps), cols)
    offset = int(with_input)
    if with_input:
        for row, m in enumerate(maps):
            img, cmap = _display(_image_of(m, 0, sample))
            axes[row, 0].imshow(img, cmap=cmap)
        axes[0, 0].set_title("input", fontsize=9)
    spatial = first.spatial
    for j, task in enumerate(tasks):
        col = axes[:, offset + j]
        if kind in ("saliency", "distribution"):
            arrays = [(m.magnitude if kind == "saliency" else m.distribution)[j, sample]
                      .reshape(spatial) for m in maps]
            arrays, vmax, unit = _scaled(arrays) if kind == "saliency" else (arrays, 1.0, "")
            for ax, a in zip(col, arrays):
                im = ax.imshow(a, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            label = "|Ŝ_t|" if kind == "saliency" else "P_t"
        else:
            arrays = [(m.gradcam if kind == "gradcam" else m.input_grad)[j, sample] for m in maps]
            arrays, vmax, unit = _scaled(arrays)
            for ax, m, a in zip(col, maps, arrays):
                img, cmap = _display(_image_of(m, j, sample))
                ax.imshow(img, cmap=cmap)
                # Values under 5% of the column's maximum are left transparent, so that
                # the image shows where the map is (nearly) zero.
                shown = np.ma.masked_less(a, 0.05 * vmax)
                im = ax.imshow(shown, cmap="jet", alpha=0.55, vmin=0, vmax=vmax,
                               interpolation="nearest")
            label = "Grad-CAM" if kind == "gradcam" else "|∂L/∂x|"
        col[0].set_title(f"{task}", fontsize=9)
        _colour_bar(fig, im, col, f"{label} ({task}){unit}")
    if kind == "distribution":
        col = axes[:, -1]
        top = math.log(len(tasks))
        for ax, m in zip(col, maps):
            im = ax.imshow(m.entropy[sample].reshape(spatial), cmap="magma", vmin=0, vmax=top,
                           interpolation="nearest")
        col[0].set_title("entropy over tasks", fontsize=9)
        _colour_bar(fig, im, col, f"H (nats; log T = {top:.2f})")
    where = "Z position" if kind in ("saliency", "distribution") else "input pixel"
    _label_rows(axes, maps, f"y ({where})")
    for ax in axes[-1]:
        ax.set_xlabel(f"x ({where})", fontsize=7)
    if with_input:
        axes[-1, 0].set_xlabel("x (input pixel)", fontsize=7)
    what = KINDS[kind] + (" (each task's own image; sample b of every task paired)"
                          if multi else "")
    fig.suptitle(f"{title}\n{what}", fontsize=10, y=1 - 0.08 / fig.get_figheight())
    return _save(fig, stem, pdf=sample == 0)


def plot_vector_distribution(maps: list[RunMaps], stem: Path, title: str) -> Path:
    """Vector features (one position per sample): per run, P_t of every sample as a
    tasks × samples heat map, and the entropy of each sample."""
    tasks = maps[0].tasks
    samples = maps[0].distribution.shape[1]
    fig, axes = plt.subplots(len(maps), 2, squeeze=False, layout="constrained",
                             figsize=(max(4.0, 0.35 * samples + 2.5) + 3.2,
                                      max(1.6, 0.22 * len(tasks) + 0.9) * len(maps) + 1.0),
                             gridspec_kw={"width_ratios": [max(4.0, 0.35 * samples + 1), 3]})
    top = math.log(len(tasks))
    for row, m in enumerate(maps):
        ax = axes[row, 0]
        ax.grid(False)
        im = ax.imshow(m.distribution[:, :, 0], cmap="viridis", vmin=0, vmax=1, aspect="auto",
                       interpolation="nearest")
        ax.set_yticks(range(len(tasks)), tasks, fontsize=6)
        ax.set_ylabel(m.label, fontsize=8)
        ax.tick_params(labelsize=6)
        ent = axes[row, 1]
        ent.bar(range(samples), m.entropy[:, 0], color="tab:purple")
        ent.set_ylim(0, top * 1.02)
        ent.axhline(top, color="grey", lw=0.8, ls="--")
        ent.set_ylabel("H (nats)", fontsize=7)
        ent.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("sample", fontsize=8)
    axes[-1, 1].set_xlabel("sample", fontsize=8)
    axes[0, 0].set_title("P_t per sample (tasks × samples)", fontsize=9)
    axes[0, 1].set_title(f"entropy over tasks (dashed: log T = {top:.2f})", fontsize=9)
    bar = fig.colorbar(im, ax=list(axes[:, 0]), location="bottom", shrink=0.8, aspect=25)
    bar.set_label("P_t", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    return _save(fig, stem)


# --------------------------------------------------------------------------- over training

OWN_TERMS = re.compile(r"^(repmtl|repmtl_tsr|repmtl_csa)\.(task_entropy|L_tsr|L_csa)$")
LOGGED = re.compile(r"^saliency\.(task_entropy|L_tsr|L_csa|norm\.(.+))$")


def training_curves(run_dirs: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per-epoch saliency statistics of each run (``{label: run_dir}``) from the train
    records of metrics.jsonl: ``engine.saliency_every``'s ``saliency.*`` where logged, else
    a Rep-MTL variant's own ``<variant>.task_entropy``, ``L_tsr``, ``L_csa``. Columns
    label, epoch, stat, value, source; and, per run without any, the reason."""
    rows, missing = [], {}
    for label, run_dir in run_dirs.items():
        try:
            records = load_train_records(Path(run_dir))
        except (OSError, ValueError) as exc:
            missing[label] = f"metrics.jsonl unreadable ({exc})"
            continue
        found = []
        for rec in records:
            logged = rec.get("method") or {}
            ours = {k: v for k, v in logged.items() if LOGGED.match(k)}
            own = {k: v for k, v in logged.items() if OWN_TERMS.match(k)}
            source, values = ("engine.saliency_every", ours) if ours else ("method's own log", own)
            for key, value in values.items():
                if value is None:
                    continue
                stat = key.split(".", 1)[1]
                found.append({"label": label, "epoch": rec.get("epoch"), "stat": stat,
                              "value": float(value), "source": source})
        if found:
            rows += found
        else:
            missing[label] = ("no saliency statistics in metrics.jsonl (train with --set "
                              "engine.saliency_every=N to log them)")
    return pd.DataFrame(rows, columns=["label", "epoch", "stat", "value", "source"]), missing


def plot_training(curves: pd.DataFrame, stem: Path, title: str) -> Path:
    """Panels: normalised task entropy, L_csa, and each task's saliency norm, one line per
    run, over epochs."""
    stats = [s for s in ("task_entropy", "L_csa") if s in set(curves.stat)]
    norms = sorted(s for s in set(curves.stat) if s.startswith("norm."))
    panels = stats + norms
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    height = 2.9 * rows + 0.7
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, height), squeeze=False)
    fig.subplots_adjust(left=0.8 / (3.8 * cols), right=0.98, bottom=0.5 / height,
                        top=1 - 0.75 / height, wspace=0.45, hspace=0.55)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    names = {"task_entropy": "task entropy ÷ log T", "L_csa": "L_csa (τ = 0.1)"}
    for ax, stat in zip(axes.ravel(), panels):
        part = curves[curves.stat == stat]
        for label, p in part.groupby("label", sort=False):
            p = p.sort_values("epoch")
            style = "-" if p.source.iloc[0] == "engine.saliency_every" else "--"
            ax.plot(p.epoch, p.value, style, marker=".", label=label)
        norm = stat.startswith("norm.")
        ax.set_title(names.get(stat, f"‖S_t‖ of {stat[5:]}" if norm else stat))
        ax.set_xlabel("epoch")
        ax.set_ylabel(names.get(stat, "‖∂L_t/∂Z‖_F" if norm else stat))
        values = part.value[part.value > 0]
        if norm and len(values) and values.max() > 20 * values.min():
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    # Name only the line styles the figure draws.
    styles = {"engine.saliency_every": "solid: engine.saliency_every",
              "method's own log": "dashed: the method's own log"}
    legend = "; ".join(text for source, text in styles.items() if source in set(curves.source))
    fig.suptitle(f"{title}\n{legend}", fontsize=10)
    return _save(fig, stem)


# --------------------------------------------------------------------------- the report

def report_section(doc, folder: Path) -> None:
    """The report's "Saliency" section, when ``run_bench.py saliency`` wrote into
    ``folder`` (the report's ``saliency/``): its table, notes and first sample's figures."""
    table = folder / SUMMARY
    if not table.is_file():
        return
    try:
        frame = pd.read_csv(table)
    except (OSError, ValueError):
        return
    doc.heading(1, "Saliency")
    notes = (folder / NOTES).read_text().strip() if (folder / NOTES).is_file() else ""
    doc.para(f"From `run_bench.py saliency` ({folder}); definitions in docs/saliency.md."
             + (f"\n{notes}" if notes else ""))
    doc.frame_table("saliency_summary", frame.drop(columns=["run_dir"], errors="ignore"),
                    "Per run, on the same samples: mean entropy over tasks of P_t (nats and "
                    "÷ log T), mean pairwise Jaccard overlap of the tasks' top-k saliency "
                    "positions, CSA's positive and negative similarities and L_csa, each "
                    "task's saliency norm and share of positions it dominates")
    figures = sorted(folder.glob("sample0_*.png")) + sorted(folder.glob("distribution.png"))
    if (folder / f"{TRAINING}.png").is_file():
        figures.append(folder / f"{TRAINING}.png")
    for png in figures:
        kind = png.stem.split("_", 1)[1] if png.stem.startswith("sample0_") else png.stem
        what = ("saliency statistics over training" if kind == TRAINING
                else f"{KINDS.get(kind, kind)}, first sample" if png.stem.startswith("sample0_")
                else "P_t per sample (vector features)")
        doc.figure(png, f"Saliency: {what}")


def read_summary(folder: Path) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / SUMMARY)

