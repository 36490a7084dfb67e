"""The leaderboard's tables and front plot, from run records only.

For one benchmark: every entry that reached its final stage is a row. Its test metrics at
the last epoch, per seed, give Δp_task against the tuned single-task rows (the mean over
seeds of stl at its own selected configuration), so that every row, tuned or untuned, is
read against one base. Beside the mean: the worst task's Δ (the task whose mean change is
lowest), the mean rank over every metric among the tuned rows, the difference from tuned
equal weighting with a paired t-test over seeds (Holm-corrected over the rows), and the
untuned configuration's Δp_task, so that the effect of tuning is visible.

Why paired: for one seed, every method starts from the same initial weights and sees the
same batches in the same order (the run seed fixes both), so seed-to-seed variation that
comes from the initialisation and the data order is shared; the difference per seed removes
it. Where the seeds of the two rows differ (a diverged seed), Welch's t-test is used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.measures import (adjust_p_values, detectable_difference, mean_rank,
                               relative_changes, welch_t_test)
from analysis.records import RunRecord


@dataclass
class Row:
    label: str
    selected: tuple[str, ...]
    tuned: list[RunRecord]
    untuned: list[RunRecord]


def metric_columns(record: RunRecord) -> list[tuple[str, str, bool]]:
    """(task, metric, higher is better) in the record's task order."""
    return [(t, m, bool(spec["higher_is_better"])) for t, metrics in record.tasks.items()
            for m, spec in metrics.items()]


def test_values(record: RunRecord, columns) -> np.ndarray:
    final = record.final("test")
    return np.array([final.get(t, {}).get(m, math.nan) for t, m, _ in columns], dtype=float)


def complete(records: list[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.status == "complete"]


def per_seed_delta(records: list[RunRecord], base: np.ndarray, columns) -> dict[int, float]:
    """Δp_task (%) of every complete seed against ``base``."""
    tasks = np.array([t for t, _, _ in columns])
    higher = [h for _, _, h in columns]
    out = {}
    for r in complete(records):
        rel = pd.Series(relative_changes(test_values(r, columns), base, higher))
        out[r.seed] = float(100.0 * rel.groupby(tasks).mean().mean())
    return out


def per_task_delta(records: list[RunRecord], base: np.ndarray, columns) -> pd.Series:
    """Mean over seeds of each task's Δ (%), the mean of its metrics' relative changes."""
    tasks = np.array([t for t, _, _ in columns])
    higher = [h for _, _, h in columns]
    rel = np.array([relative_changes(test_values(r, columns), base, higher)
                    for r in complete(records)])
    return pd.Series(100.0 * rel.mean(axis=0)).groupby(tasks, sort=False).mean()


def compare(a: dict[int, float], b: dict[int, float], level: float = 0.05
            ) -> tuple[float, float, str, float]:
    """(difference of means, two-sided p, test name, difference detectable with 80% power
    at ``level``) of per-seed values a vs b."""
    shared = sorted(set(a) & set(b))
    if len(shared) == len(a) == len(b) and len(shared) >= 2:
        x, y = np.array([a[s] for s in shared]), np.array([b[s] for s in shared])
        diff = x - y
        # no spread in the differences (identical rows): the test is undefined
        flat = np.ptp(diff) <= 1e-12 * (1.0 + np.abs(diff).max())
        p = math.nan if flat else float(stats.ttest_rel(x, y).pvalue)
        detectable = math.nan if flat else detectable_difference(x, y, level, paired=True)
        return float(diff.mean()), p, "paired", detectable
    x, y = list(a.values()), list(b.values())
    _, p = welch_t_test(x, y)
    return float(np.mean(x) - np.mean(y)), p, "Welch", detectable_difference(x, y, level)


def _mean_std(values) -> str:
    values = np.asarray(list(values), dtype=float)
    if not len(values):
        return "–"
    std = values.std(ddof=1) if len(values) > 1 else math.nan
    return f"{values.mean():+.2f} ± {std:.2f}" if math.isfinite(std) else f"{values.mean():+.2f}"


def short(overrides: tuple[str, ...]) -> str:
    """``train.lr=0.001 method.cagrad.c=0.2`` -> ``lr=0.001 c=0.2`` (front weights left out)."""
    parts = [o.split("=", 1) for o in overrides if not o.startswith("method.fixed.weights")]
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in parts)


def leaderboard_frame(rows: list[Row], correction: str = "holm") -> tuple[pd.DataFrame, list[str]]:
    """One line per row (sorted by tuned Δp_task), and notes. Needs the ``stl`` and ``ew``
    rows."""
    by_label = {row.label: row for row in rows}
    if "stl" not in by_label or not complete(by_label["stl"].tuned):
        raise ValueError("no complete tuned stl runs: no base for Δp_task")
    columns = metric_columns(complete(by_label["stl"].tuned)[0])
    base = np.mean([test_values(r, columns) for r in complete(by_label["stl"].tuned)], axis=0)
    deltas = {row.label: per_seed_delta(row.tuned, base, columns) for row in rows}
    ew = deltas.get("ew")
    means = pd.DataFrame({row.label: np.mean([test_values(r, columns)
                                              for r in complete(row.tuned)], axis=0)
                          for row in rows if complete(row.tuned)}).T
    ranks = mean_rank(means, [h for _, _, h in columns])
    lines = []
    family = sum(1 for row in rows if row.label != "ew" and deltas[row.label])
    level = 0.05 if correction == "none" else 0.05 / max(family, 1)
    for row in rows:
        d = deltas[row.label]
        tasks = per_task_delta(row.tuned, base, columns) if d else pd.Series(dtype=float)
        worst = tasks.idxmin() if len(tasks) else None
        vs_ew = p = detectable = math.nan
        test = ""
        if ew and d and row.label != "ew":
            vs_ew, p, test, detectable = compare(d, ew, level)
        untuned = per_seed_delta(row.untuned, base, columns)
        diverged = sum(r.status != "complete" for r in row.tuned)
        lines.append({
            "label": row.label, "selected": short(row.selected),
            "dp": np.mean(list(d.values())) if d else math.nan,
            "dp_text": _mean_std(d.values()),
            "worst": f"{worst} {tasks[worst]:+.2f}" if worst is not None else "–",
            "rank": ranks.get(row.label, math.nan),
            "vs_ew": vs_ew, "p": p, "test": test, "detectable": detectable,
            "untuned": _mean_std(untuned.values()) if row.untuned else "–",
            "seeds": f"{len(d)}" + (f" ({diverged} diverged)" if diverged else ""),
        })
    frame = pd.DataFrame(lines)
    family = frame.p.notna()
    frame["p_adjusted"] = math.nan
    frame.loc[family, "p_adjusted"] = adjust_p_values(frame.p[family].to_numpy(), correction)
    frame = frame.sort_values("dp", ascending=False, na_position="last").reset_index(drop=True)
    tests = sorted(set(frame.test) - {""})
    if not ew:  # otherwise stl at least is tested against it
        return frame, ["Δ against tuned stl (mean of its seeds); no row is tested against "
                       "tuned ew yet: ew's seeds are not finished."]
    notes = [f"Δ against tuned stl (mean of its seeds); difference from tuned ew: "
             f"{' or '.join(tests)} t-test on per-seed Δp_task, two-sided, "
             f"{correction}-corrected over {int(family.sum())} rows; * adjusted p < 0.05; "
             f"detectable: the difference that test finds with 80% power at level {level:.3g}, "
             f"given the observed spread of the seeds."]
    return frame, notes


def to_markdown(frame: pd.DataFrame, notes: list[str], untuned: bool = True) -> str:
    """The table; ``untuned=False`` leaves out the untuned column (a protocol that trains
    no untuned seeds)."""
    head = ["method", "selected", "Δp_task (%) ↑", "worst task Δ (%)", "mean rank ↓",
            "vs ew", "p (adj.)", "detectable", "untuned Δp_task (%)", "seeds"]
    keep = [i for i, name in enumerate(head) if untuned or not name.startswith("untuned")]
    out = ["| " + " | ".join(head[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    for r in frame.itertuples():
        star = " *" if isinstance(r.p_adjusted, float) and r.p_adjusted < 0.05 else ""
        vs = f"{r.vs_ew:+.2f}{star}" if math.isfinite(r.vs_ew) else "–"
        p = f"{r.p:.2g} ({r.p_adjusted:.2g})" if math.isfinite(r.p) else "–"
        rank = f"{r.rank:.2f}" if math.isfinite(r.rank) else "–"
        detectable = f"±{r.detectable:.2f}" if math.isfinite(r.detectable) else "–"
        cells = [r.label, r.selected or "–", r.dp_text, r.worst, rank, vs, p, detectable,
                 r.untuned, r.seeds]
        out.append("| " + " | ".join(cells[i] for i in keep) + " |")
    return "\n".join(out + [""] + notes)


def metrics_markdown(rows: list[Row], order: list[str]) -> str:
    """Every test metric (last epoch), mean ± std over the complete tuned seeds, one line per
    row in ``order`` (the Δp_task table's), with each metric's direction in its header."""
    by_label = {row.label: row for row in rows if complete(row.tuned)}
    labels = [label for label in order if label in by_label]
    if not labels:
        return ""
    columns = metric_columns(complete(by_label[labels[0]].tuned)[0])
    head = ["method"] + [f"{t} {m} {'↑' if h else '↓'}" for t, m, h in columns]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        values = np.array([test_values(r, columns) for r in complete(by_label[label].tuned)])
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.full(len(columns), math.nan)
        cells = [f"{m:.4g} ± {s:.2g}" if math.isfinite(s) else f"{m:.4g}"
                 for m, s in zip(values.mean(axis=0), std)]
        out.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(out + ["", "Test metrics at the last epoch, mean ± std over the seeds of "
                             "each row's selected configuration."])


def front_points(rows: list[Row]) -> tuple[list[str], pd.DataFrame, list[bool]]:
    """The first metric of each of two tasks (test, mean over complete tuned seeds) per row,
    and whether each is higher-is-better."""
    first = next(r for row in rows for r in complete(row.tuned))
    names = [f"{t} {next(iter(m))}" for t, m in first.tasks.items()]
    columns = [(t, next(iter(m)), True) for t, m in first.tasks.items()]
    higher = [bool(next(iter(m.values()))["higher_is_better"]) for m in first.tasks.values()]
    points = {row.label: np.mean([test_values(r, columns) for r in complete(row.tuned)], axis=0)
              for row in rows if complete(row.tuned)}
    return names, pd.DataFrame(points, index=names).T, higher


def _front_weight(label: str) -> float:
    return 0.5 if label == "ew" else float(label.split("=")[1])


def front_and_methods(labels) -> tuple[list[str], list[str]]:
    """The fixed-weight entries and ew (the front's w = 0.5), in the order of w; and the
    methods read against them (every other row but stl)."""
    front = [label for label in labels if label.startswith("fixed w=") or label == "ew"]
    return (sorted(front, key=_front_weight),
            [label for label in labels if label not in front and label != "stl"])


def dominated_by_polyline(point: np.ndarray, vertices: np.ndarray) -> bool:
    """Whether some point of the polyline through ``vertices`` (in order) is at least as
    good as ``point`` in every coordinate (higher is better). A point q = a + s (b − a) of a
    segment, s in [0, 1], needs a_i + s d_i ≥ p_i for every i: each coordinate bounds s from
    one side, and the segment dominates p when the bounds leave some s."""
    if len(vertices) == 1:
        return bool(np.all(vertices[0] >= point))
    for a, b in zip(vertices[:-1], vertices[1:]):
        low, high = 0.0, 1.0
        for ai, di, pi in zip(a, b - a, point):
            need = pi - ai
            if di > 0:
                low = max(low, need / di)
            elif di < 0:
                high = min(high, need / di)
            elif need > 0:
                low, high = 1.0, 0.0
        if low <= high:
            return True
    return False


def beyond_front(rows: list[Row]) -> tuple[list[str], list[str]]:
    """Xin et al.'s bar (2022): the methods (not stl, not the front itself) that no point of
    the tuned fixed-weight front, nor of the straight line between two neighbouring front
    points, matches or beats on both tasks; and the rest. Lower-is-better metrics are
    negated first."""
    _, points, higher = front_points(rows)
    signed = points * np.where(higher, 1.0, -1.0)
    front, others = front_and_methods(points.index)
    if not front:
        return [], []
    vertices = signed.loc[front].to_numpy()
    beyond = [label for label in others
              if not dominated_by_polyline(signed.loc[label].to_numpy(), vertices)]
    return beyond, [label for label in others if label not in beyond]


def front_text(rows: list[Row]) -> str:
    """The front's verdict in words (test metrics, means over seeds)."""
    beyond, inside = beyond_front(rows)
    if not beyond and not inside:
        return ""
    text = ("Against the fixed-weight front (Xin et al. 2022: a method beats static weighting "
            "only if no tuned fixed weighting, nor a straight line between two neighbouring "
            "ones, is at least as good on both tasks; test, means over seeds): ")
    if beyond:
        text += f"beyond it, {', '.join(beyond)}; "
    text += f"on or inside it, {', '.join(inside)}." if inside else "no method inside it."
    return text + (" Positions of means, not a test: a distance from the front smaller than "
                   "the seeds' spread says nothing.")


def _zoom_box(points: pd.DataFrame, names: list[str], labels: list[str]):
    """The region of the crowd of methods around ew: the 10-90 % range of each coordinate
    over the methods and ew, padded, then widened until no point lies just outside an edge
    (where its marker would show, cut and unlabelled); None when there are too few to
    crowd."""
    if len(labels) < 6:
        return None
    box = []
    for name in names:
        values = points.loc[labels, name]
        low, high = values.quantile(0.1), values.quantile(0.9)
        pad = 0.25 * (high - low) or 0.5
        low, high = low - pad, high + pad
        margin = 0.04 * (high - low)
        while near := [v for v in points[name] if low - margin <= v < low]:
            low = min(near) - margin
        while near := [v for v in points[name] if high < v <= high + margin]:
            high = max(near) + margin
        box.append((low, high))
    return box


def plot_front(rows: list[Row], path, title: str) -> None:
    """Task 1 vs task 2: the fixed-weight front (with ew at w = 0.5) as a line, stl as a
    star, every other method as a point; where the methods crowd around ew, a second panel
    zooms on them, and only the points outside it are labelled in the first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    names, points, _ = front_points(rows)
    front, others = front_and_methods(points.index)
    box = _zoom_box(points, names, others + [label for label in front if label == "ew"])
    fig, axes = plt.subplots(1, 2 if box else 1, figsize=(11.5 if box else 6.4, 5.2),
                             squeeze=False)

    def inside(label):
        return box is not None and all(lo <= points.loc[label, n] <= hi
                                       for n, (lo, hi) in zip(names, box))

    for panel, ax in enumerate(axes[0]):
        zoomed = panel == 1
        ax.plot(points.loc[front, names[0]], points.loc[front, names[1]], "-o", color="0.4",
                label="fixed weights (w, 1 − w), tuned")
        for label in front:
            if not zoomed or inside(label):
                text = "ew (w=0.5)" if label == "ew" else f"w={_front_weight(label):g}"
                ax.annotate(text, points.loc[label, names], fontsize=7,
                            color="0.3", xytext=(3, -9), textcoords="offset points")
        ax.scatter(points.loc[others, names[0]], points.loc[others, names[1]], s=14, zorder=3,
                   label="methods, tuned")
        for label in others:
            if inside(label) == zoomed:
                ax.annotate(label, points.loc[label, names], fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        if "stl" in points.index:
            ax.scatter(*points.loc["stl", names], marker="*", s=90, color="black", zorder=4,
                       label="stl (separate networks)")
        if zoomed:
            ax.set_xlim(*box[0])
            ax.set_ylim(*box[1])
            ax.set_title("the methods around ew", fontsize=9)
        else:
            ax.set_title(title, fontsize=9)
            if box:
                ax.add_patch(Rectangle((box[0][0], box[1][0]), box[0][1] - box[0][0],
                                       box[1][1] - box[1][0], fill=False, ls="--", color="0.6"))
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
