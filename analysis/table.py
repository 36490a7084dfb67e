"""Comparison tables in the layout of the Rep-MTL paper.

Rows are methods (one row per method and config hash), columns every task metric (↑ higher
is better, ↓ lower), then Δp_task, Δp_metric, Δm% and the mean rank; cells are mean ± std
over seeds and the number of seeds is a column. The Δ measures are computed per seed against
the mean of the baseline and then averaged (so they carry a spread too). The baseline is the
``stl`` runs of the same benchmark and protocol when present (those with the same data and
training settings as the row when several stl configs exist), else the published STL row of
the paper benchmarks (in the published units), else there is none and the Δ columns are
left out with a note. The mean rank ranks the rows other than ``stl`` (the compared set,
stored in ``Comparison.compared``) on the mean of every metric.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.collect import LIBMTL_PROTOCOL, load_metrics, load_runs, read_json
from analysis.labels import config_labels
from analysis.markup import escape
from analysis.measures import (
    adjust_p_values,
    delta_m,
    delta_p_metric,
    delta_p_task,
    mean_rank,
    welch_t_test,
)
from analysis.reference import SOURCE, canonical_task, load_published, unit_factor
from analysis.select import describe, is_test_selected, select

STL = "stl"
DELTA_COLUMNS = [("delta_p_task", "Δp_task (%) ↑", True), ("delta_p_metric", "Δp_metric (%) ↑", True),
                 ("delta_m", "Δm% ↓", False)]


@dataclass
class Comparison:
    """One comparison table (one benchmark and protocol) with everything needed to render it."""
    benchmark: str
    protocol: str
    selection: str
    columns: list[tuple[str, str]]
    higher: list[bool]
    units: dict[tuple[str, str], str]
    mean: pd.DataFrame
    std: pd.DataFrame
    seeds: pd.Series
    deltas: pd.DataFrame | None
    ranks: pd.Series
    compared: list[str]
    baseline: str | None
    per_seed: pd.DataFrame
    row_method: dict[str, str]
    bases: dict[str, pd.Series] = field(default_factory=dict)
    """Per row: the baseline means the Δ measures of that row use (empty without Δ)."""
    base_rows: dict[str, str] = field(default_factory=dict)
    """Per row: the stl row serving as its baseline (empty with the published baseline)."""
    base_factors: dict | None = None
    """Unit factors from our values to the published baseline's units (None for stl)."""
    notes: list[str] = field(default_factory=list)
    rule: str = "last"
    """The selection rule (``analysis.select.RULES``) the numbers were taken with."""
    runs: dict[str, dict] = field(default_factory=dict)
    """Per row: ``{"profile": [...], "epochs": [...], "protocol": str}`` of its runs."""

    @property
    def test_selected(self) -> bool:
        """Whether the numbers were selected on the test split (by the rule, or because the
        protocol's validation split is the test split): then they are optimistic."""
        return is_test_selected(self.rule) or (self.protocol == LIBMTL_PROTOCOL
                                               and self.rule not in ("last", "last_k"))

    def frame(self) -> pd.DataFrame:
        """The numeric table (for CSV): per metric ``<task>_<metric>`` and ``..._std``, the Δ
        measures with their std, the mean rank, ``ranked`` (whether the row is in the
        compared set of the mean rank) and the number of seeds."""
        out = pd.DataFrame(index=self.mean.index)
        out.index.name = "method"
        for col in self.columns:
            name = f"{col[0]}_{col[1]}"
            out[name] = self.mean[col]
            out[f"{name}_std"] = self.std[col]
        if self.deltas is not None:
            for key, _, _ in DELTA_COLUMNS:
                out[key] = self.deltas[key]
                out[f"{key}_std"] = self.deltas[f"{key}_std"]
        out["mean_rank"] = self.ranks
        out["ranked"] = [row in self.compared for row in out.index]  # the compared set
        out["seeds"] = self.seeds
        return out

    def note(self) -> str:
        lines = [(f"{self.benchmark}: {self.selection}; mean ± std over seeds (column 'seeds'; "
                 "no std for one seed).")]
        if self.test_selected:
            lines.append("TEST-SELECTED: each run's epoch was chosen on the test split, so these "
                         "numbers are optimistic estimates of test performance.")
        if self.deltas is not None:
            lines.append(f"Δ measures relative to {self.baseline}. Δp_task, Δp_metric: higher "
                         "is better; Δm%: lower is better (= −Δp_metric).")
        lines.append("Mean rank (lower is better) over the metric columns among: "
                     + ", ".join(self.compared) + ".")
        lines.extend(self.notes)
        return "\n".join(lines)


def _row_labels(selected: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Label of every run's row: the method name, or the method and the settings that differ
    among its configs when it was run with more than one (``analysis.labels``)."""
    notes = []
    runs = selected[["benchmark", "method", "config_hash", "run_dir"]].drop_duplicates("run_dir")
    labels = config_labels(runs)
    counts = runs.groupby("method").config_hash.nunique()
    for m in counts[counts > 1].index:
        names = sorted({labels[r] for r in runs[runs.method == m].run_dir})
        notes.append(f"Runs of {m} with different configs are never averaged together: one row "
                     f"per config ({'; '.join(names)}).")
    label = pd.Series([labels[r] for r in selected.run_dir], index=selected.index)
    return label, notes


def _stl_baselines(per_seed: pd.DataFrame, row_method: dict[str, str], row_setup: dict,
                   rows: list[str], notes: list[str]) -> tuple[dict, dict, str | None]:
    """Per row, the stl row of its baseline: each stl row is its own; another row takes the
    stl row with the same data and training settings (most seeds first), else the stl row
    with the most seeds (said in a note). Returns (means by row, stl row by row, label)."""
    stl_rows = [r for r in rows if row_method[r] == STL]
    if not stl_rows:
        return {}, {}, None
    counts = per_seed.groupby(level="row").size()
    default = max(stl_rows, key=lambda r: counts[r])
    chosen, unmatched = {}, []
    for row in rows:
        if row in stl_rows:
            chosen[row] = row
            continue
        same = [r for r in stl_rows if row_setup.get(r) == row_setup.get(row)]
        chosen[row] = max(same, key=lambda r: counts[r]) if same else default
        if not same and len(stl_rows) > 1:
            unmatched.append(row)
    if unmatched:
        notes.append(f"No stl run with the same data and training settings as "
                     f"{', '.join(unmatched)}: their baseline is {default} (most seeds).")
    means = {row: per_seed.xs(chosen[row], level="row").mean() for row in rows}
    used = sorted(set(chosen.values()))
    if len(used) == 1:
        label = f"the stl runs ({used[0]}, {counts[used[0]]} seeds, same protocol)"
    else:
        label = ("the stl runs of the same protocol with the same data and training settings "
                 "as each row (" + "; ".join(f"{r} → {b}" for r, b in chosen.items() if r != b) + ")")
    return means, chosen, label


def _published_baseline(benchmark: str, columns, units, notes: list[str]):
    pub = load_published(benchmark)
    if pub is None:
        return None, None, None
    pcols = {(canonical_task(t), m): (t, m) for t, m in columns}
    matched = [c for c in pub.values.columns if c in pcols]
    if not matched:
        notes.append("The published table has none of these metrics; no Δ measures.")
        return None, None, None
    base = pd.Series({pcols[c]: pub.stl[c] for c in matched})
    factors = {pcols[c]: unit_factor(units.get(pcols[c]), pub.units[c]) for c in matched}
    if len(matched) < len(columns):
        notes.append("Δ measures use only the metrics the published table has: "
                     + ", ".join(f"{t}_{m}" for t, m in base.index) + ".")
    return base, factors, f"the published STL row ({SOURCE}), our values converted to its units"


def seed_deltas(per_seed: pd.DataFrame, base: pd.Series, factors: dict | None, higher: dict,
                row: str) -> dict[str, list[float]]:
    """Δp_task, Δp_metric and Δm% of every complete seed of ``row`` against ``base`` (our
    values converted by ``factors`` to the base's units when given)."""
    cols = list(base.index)
    scale = np.array([factors[c] if factors else 1.0 for c in cols])
    hib = [higher[c] for c in cols]
    tasks = [c[0] for c in cols]
    seeds = per_seed.xs(row, level="row")[cols].to_numpy() * scale
    seeds = seeds[~np.isnan(seeds).any(axis=1)]
    return {"delta_p_task": [delta_p_task(s, base.to_numpy(), hib, tasks) for s in seeds],
            "delta_p_metric": [delta_p_metric(s, base.to_numpy(), hib) for s in seeds],
            "delta_m": [delta_m(s, base.to_numpy(), hib) for s in seeds]}


def _deltas(per_seed: pd.DataFrame, bases: dict[str, pd.Series], factors: dict | None,
            higher: dict, rows: list[str]) -> pd.DataFrame:
    out = {}
    for row in rows:
        out[row] = {}
        for key, v in seed_deltas(per_seed, bases[row], factors, higher, row).items():
            out[row][key] = float(np.mean(v)) if v else np.nan
            out[row][f"{key}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else np.nan
    return pd.DataFrame.from_dict(out, orient="index")


def build_comparison(selected: pd.DataFrame, benchmark: str, protocol: str, selection: str,
                     methods: list[str] | None = None) -> Comparison | None:
    """The comparison table of the selected values of one benchmark and protocol (rows of
    ``analysis.select.select``), restricted to ``methods`` when given; None when empty."""
    df = selected[(selected.benchmark == benchmark)]
    if methods is not None:
        df = df[df.method.isin(methods)]
    if df.empty:
        return None
    label, notes = _row_labels(df)
    df = df.assign(row=label, column=list(zip(df.task, df.metric)))
    columns = list(dict.fromkeys(df.column))
    meta = df.drop_duplicates("column").set_index("column")
    higher = {c: bool(meta.loc[[c], "higher_is_better"].iloc[0]) for c in columns}
    units = {c: meta.loc[[c], "unit"].iloc[0] or "" for c in columns}
    per_seed = df.pivot_table(index=["row", "seed"], columns="column", values="value",
                              aggfunc="mean")
    per_seed = per_seed[columns]
    per_seed.columns = pd.MultiIndex.from_tuples(columns, names=["task", "metric"])
    order_methods = list(dict.fromkeys(([STL] if STL in set(df.method) else [])
                                       + (methods or sorted(set(df.method) - {STL}))))
    row_method = dict(zip(df.row, df.method))
    rows = [r for m in order_methods for r in sorted(set(df.row[df.method == m]))]
    mean = per_seed.groupby(level="row").mean().loc[rows]
    std = per_seed.groupby(level="row").std(ddof=1).reindex(rows)  # NaN for one seed
    seeds = per_seed.groupby(level="row").size().loc[rows]
    if protocol == LIBMTL_PROTOCOL:
        notes.append("LibMTL protocol: these runs have no validation split (val = test), so any "
                     "selection on validation selects on the test split.")
    row_setup = dict(zip(df.row, df.setup)) if "setup" in df else {}
    bases, base_rows, baseline = _stl_baselines(per_seed, row_method, row_setup, rows, notes)
    factors = None
    if not bases:
        base, factors, baseline = _published_baseline(benchmark, columns, units, notes)
        bases = {row: base for row in rows} if base is not None else {}
    deltas = None
    if bases and any((b < 0).any() for b in bases.values()):
        notes.append("Some baseline values are negative: relative changes (the Δ measures) "
                     "are not meaningful for them.")
    if bases:
        try:
            deltas = _deltas(per_seed, bases, factors, higher, rows)
        except ValueError as exc:
            notes.append(f"No Δ measures: {exc}.")
            bases, base_rows, baseline = {}, {}, None
    else:
        notes.append("No stl runs and no published baseline for this benchmark: Δ measures "
                     "omitted.")
    compared = [r for r in rows if row_method[r] != STL] or rows
    ranks = mean_rank(mean.loc[compared], [higher[c] for c in columns]).reindex(rows)
    return Comparison(benchmark, protocol, selection, columns, [higher[c] for c in columns],
                      units, mean, std, seeds, deltas, ranks, compared, baseline, per_seed,
                      row_method, bases, base_rows, factors, notes)


def comparisons(root: Path, rule: str = "last", k: int = 3, benchmark: str | None = None,
                methods: list[str] | None = None, run_dirs: set[str] | None = None
                ) -> tuple[list[Comparison], pd.DataFrame]:
    """Every comparison table under ``root`` (one per benchmark and protocol) and the runs
    left out (status, reason); with ``run_dirs``, of those run folders only."""
    runs = load_runs(root)
    if benchmark is not None:
        runs = runs[runs.benchmark == benchmark]
    if run_dirs is not None:
        runs = runs[runs.run_dir.map(lambda d: str(Path(d).resolve())).isin(
            {str(Path(d).resolve()) for d in run_dirs})]
    selected, problems = select(load_metrics(runs=runs), rule, k)
    excluded = runs[~runs.usable][["benchmark", "method", "seed", "status", "reason", "run_dir"]]
    if problems:
        extra = runs[runs.run_dir.isin(problems)].assign(
            status="not selectable", reason=lambda d: d.run_dir.map(problems))
        excluded = pd.concat([excluded, extra[excluded.columns]], ignore_index=True)
        selected = selected[~selected.run_dir.isin(problems)]
    protocol = dict(zip(runs.run_dir, runs.protocol))
    setup = dict(zip(runs.run_dir, runs.setup))
    selected = selected.assign(protocol=selected.run_dir.map(protocol),
                               setup=selected.run_dir.map(setup))
    out = []
    for (bench, proto), part in selected.groupby(["benchmark", "protocol"], sort=True):
        table = build_comparison(part, bench, proto, describe(rule, k), methods)
        if table is not None:
            table.rule = rule
            table.runs = _row_runs(part, runs)
            out.append(table)
    return out, excluded.reset_index(drop=True)


def _row_runs(part: pd.DataFrame, runs: pd.DataFrame) -> dict[str, dict]:
    """Per row label: the profiles, epoch counts (config ``train.epochs``) and protocol of
    its runs, so that a comparison with published numbers can say how they were made."""
    label, _ = _row_labels(part)
    profile = dict(zip(runs.run_dir, runs.profile))
    out: dict[str, dict] = {}
    for row, run_dir in zip(label, part.run_dir):
        info = out.setdefault(row, {"profile": set(), "epochs": set(), "protocol": set()})
        config = read_json(Path(run_dir) / "config.json") or {}
        info["profile"].add(str(profile.get(run_dir) or config.get("profile") or "?"))
        epochs = (config.get("train") or {}).get("epochs")
        if isinstance(epochs, int):
            info["epochs"].add(epochs)
        info["protocol"].add(str(part.protocol[part.run_dir == run_dir].iloc[0] or ""))
    return {row: {k: sorted(v) for k, v in info.items()} for row, info in out.items()}


# --------------------------------------------------------------------------- rendering

def _decimals(values: pd.Series) -> int:
    finite = values.abs()[np.isfinite(values)]
    if finite.empty:
        return 2
    top = finite.max()
    return 2 if top >= 1 else 4


TIE_ALPHA = 0.05
TIE_MARK = "†"
"""Marks a compared row whose column is not significantly different from the best row's."""
TIE_TEST = (f"Welch's t-test on the per-seed values of the column, two-sided, Holm-corrected "
            f"over the compared rows tested in that column, α = {TIE_ALPHA:g}")


def _best(values: pd.Series, higher: bool, compared: list[str]) -> set:
    """The rows of the compared set with the best mean (several on a tie); none with fewer
    than two compared rows."""
    vals = values.loc[[c for c in compared if c in values.index]].dropna()
    if len(vals) < 2:
        return set()
    top = vals.max() if higher else vals.min()
    return set(vals.index[vals == top])


def column_seed_values(table: Comparison, key) -> dict[str, np.ndarray] | None:
    """The per-seed values behind a displayed column: a metric column (``(task, metric)``)
    or a Δ column (``"delta_p_task"``, ...; computed per seed as the table's mean is); None
    for a column with no per-seed values (the mean rank, computed on the means)."""
    if isinstance(key, tuple):
        return {r: table.per_seed.xs(r, level="row")[key].dropna().to_numpy(dtype=float)
                for r in table.mean.index}
    if key in {k for k, _, _ in DELTA_COLUMNS} and table.bases:
        higher = dict(zip(table.columns, table.higher))
        return {r: np.asarray(seed_deltas(table.per_seed, table.bases[r], table.base_factors,
                                          higher, r)[key], dtype=float)
                for r in table.mean.index}
    return None


@dataclass
class Ties:
    """The marks of one column: ``best`` (best mean among the compared set), ``ties``
    (compared rows not significantly different from the best one, ``TIE_TEST``), and the
    test of every other compared row (``frame``: row, seeds, t, p, p_adjusted); ``reason``
    says why no row was tested (empty when some were)."""
    best: set
    ties: set
    frame: pd.DataFrame
    reason: str = ""


def ties_with_best(values: dict[str, np.ndarray] | None, means: pd.Series, higher: bool,
                   compared: list[str], alpha: float = TIE_ALPHA) -> Ties:
    """Which compared rows are not significantly different from the best one: Welch's
    t-test (``analysis.measures.welch_t_test``, as ``analysis.significance`` uses) of every
    other compared row's per-seed values against those of the best row (the one with most
    seeds on a tie), Holm-corrected over the rows tested; a row is marked when its adjusted
    p ≥ ``alpha``. A row with fewer than two seeds (on either side) or no spread on both
    sides is not tested and not marked."""
    best = _best(means, higher, compared)
    cols = ["row", "seeds", "t", "p", "p_adjusted"]
    if not best:
        return Ties(best, set(), pd.DataFrame(columns=cols), "fewer than 2 compared rows")
    if values is None:
        return Ties(best, set(), pd.DataFrame(columns=cols), "no per-seed values")
    ref = max(sorted(best), key=lambda r: len(values.get(r, ())))
    others = [r for r in compared if r != ref and r in values and pd.notna(means.get(r))]
    rows = []
    for r in others:
        t, p = welch_t_test(values[r], values[ref])
        rows.append({"row": r, "seeds": len(values[r]), "t": t, "p": p})
    frame = pd.DataFrame(rows, columns=cols[:4])
    frame["p_adjusted"] = adjust_p_values(frame.p.to_numpy(), "holm") if len(frame) else []
    ties = set(frame.row[frame.p_adjusted >= alpha]) - best
    reason = ""
    if len(values[ref]) < 2:
        reason = f"the best row ({ref}) has fewer than 2 seeds"
    elif not frame.p.notna().any():
        reason = "no other compared row has 2 or more seeds (and any spread)"
    return Ties(best, ties, frame, reason)


def display_columns(table: Comparison) -> list[tuple[str, pd.Series, pd.Series | None, bool]]:
    """(header, means, stds, higher_is_better) of every displayed numeric column."""
    return [c[:4] for c in _columns(table)]


def _columns(table: Comparison) -> list[tuple[str, pd.Series, pd.Series | None, bool, object]]:
    """``display_columns`` with the key of each column's per-seed values
    (``column_seed_values``)."""
    cols = []
    for c, hib in zip(table.columns, table.higher):
        unit = table.units.get(c)
        head = f"{c[0]} {c[1]}" + (f" ({unit})" if unit else "") + (" ↑" if hib else " ↓")
        cols.append((head, table.mean[c], table.std[c], hib, c))
    if table.deltas is not None:
        for key, head, hib in DELTA_COLUMNS:
            cols.append((head, table.deltas[key], table.deltas[f"{key}_std"], hib, key))
    cols.append(("mean rank ↓", table.ranks, None, False, "mean_rank"))
    return cols


def column_ties(table: Comparison, alpha: float = TIE_ALPHA) -> dict[str, Ties]:
    """The marks of every displayed column, by header."""
    return {head: ties_with_best(column_seed_values(table, key), mean, hib, table.compared,
                                 alpha)
            for head, mean, _std, hib, key in _columns(table)}


def marks_note(table: Comparison, alpha: float = TIE_ALPHA) -> str:
    """What the marks of the table mean and where the test could not be made."""
    tested = {h: t for h, t in column_ties(table, alpha).items()}
    untested = sorted({t.reason for h, t in tested.items()
                       if t.reason and h != "mean rank ↓" and t.best})
    text = (f"Bold (* in text): the best mean of the column among the compared set. "
            f"{TIE_MARK}: not significantly different from it ({TIE_TEST}); unmarked rows of "
            "the compared set are significantly worse, or were not tested: a row with fewer "
            "than 2 seeds is never tested or marked. The mean rank has no per-seed values "
            "and no test.")
    if untested:
        text += " Not tested in some columns: " + "; ".join(untested) + "."
    return text


def caption(table: Comparison, title: str | None = None) -> str:
    """The caption of a comparison table: the selection, the seeds, the statistic, the
    baseline, the compared set and the marks."""
    title = title or table.benchmark + (f" (protocol {table.protocol})" if table.protocol else "")
    seeds = sorted({int(s) for s in table.per_seed.index.get_level_values("seed")})
    counts = sorted({int(n) for n in table.seeds})
    per_row = (f"{counts[0]} per row" if len(counts) == 1
               else f"{counts[0]}–{counts[-1]} per row, column 'seeds'")
    base = (f"Δ measures relative to {table.baseline}" if table.deltas is not None
            else "no baseline: no Δ measures")
    return (f"{title}: {table.selection}; mean ± std over seeds (seeds "
            f"{', '.join(map(str, seeds))}: {per_row}; no std for one seed); {base}; compared "
            f"set (marks and mean rank): {', '.join(table.compared)}. Bold: best mean of the "
            f"column among the compared set; {TIE_MARK}: not significantly different from it "
            f"({TIE_TEST}); fewer than 2 seeds: not tested, no mark.")


def cells(table: Comparison, style: str) -> tuple[list[str], list[list[str]]]:
    """Header and body of the table as strings; ``style`` is text, md, html or tex (the best
    mean of each column among the compared set in bold, * in text; rows not significantly
    different from it marked with ``TIE_MARK``, see ``ties_with_best``)."""
    header = ["method"]
    # Names come from the runs' files: escaped wherever they reach markup.
    body = [[_tex(r) if style == "tex" else escape(r, style) if style in ("html", "md")
             else r] for r in table.mean.index]
    ties = column_ties(table)
    for head, mean, std, hib, _key in _columns(table):
        header.append(head if style != "tex" else _tex_header(head))
        dec = _decimals(mean)
        marks = ties[head]
        for i, row in enumerate(table.mean.index):
            m = mean.get(row, np.nan)
            if pd.isna(m):
                body[i].append("--" if style == "tex" else "–")
                continue
            m = 0.0 if abs(m) < 0.5 * 10 ** -dec else m  # no "-0.00"
            text = f"{m:.{dec}f}"
            if std is not None and not pd.isna(std[row]):
                text += f" ± {std[row]:.{dec}f}"
            if style == "tex":
                text = _tex(text.replace("-", "−"))  # a minus sign, not a hyphen
            body[i].append(_mark(text, style, row in marks.best, row in marks.ties))
    header.append("seeds")
    for i, row in enumerate(table.mean.index):
        body[i].append(str(int(table.seeds[row])))
    return header, body


def _mark(text: str, style: str, best: bool, tie: bool) -> str:
    if style == "tex":
        return rf"\textbf{{{text}}}" if best else (text + r"$^\dagger$" if tie else text)
    if style == "md":
        return f"**{text}**" if best else (f"{text} {TIE_MARK}" if tie else text)
    if style == "html":
        return f"<b>{text}</b>" if best else (f"{text} {TIE_MARK}" if tie else text)
    return f"{text} *" if best else (f"{text} {TIE_MARK}" if tie else text)


TEX_CHARS = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#",
             "$": r"\$", "{": r"\{", "}": r"\}", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}",
             # in LaTeX's default (OT1) fonts "<", ">" and "|" print as ¡, ¿ and —
             "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
             "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "α": r"$\alpha$",
             "β": r"$\beta$", "γ": r"$\gamma$", "ε": r"$\epsilon$", "η": r"$\eta$",
             "θ": r"$\theta$", "μ": r"$\mu$", "π": r"$\pi$", "ρ": r"$\rho$", "τ": r"$\tau$",
             "λ": r"$\lambda$", "σ": r"$\sigma$", "±": r"$\pm$", "·": r"$\cdot$", "−": r"$-$",
             "≤": r"$\le$", "≥": r"$\ge$", "≈": r"$\approx$", "≠": r"$\ne$", "∞": r"$\infty$",
             "√": r"$\surd$", "×": r"$\times$", "→": r"$\to$", "²": r"$^2$", "³": r"$^3$",
             "⁻": r"$^-$", "¹": r"$^1$", "°": r"$^\circ$", "†": r"$^\dagger$", "ᵀ": r"$^\top$",
             "–": "--", "—": "---", "…": r"\ldots{}", "’": "'", "‘": "`", "“": "``", "”": "''"}


def _tex_char(ch: str) -> str:
    if ch in TEX_CHARS:
        return TEX_CHARS[ch]
    if ch.isascii():
        return ch
    # any other symbol: its ASCII decomposition (é -> e; a combining accent -> nothing),
    # else "?": the .tex files stay ASCII, so pdflatex never stops on an unknown character
    plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
    return "".join(TEX_CHARS.get(c, c) for c in plain) if plain or unicodedata.combining(ch) \
        else "?"


def _tex(text: str) -> str:
    """Text for LaTeX: special characters escaped (``<``, ``>`` and ``|`` as the text
    commands that print them in any font encoding), the Unicode symbols used here in math,
    the result ASCII."""
    out = "".join(_tex_char(ch) for ch in str(text))
    return re.sub(r"(?<!\\)\$\$", "", out)  # join adjacent formulas: "$-$$\alpha$" -> "$-\alpha$"


def _tex_header(head: str) -> str:
    return _tex(head)


def to_markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


TEX_LINE_CHARS = 74
"""The characters of one table line (cells and the space between columns) that fit the text
width of a standard 10pt article (345pt) in \\small type: wider tables are split."""
TEX_TEXT_CHARS = 26
"""A text column whose cells are longer wraps in a paragraph column this many characters wide."""
TEX_LONG_ROWS = 40
"""More rows than this: a longtable, which breaks across pages, instead of a float."""
_FORMATTING = {"textbf", "underline", "textit", "emph", "allowbreak", "raggedright",
               "textsuperscript", "small", "tabularnewline"}


def tex_width(cell: str) -> int:
    """The printed width of a LaTeX cell in characters (approximate): formatting commands
    count nothing, a symbol command (``\\pm``, ``\\textless``) one character."""
    text = re.sub(r"\\([A-Za-z]+)\*?", lambda m: "" if m.group(1) in _FORMATTING else "x", cell)
    text = re.sub(r"\\(.)", r"\1", text)
    return len(re.sub(r"[{}$^]", "", text))


def _header_lines(head: str, width: int) -> list[str]:
    """``head`` broken at spaces outside formulas into lines of about ``width`` characters
    (three at most), so that a long header does not widen its column."""
    words, cur, math = [], "", False
    for ch in head:
        if ch == "$" and not cur.endswith("\\"):
            math = not math
        if ch == " " and not math:
            words.append(cur)
            cur = ""
        else:
            cur += ch
    words.append(cur)
    lines: list[str] = []
    for word in words:
        if lines and tex_width(lines[-1]) + 1 + tex_width(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > 3:
        return _header_lines(head, width + 4)
    return lines


def _header_cell(lines: list[str]) -> str:
    if len(lines) == 1:
        return lines[0]
    return r"\begin{tabular}[b]{@{}c@{}}" + r"\\".join(lines) + r"\end{tabular}"


def _breakable(cell: str) -> str:
    """A long cell of a paragraph column, left-aligned, breakable after / and _ (paths,
    names)."""
    return r"\raggedright " + cell.replace("/", r"/\allowbreak{}").replace(r"\_", r"\_\allowbreak{}")


def _parts(widths: list[int], budget: int, keys: int = 1) -> list[list[int]]:
    """Column indices of each part of a table split to fit ``budget`` characters a line: the
    first ``keys`` columns (those that name the row) in every part, the others in order, at
    least one a part."""
    keys = max(1, min(keys, len(widths) - 1)) if len(widths) > 1 else 1
    base = sum(w + 2 for w in widths[:keys])
    parts, cur, used = [], [], base
    for j in range(keys, len(widths)):
        if cur and used + widths[j] + 2 > budget:
            parts.append(cur)
            cur, used = [], base
        cur.append(j)
        used += widths[j] + 2
    parts.append(cur)
    return [list(range(keys)) + p for p in parts]


def to_latex(header: list[str], body: list[list[str]], caption: str,
             line_chars: int = TEX_LINE_CHARS, keys: int = 1) -> str:
    """A booktabs table in \\small type at its natural size (never scaled): long headers
    break into lines, long text cells wrap in paragraph columns, and a table still wider
    than ``line_chars`` characters is split into several tables of consecutive columns, the
    first ``keys`` columns (those naming the row) repeated in each and the caption saying
    "part i of n". More than
    ``TEX_LONG_ROWS`` rows make a longtable, which breaks across pages. Needs
    ``\\usepackage{booktabs}`` and ``\\usepackage{longtable}``."""
    ncol = len(header)
    cell_w = [max([tex_width(r[j]) for r in body] or [0]) for j in range(ncol)]
    text_col = [cell_w[j] > TEX_TEXT_CHARS for j in range(ncol)]
    widths, heads = [], []
    for j, head in enumerate(header):
        shown = min(cell_w[j], TEX_TEXT_CHARS) if text_col[j] else cell_w[j]
        lines = _header_lines(head, max(shown, 8))
        heads.append(_header_cell(lines))
        widths.append(max([shown] + [tex_width(x) for x in lines]))
    parts = _parts(widths, line_chars, keys)
    out = []
    for i, cols in enumerate(parts):
        spec = "".join(rf"p{{{0.5 * TEX_TEXT_CHARS:g}em}}" if text_col[j]
                       else ("l" if j < keys else "c") for j in cols)
        cap = _tex(caption + (f" (part {i + 1} of {len(parts)}: the table is split by columns)"
                              if len(parts) > 1 else ""))
        head = " & ".join(heads[j] for j in cols) + r" \tabularnewline"
        rows = [" & ".join(_breakable(r[j]) if text_col[j] else r[j] for j in cols)
                + r" \tabularnewline" for r in body]
        if len(body) > TEX_LONG_ROWS:
            out += [r"\begin{small}", r"\setlength{\tabcolsep}{4pt}",
                    rf"\begin{{longtable}}{{{spec}}}", rf"\caption{{{cap}}} \tabularnewline",
                    r"\toprule", head, r"\midrule", r"\endfirsthead", r"\toprule", head,
                    r"\midrule", r"\endhead", r"\bottomrule", r"\endlastfoot", *rows,
                    r"\end{longtable}", r"\end{small}"]
        else:
            out += [r"\begin{table}[htbp]", r"\centering", r"\small",
                    r"\setlength{\tabcolsep}{4pt}", rf"\caption{{{cap}}}",
                    rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head, r"\midrule", *rows,
                    r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_text(table: Comparison) -> str:
    header, body = cells(table, "text")
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header)] + [fmt(r) for r in body]
                     + [marks_note(table), table.note()])


def comparison_table(root: Path, benchmark: str, methods: list[str] | None = None,
                     rule: str = "last", k: int = 3, run_dirs: set[str] | None = None) -> str:
    """The comparison table(s) of ``benchmark`` under ``root`` as text (printed by ``run``),
    of the folders ``run_dirs`` only when given."""
    tables, excluded = comparisons(root, rule, k, benchmark, methods, run_dirs)
    if methods is not None:
        excluded = excluded[excluded.method.isin(methods)]
    parts = [to_text(t) for t in tables] or [f"(no complete runs of {benchmark} under {root})"]
    for r in excluded.itertuples():
        parts.append(f"left out: {r.run_dir} ({r.status}: {r.reason})")
    return "\n\n".join(parts)
