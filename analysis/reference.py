"""The published tables of the Rep-MTL paper (results/reference/*.csv) as data, and their
comparison with reproduced numbers.

Column names: ``<task>_<metric>`` on NYUv2/Cityscapes (tasks seg/depth/normal), the domain
name on Office-31/Office-Home (metric ``acc``). Units are those printed in the paper
(results/reference/README.md): mIoU, pixel accuracy, "within t°" and accuracies in %,
angles in degrees, depth errors as printed, where the Cityscapes relative error is in % while
the NYUv2 one is a plain ratio. Runs declare each metric's unit in summary.json; a run value is
converted to the published unit explicitly by ``unit_factor`` before any comparison.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.measures import delta_p_metric, delta_p_task, mean_rank

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "results" / "reference"
SOURCE = "Wang, Li, Xu, Rep-MTL, ICCV 2025 (arXiv 2507.21049v1)"
FILES = {"nyuv2": "repmtl_paper_nyuv2.csv", "cityscapes": "repmtl_paper_cityscapes.csv",
         "office31": "repmtl_paper_office31.csv", "officehome": "repmtl_paper_officehome.csv"}
SUMMARY_COLUMNS = {"avg", "avg_std", "delta_p_task", "delta_p_task_std", "delta_p_metric"}
HIGHER = {"miou": True, "pixacc": True, "abs_err": False, "rel_err": False, "angle_mean": False,
          "angle_median": False, "within_11.25": True, "within_22.5": True, "within_30": True,
          "acc": True}
PERCENT = {"miou", "pixacc", "within_11.25", "within_22.5", "within_30", "acc"}
ALIASES = {"repmtl(ew)": "repmtl", "ew+repmtl": "repmtl"}


def canonical_benchmark(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def canonical_method(name: str) -> str:
    """Method names as published ("IMTL-G", "Rep-MTL (EW)") and as registered ("imtl_g",
    "repmtl") map to the same key."""
    key = re.sub(r"[^a-z0-9+()]", "", str(name).lower())
    return ALIASES.get(key, key)


def canonical_task(name: str) -> str:
    return str(name).lower()


@dataclass
class Published:
    """One published table: ``values`` (rows = published method names, columns = (task,
    metric)), the directions and units of the columns, and the printed Δp_task."""
    benchmark: str
    values: pd.DataFrame
    higher: dict[tuple[str, str], bool]
    units: dict[tuple[str, str], str]
    delta_p_task: pd.Series
    delta_p_task_std: pd.Series
    path: Path
    printed: pd.DataFrame | None = None
    """The table's cells exactly as printed (strings), for their rounding."""

    @property
    def stl(self) -> pd.Series:
        return self.values.loc["STL"]

    def row(self, method: str) -> pd.Series | None:
        keys = {canonical_method(m): m for m in self.values.index}
        name = keys.get(canonical_method(method))
        return None if name is None else self.values.loc[name]


def published_unit(benchmark: str, metric: str) -> str:
    if metric == "rel_err" and canonical_benchmark(benchmark) == "cityscapes":
        return "%"
    if metric in PERCENT:
        return "%"
    return "deg" if metric.startswith("angle") else ""


def load_published(benchmark: str, directory: Path = REFERENCE_DIR) -> Published | None:
    """The published table of ``benchmark`` (nyuv2, cityscapes, office31, officehome; any
    spelling), or None when the paper has none."""
    key = canonical_benchmark(benchmark)
    if key not in FILES or not (Path(directory) / FILES[key]).exists():
        return None
    path = Path(directory) / FILES[key]
    raw = pd.read_csv(path).set_index("method")
    columns = {}
    for col in raw.columns:
        if col in SUMMARY_COLUMNS:
            continue
        if key.startswith("office"):
            columns[col] = (canonical_task(col), "acc")
        else:
            task, metric = col.split("_", 1)
            columns[col] = (task, metric)
    values = raw[list(columns)].rename(columns=columns)
    values.columns = pd.MultiIndex.from_tuples(values.columns, names=["task", "metric"])
    higher = {c: HIGHER[c[1]] for c in values.columns}
    units = {c: published_unit(key, c[1]) for c in values.columns}
    printed = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("method")
    return Published(key, values.astype(float), higher, units, raw["delta_p_task"],
                     raw["delta_p_task_std"], path, printed)


def unit_factor(run_unit: str | None, published: str) -> float:
    """Factor that converts a run's value to the published unit: 100 from a ratio to %,
    1/100 from % to a ratio, 1 when the units agree (other units are never rescaled)."""
    run_unit = run_unit or ""
    if run_unit == published:
        return 1.0
    if published == "%" and run_unit in ("", "ratio", "fraction"):
        return 100.0
    if run_unit == "%" and published in ("", "ratio", "fraction"):
        return 0.01
    return 1.0


def recompute_deltas(pub: Published) -> pd.DataFrame:
    """Δp_task and Δp_metric (%) of every published row, recomputed from the printed means
    against the printed STL row, beside the printed Δp_task."""
    cols = list(pub.values.columns)
    higher = [pub.higher[c] for c in cols]
    tasks = [c[0] for c in cols]
    base = pub.stl[cols].to_numpy()
    out = pd.DataFrame(index=pub.values.index)
    out["delta_p_task"] = [delta_p_task(pub.values.loc[m, cols].to_numpy(), base, higher, tasks)
                           for m in pub.values.index]
    out["delta_p_metric"] = [delta_p_metric(pub.values.loc[m, cols].to_numpy(), base, higher)
                             for m in pub.values.index]
    out["printed_delta_p_task"] = pub.delta_p_task
    return out


# --------------------------------------------------------------------------- the paper's protocol

@dataclass(frozen=True)
class PaperProtocol:
    """How the published numbers of a benchmark were made (Rep-MTL §4 and its code base,
    LibMTL): the selection rule that reproduces them, the profile, epochs and protocol."""
    rule: str
    profile: str
    epochs: int
    protocol: str | None
    """The data protocol of the runs (None: the benchmark has only one)."""
    selection: str


PAPER_PROTOCOLS = {
    "nyuv2": PaperProtocol("best_test_dp", "paper", 200, "libmtl",
                           "the epoch with the best test Δp_task (LibMTL, no validation split)"),
    "cityscapes": PaperProtocol("best_test_dp", "paper", 200, "libmtl",
                                "the epoch with the best test Δp_task (LibMTL, no validation "
                                "split)"),
    "office31": PaperProtocol("best_val_dp", "paper", 100, None,
                              "the epoch with the best validation Δp_task (LibMTL)"),
    "officehome": PaperProtocol("best_val_dp", "paper", 100, None,
                                "the epoch with the best validation Δp_task (LibMTL)"),
}


def paper_protocol(benchmark: str) -> PaperProtocol | None:
    return PAPER_PROTOCOLS.get(canonical_benchmark(benchmark))


def protocol_departures(paper: PaperProtocol, info: dict, rule: str) -> list[str]:
    """How a reproduced row's runs (``info``: profile, epochs, protocol lists) and selection
    ``rule`` differ from the way the published numbers were made; empty when they agree."""
    out = []
    if info.get("profile") != [paper.profile]:
        out.append(f"profile {', '.join(info.get('profile') or ['?'])} (paper: {paper.profile})")
    if info.get("epochs") != [paper.epochs]:
        epochs = ", ".join(map(str, info.get("epochs") or [])) or "unknown"
        out.append(f"{epochs} epochs (paper: {paper.epochs})")
    if paper.protocol is not None and info.get("protocol") != [paper.protocol]:
        got = ", ".join(p or "default" for p in info.get("protocol") or []) or "unknown"
        out.append(f"data protocol {got} (paper: {paper.protocol})")
    if rule != paper.rule:
        out.append(f"selection {rule} (paper: {paper.rule})")
    return out


def decimals(text: str) -> int:
    """Decimal places of a printed number ("0.01282" → 5, "69" → 0)."""
    text = str(text).strip()
    return len(text.split(".", 1)[1]) if "." in text else 0


def clean(value: float, places: int) -> float:
    """``value`` rounded to ``places`` decimals with no negative zero: arithmetic on printed
    numbers leaves noise (−1.7e-18 where 0 is meant) that must not be shown."""
    if not np.isfinite(value):
        return value
    out = round(float(value), places)
    return 0.0 if out == 0 else out


def _arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


def reproduced_vs_published(pub: Published, table) -> tuple[pd.DataFrame, list[str], list[list[str]]]:
    """Per method that the paper also reports, three rows: ours (mean ± std over seeds, in
    the published units), published (as printed; ± std only where the paper prints one) and
    the difference (ours − published, rounded to the printed precision). Returns the numeric
    frame (for CSV: ``<task> <metric>`` and ``..._std``) and the display header and cells.
    ``table`` is an ``analysis.table.Comparison``."""
    tasks = {canonical_task(t): t for t, _ in table.columns}
    pcols = [c for c in pub.values.columns if (tasks.get(c[0]), c[1]) in table.mean.columns]
    header = ["method", "values"] + [f"{t} {m}" + (f" ({pub.units[(t, m)]})" if pub.units[(t, m)]
                                                    else "") + f" {_arrow(pub.higher[(t, m)])}"
                                     for t, m in pcols] + ["Δp_task (%) ↑", "seeds"]
    frame_rows, body = [], []
    for label in table.mean.index:
        prow = pub.row(table.row_method.get(label, label))
        if prow is None or not pcols:
            continue
        pname = prow.name
        ours, ours_std, published, places = {}, {}, {}, {}
        for col in pcols:
            ours_col = (tasks[col[0]], col[1])
            factor = unit_factor(table.units.get(ours_col), pub.units[col])
            ours[col] = float(table.mean.loc[label, ours_col]) * factor
            ours_std[col] = float(table.std.loc[label, ours_col]) * factor
            published[col] = float(prow[col])
            src = f"{col[0]}_{col[1]}" if not pub.benchmark.startswith("office") else None
            cell = (pub.printed.loc[pname, src] if src and pub.printed is not None
                    and src in pub.printed.columns else
                    _office_cell(pub, pname, col))
            places[col] = decimals(cell)
        dp_ours = dp_ours_std = np.nan
        if table.deltas is not None and label in table.deltas.index:
            dp_ours = float(table.deltas.loc[label, "delta_p_task"])
            dp_ours_std = float(table.deltas.loc[label, "delta_p_task_std"])
        dp_pub = float(pub.delta_p_task.get(pname, np.nan))
        dp_pub_std = float(pub.delta_p_task_std.get(pname, np.nan))
        seeds = int(table.seeds[label])
        for kind in ("ours", "published", "difference"):
            num = {"method": label, "published_method": pname, "values": kind}
            cells = [label if kind == "ours" else "", kind if kind != "published" else
                     f"published ({pname})"]
            for col in pcols:
                key = f"{col[0]} {col[1]}"
                p = places[col]
                if kind == "ours":
                    v, sd = clean(ours[col], p + 2), clean(ours_std[col], p + 2)
                    text = f"{ours[col]:.{p}f}" + (f" ± {ours_std[col]:.{p}f}" if np.isfinite(sd) else "")
                elif kind == "published":
                    v, sd = published[col], np.nan
                    text = f"{published[col]:.{p}f}"
                else:
                    v, sd = clean(ours[col] - published[col], p + 2), np.nan
                    d = clean(ours[col] - published[col], p)
                    text = f"{d:+.{p}f}" if d != 0 else f"{0:.{p}f}"
                num[key], num[f"{key}_std"] = v, sd
                cells.append(text)
            if kind == "ours":
                v, sd = dp_ours, dp_ours_std
            elif kind == "published":
                v, sd = dp_pub, dp_pub_std
            else:
                v, sd = dp_ours - dp_pub, np.nan
            v, sd = clean(v, 4), clean(sd, 4)
            num["Δp_task (%)"], num["Δp_task (%)_std"] = v, sd
            cells.append("–" if not np.isfinite(v) else f"{v:+.2f}".replace("+0.00", "0.00")
                         + (f" ± {sd:.2f}" if np.isfinite(sd) else ""))
            cells.append(str(seeds) if kind == "ours" else "")
            frame_rows.append(num)
            body.append(cells)
    return pd.DataFrame(frame_rows), header, body


def _office_cell(pub: Published, pname: str, col) -> str:
    """The printed cell of an Office table column (named by the domain, any case)."""
    if pub.printed is None:
        return "0.00"
    for name in pub.printed.columns:
        if canonical_task(name) == col[0]:
            return pub.printed.loc[pname, name]
    return "0.00"


def _printed_cell(pub: Published, method: str, col) -> str:
    if pub.benchmark.startswith("office"):
        return _office_cell(pub, method, col)
    name = f"{col[0]}_{col[1]}"
    return pub.printed.loc[method, name] if pub.printed is not None else "0"


def _half_unit(text: str) -> float:
    """Half a unit of the last printed digit: the largest rounding error of the value."""
    return 0.5 * 10.0 ** -decimals(text)


def delta_bounds(pub: Published, method: str, per_task: bool) -> tuple[float, float]:
    """The smallest and largest Δp_task (``per_task``) or Δp_metric (%) that the unrounded
    values behind the printed row and STL row could give: every printed value M may be off
    by half a unit of its last digit, and each signed ratio s·(M/B − 1) is monotone in M and
    B (B > 0), so its extremes are at the ends of those intervals (interval arithmetic,
    exact for this affine-in-ratios measure)."""
    cols = list(pub.values.columns)
    tasks = [c[0] for c in cols]
    weights = np.array([1.0 / (len(set(tasks)) * tasks.count(t)) if per_task else 1.0 / len(cols)
                        for t in tasks])
    lo = hi = 0.0
    for w, col in zip(weights, cols):
        m, b = float(pub.values.loc[method, col]), float(pub.stl[col])
        em, eb = _half_unit(_printed_cell(pub, method, col)), _half_unit(_printed_cell(pub, "STL", col))
        ratios = [(m + sm * em) / (b + sb * eb) for sm in (-1, 1) for sb in (-1, 1)]
        sign = 1.0 if pub.higher[col] else -1.0
        terms = [sign * (r - 1.0) for r in ratios]
        lo += w * min(terms)
        hi += w * max(terms)
    return 100.0 * lo, 100.0 * hi


def published_check(pub: Published) -> pd.DataFrame:
    """Every published row's summary measures printed and recomputed from its own means
    against its STL row, side by side: Δp_task, Δp_metric, Δm% (= −Δp_metric) and the mean
    rank among the published methods other than STL (the paper prints no Δm% or rank, and
    Δp_metric only on NYUv2). ``*_bound`` is the largest gap that rounding of the printed
    values (and of the printed Δ itself) can explain; ``disagrees`` lists the measures whose
    printed value lies outside it."""
    rec = recompute_deltas(pub)
    printed_metric = None
    if pub.printed is not None and "delta_p_metric" in pub.printed.columns:
        printed_metric = pub.printed["delta_p_metric"]
    compared = [m for m in pub.values.index if m != "STL"]
    cols = list(pub.values.columns)
    ranks = mean_rank(pub.values.loc[compared, cols], [pub.higher[c] for c in cols])
    rows = []
    for method in pub.values.index:
        row = {"method": method}
        flags = []
        for key, per_task, printed in (
                ("Δp_task", True, pub.printed["delta_p_task"] if pub.printed is not None else None),
                ("Δp_metric", False, printed_metric)):
            value = float(rec.loc[method, "delta_p_task" if per_task else "delta_p_metric"])
            lo, hi = delta_bounds(pub, method, per_task)
            text = "" if printed is None else str(printed.get(method, "")).strip()
            shown = float(text) if text else np.nan
            slack = _half_unit(text) if text else 0.0
            row[f"{key} printed"] = shown
            row[f"{key} recomputed"] = clean(value, 4)
            row[f"{key} bound"] = clean(max(hi - value, value - lo) + slack, 4)
            if np.isfinite(shown) and not (lo - slack - 1e-12 <= shown <= hi + slack + 1e-12):
                flags.append(key)
            if not per_task:
                row["Δm% printed"] = -shown if np.isfinite(shown) else np.nan
                row["Δm% recomputed"] = clean(-value, 4)
        row["mean rank printed"] = np.nan
        row["mean rank recomputed"] = clean(float(ranks.get(method, np.nan)), 4)
        row["disagrees"] = ", ".join(flags)
        rows.append(row)
    return pd.DataFrame(rows)
