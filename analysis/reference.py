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

import pandas as pd

from analysis.measures import delta_p_metric, delta_p_task

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
    return Published(key, values.astype(float), higher, units, raw["delta_p_task"],
                     raw["delta_p_task_std"], path)


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


def published_vs_reproduced(pub: Published, reproduced: pd.DataFrame,
                            units: dict[tuple[str, str], str],
                            methods: dict[str, str] | None = None) -> pd.DataFrame:
    """Rows: the reproduced rows whose method the paper also reports; for every metric the
    published value, ours (converted to the published unit) and the difference (ours −
    published). ``reproduced`` has row labels as index and (task, metric) columns;
    ``methods`` maps a row label to its method name (default: the label itself)."""
    rows = []
    tasks = {canonical_task(t): t for t, _ in reproduced.columns}
    for label in reproduced.index:
        prow = pub.row((methods or {}).get(label, label))
        if prow is None:
            continue
        for (ptask, metric) in pub.values.columns:
            ours_col = (tasks.get(ptask), metric)
            if ours_col not in reproduced.columns:
                continue
            factor = unit_factor(units.get(ours_col), pub.units[(ptask, metric)])
            ours = float(reproduced.loc[label, ours_col]) * factor
            published = float(prow[(ptask, metric)])
            rows.append({"method": label, "published_method": prow.name, "task": ptask,
                         "metric": metric, "unit": pub.units[(ptask, metric)],
                         "published": published, "ours": ours, "difference": ours - published})
    return pd.DataFrame(rows, columns=["method", "published_method", "task", "metric", "unit",
                                       "published", "ours", "difference"])
