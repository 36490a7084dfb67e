"""The report: every table and figure the analysis makes of one results folder.

``build_report(root, out)`` writes ``out/report.md`` and ``out/report.html`` (one page, the
figures embedded), ``out/tables/*.csv`` and ``*.tex`` (every table) and
``out/figures/*.png`` and ``*.pdf``. Sections, each present when the results have its data:
comparison tables (per benchmark and protocol), published vs reproduced (paper benchmarks),
negative transfer, cost (step time, wall time, peak memory), task weights, gradient conflict, training-curve power laws, weight
spectra, toy trajectories, and the runs left out with their reasons.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd

from analysis import conflict, curves, saliency, spectra, toy, transfer, weights
from analysis.collect import load_costs, load_runs, non_finite_metrics
from analysis.document import Document, Strong
from analysis.labels import config_labels
from analysis.markup import escape
from analysis.reference import (
    SOURCE,
    load_published,
    paper_protocol,
    protocol_departures,
    published_check,
    reproduced_vs_published,
)
from analysis.select import describe
from analysis.table import Comparison, _tex, cells, comparisons, marks_note
from analysis.table import caption as comparison_caption

from analysis.names import FORMATS, SECTIONS  # re-exported


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", "_".join(p for p in parts if p)).strip("_").lower()


def _comparison_section(doc: Document, table: Comparison) -> None:
    name = _slug("comparison", table.benchmark, table.protocol)
    title = table.benchmark + (f" (protocol {table.protocol})" if table.protocol else "")
    doc.heading(1, f"Comparison: {title}")
    doc.styled_table(name, cells(table, "md"), cells(table, "html"), cells(table, "tex"),
                     table.frame(), comparison_caption(table, title))
    doc.para(table.note() + "\n" + marks_note(table))


def _published_section(doc: Document, table: Comparison, shown: Comparison | None,
                       published_rule: str) -> None:
    """Published vs reproduced on a paper benchmark. ``shown`` is the comparison made under
    ``published_rule`` (by default the selection of the published numbers), None when no
    run is selectable under it."""
    pub = load_published(table.benchmark)
    if pub is None:
        return
    paper = paper_protocol(table.benchmark)
    doc.heading(2, f"Published vs reproduced: {table.benchmark}")
    diff = pd.DataFrame()
    if shown is not None:
        diff, header, body = reproduced_vs_published(pub, shown)
    if shown is None:
        doc.para(f"No run is selectable under --published-select {published_rule}.")
    elif diff.empty:
        doc.para("None of the methods run here appear in the published table.")
    else:
        made = "; ".join(
            f"{row}: profile {', '.join(info['profile'])}, "
            f"{', '.join(map(str, info['epochs'])) or '?'} epochs, protocol "
            f"{', '.join(p or 'default' for p in info['protocol'])}"
            for row, info in shown.runs.items() if row in set(diff.method))
        doc.para(f"Reproduction ({describe_rule(published_rule)}): {made}.\n"
                 f"Published ({SOURCE}): profile {paper.profile}, {paper.epochs} epochs"
                 + (f", protocol {paper.protocol}" if paper.protocol else "")
                 + f", {paper.selection}.")
        departures = {row: protocol_departures(paper, info, published_rule)
                      for row, info in shown.runs.items() if row in set(diff.method)}
        for row, what in departures.items():
            if what:
                doc.para(Strong("Warning: not like for like."), f" {row} differs from the "
                         f"published setting: {'; '.join(what)}.")
        name = _slug("published_vs_reproduced", table.benchmark, table.protocol)
        caption = (f"{table.benchmark}: ours ({describe_rule(published_rule)}; mean ± std over "
                   f"seeds, converted to the published units) vs published ({SOURCE}; the paper "
                   "prints no per-metric std, Δp_task ± std as printed); difference = ours − "
                   "published, rounded to the printed precision; ↑ higher is better, ↓ lower")
        doc.styled_table(name, (header, [[escape(c, "md") for c in r] for r in body]),
                         (header, [[escape(c, "html") for c in r] for r in body]),
                         ([_tex(h) for h in header], [[_tex(c) for c in r] for r in body]),
                         diff, caption)
        doc.para("Units of the published table: " + ", ".join(
            f"{t} {m}: {u or 'as printed'}" for (t, m), u in pub.units.items()) + ". Our Δp_task "
                 f"is relative to {shown.baseline or 'no baseline'}.")
    check = published_check(pub)
    doc.frame_table(_slug("published", table.benchmark),
                    pub.values.set_axis([f"{t}_{m}" for t, m in pub.values.columns], axis=1)
                    .reset_index().merge(check, on="method"),
                    f"The published table ({SOURCE}): Δp_task, Δp_metric, Δm% and the mean rank "
                    "(among the published methods other than STL) as printed (empty where the "
                    "paper prints none) and recomputed from its means against its STL row; "
                    "'bound' is the largest difference the rounding of the printed values can "
                    "explain, 'disagrees' names the measures whose printed value lies beyond it")
    flagged = check[check.disagrees != ""]
    if not flagged.empty:
        doc.para(Strong(f"{len(flagged)} published row(s) disagree with their own table "
                        "beyond rounding:"), " " + "; ".join(
                     f"{r['method']} ({r['disagrees']}: printed Δp_task "
                     f"{r['Δp_task printed']:+.2f}, recomputed {r['Δp_task recomputed']:+.2f})"
                     for _, r in flagged.iterrows()) + ". With a fixed STL row every Δ is "
                 "affine in the metrics, so averaging per-seed Δ cannot cause this; the "
                 "printed means, the printed Δ or the baseline behind it must differ from "
                 "what the table shows (results/reference/README.md lists known quirks).")


def _transfer_section(doc: Document, table: Comparison, correction: str = "holm") -> None:
    report = transfer.negative_transfer(table, correction=correction)
    if report is None or report.empty:
        return
    doc.heading(2, f"Negative transfer: {table.benchmark}")
    name = _slug("negative_transfer", table.benchmark, table.protocol)
    doc.frame_table(name + "_summary", transfer.summary(report),
                    "Per method: tasks with negative transfer (mean change vs STL < 0), how many "
                    f"are significant ({transfer.tests_description(report)}), and the worst task")
    doc.frame_table(name, report, f"Change vs STL per task (%, signed so that > 0 is better), "
                    f"mean and std over seeds; baseline: {table.baseline}; test: "
                    f"{transfer.tests_description(report)}")
    png = transfer.heatmap(report, doc.figures_dir / name, f"{table.benchmark}: change vs STL (%)")
    doc.figure(png, f"{table.benchmark}: relative change against STL per method and task")


def describe_rule(rule: str, k: int = 3) -> str:
    return f"{describe(rule, k)} (rule {rule})"


def _published_tables(root: Path, tables: list[Comparison], rule: str | None, k: int,
                      benchmark: str | None) -> dict[tuple[str, str], tuple[Comparison | None, str]]:
    """Per paper benchmark and protocol: the comparison under the published-vs-reproduced
    rule (``rule``, or by default the selection of the published numbers) and that rule."""
    out = {}
    for table in tables:
        paper = paper_protocol(table.benchmark)
        if paper is None:
            continue
        chosen = rule or paper.rule
        if chosen == table.rule:
            out[(table.benchmark, table.protocol)] = (table, chosen)
            continue
        again, _ = comparisons(root, chosen, k, table.benchmark)
        match = [t for t in again if t.protocol == table.protocol]
        out[(table.benchmark, table.protocol)] = (match[0] if match else None, chosen)
    return out


def _per_benchmark(frame: pd.DataFrame):
    yield from frame.groupby("benchmark", sort=True)


def build_report(root: Path, out: Path | None = None, formats: tuple[str, ...] = FORMATS,
                 rule: str = "last", k: int = 3, benchmark: str | None = None,
                 skip: tuple[str, ...] = (), published_rule: str | None = None,
                 correction: str = "holm") -> list[Path]:
    """Write the report of the results under ``root`` into ``out`` (default
    ``root/report``); return the files written."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    runs = load_runs(root, repair=True)  # first: the tables below read repaired files
    if benchmark is not None:
        runs = runs[runs.benchmark == benchmark]
    doc = Document(out, "Multi-task optimization report", tuple(formats))
    doc.para(f"Results: {root.resolve()}\nGenerated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{int(runs.usable.sum())} usable runs, {int((~runs.usable).sum())} left out.\n"
             f"Selection rule: {describe(rule, k)} (--select {rule}).")
    non_finite = non_finite_metrics(runs)
    if not non_finite.empty:
        doc.para(Strong(f"{non_finite.run_dir.nunique()} usable run(s) have non-finite metric "
                        "values"), " (NaN or infinite): every mean over seeds that includes one "
                 "is not finite either. They are listed under “Non-finite metric values”.")
    tables, excluded = comparisons(root, rule, k, benchmark)
    # The repair pass's reasons also say why a run could not be repaired.
    repaired_reason = dict(zip(runs.run_dir, runs.reason))
    excluded = excluded.assign(reason=[repaired_reason.get(d) or r
                                       for d, r in zip(excluded.run_dir, excluded.reason)])
    problems: dict[str, str] = {}
    published = (_published_tables(root, tables, published_rule, k, benchmark)
                 if "published" not in skip and "tables" not in skip else {})
    if "tables" not in skip:
        for table in tables:
            _comparison_section(doc, table)
            if (table.benchmark, table.protocol) in published:
                _published_section(doc, table, *published[(table.benchmark, table.protocol)])
            if "transfer" not in skip:
                _transfer_section(doc, table, correction)
    # every section groups by configuration, labelled by its differing settings, as the
    # comparison tables do: runs of different configs are never averaged together
    usable = runs[runs.usable]
    usable = usable.assign(method=usable.run_dir.map(config_labels(usable)))
    if "cost" not in skip:
        costs = load_costs(usable)
        for bench, part in _per_benchmark(costs):
            doc.heading(1, f"Cost: {bench}")
            doc.frame_table(_slug("cost", bench), cost_table(part), COST_CAPTION.format(bench=bench),
                            headers=COST_HEADERS, formats=COST_FORMATS)
    if "weights" not in skip:
        w = weights.load_weights(usable)
        for bench, part in _per_benchmark(w):
            doc.heading(1, f"Task weights: {bench}")
            png = weights.plot_weights(part, doc.figures_dir / _slug("weights", bench),
                                       f"{bench}: task weights over training")
            doc.figure(png, f"{bench}: mean applied task weight per epoch, mean over seeds (band: "
                       "range over seeds), on one y scale shared by the panels, logarithmic when "
                       "every weight is positive (the figure's title names the scale)")
    if "conflict" not in skip:
        steps, pairs, bad = conflict.load_conflicts(usable)
        _add_problems(problems, bad)
        for (bench, space), part in steps.groupby(["benchmark", "space"], sort=True):
            name = f"{bench} ({space} space)" if space else bench
            doc.heading(1, f"Gradient conflict: {name}")
            doc.frame_table(_slug("conflict", bench, space), conflict.conflict_summary(part),
                            "Averages over training: pairwise cosine, fraction of conflicting "
                            "pairs (cosine < 0), gradient-norm ratio max/min")
            doc.figure(conflict.plot_overview(part, doc.figures_dir / _slug("conflict", bench, space),
                                              f"{name}: gradient conflict"),
                       f"{name}: gradient conflict over training (mean over seeds)")
            sub = pairs[(pairs.benchmark == bench) & (pairs.space == space)]
            doc.figure(conflict.plot_pairs(sub, doc.figures_dir / _slug("conflict_pairs", bench, space),
                                           f"{name}: pairwise cosine"),
                       f"{name}: cosine of every task pair over training")
    if "curves" not in skip:
        data, bad = curves.load_curves(usable)
        _add_problems(problems, bad)
        for bench, part in _per_benchmark(data):
            doc.heading(1, f"Power laws of the training curves: {bench}")
            fits = curves.fit_curves(part)
            doc.frame_table(_slug("curve_fits", bench), fits,
                            "L(t) = a·t^(−α) + c per method and task, fit per seed: α (mean over "
                            "seeds) with the interval named in 'interval' (95% t-interval; none "
                            "with fewer than 3 seeds), only when every seed's fit is identified; "
                            f"'status' gives the reasons otherwise (c at its upper bound min L, "
                            f"R² < {curves.R2_MIN:g}, α at a bound, or a plateau-then-drop curve "
                            f"fitting better by AIC); c = 0 is the pure power law; R² of log L, "
                            f"c_at_bound, relative "
                            "error of the extrapolation from the first 70% of the window")
            doc.figure(curves.plot_curves(part, doc.figures_dir / _slug("curves", bench),
                                          f"{bench}: training curves", fits),
                       f"{bench}: training loss per task (log-log, points at the midpoint of "
                       "their interval of steps); legend: the table's α (mean of the seed fits) "
                       "and the α of the fit of the mean curve, drawn dashed only where that "
                       "fit is identified (the legend says so otherwise, and then no line is "
                       "drawn)")
    if "spectra" not in skip:
        table, bad, eigs = spectra.load_spectra(usable)
        _add_problems(problems, bad)
        if not table.empty:
            for bench, part in _per_benchmark(table):
                summary = spectra.spectra_summary(part)
                doc.heading(1, f"Weight spectra: {bench}")
                per_group = (summary.groupby(["method", "group"], sort=True)
                             .agg(mean_alpha=("alpha", "mean"), layers=("alpha", "count"))
                             .reset_index())
                doc.frame_table(_slug("spectra_groups", bench), per_group,
                                "Mean power-law exponent α over the fitted layers of each group "
                                "(2 ≤ α ≤ 6 well trained, > 6 under-trained, < 2 over-trained)")
                doc.frame_table(_slug("spectra_layers", bench), summary,
                                "α per layer (mean, std, min and max over seeds) with the fit's "
                                "σ, x_min, KS distance, n_tail and tail fraction (means over "
                                "seeds), the eigenvalue count, the Marchenko–Pastur edge of a "
                                "random matrix of the same shape and entry variance (mp_edge) "
                                "and the eigenvalues above it (above_mp: a few are spikes, not a "
                                "heavy tail); marks: too few eigenvalues "
                                f"(< {spectra.MIN_EIGS}, not fitted); tail is most of the "
                                f"spectrum (tail fraction > {spectra.MAX_TAIL_FRACTION:g}) and "
                                f"α > {spectra.MAX_ALPHA:g}, each with the number of seeds whose "
                                "own fit has it: the numbers beside them are means over seeds, "
                                "so a mark in 1 of 3 seeds can sit beside a mean below its "
                                "threshold (see alpha_max)")
                doc.figure(spectra.plot_alpha_bars(summary, doc.figures_dir / _slug("alpha", bench),
                                                   f"{bench}: α per layer"),
                           f"{bench}: power-law exponent α of every fitted layer, per method: "
                           "bar = mean over seeds (the table's α), whiskers = range over seeds, "
                           "hatched = some seed's fit is marked in the table")
                chosen = _chosen_layers(summary)
                by_method = {m: e for (b, m, _s), e in eigs.items() if b == bench}
                shown = {m: s for (b, m, s) in eigs if b == bench}
                doc.figure(spectra.plot_esd(by_method, chosen, doc.figures_dir / _slug("esd", bench),
                                            f"{bench}: empirical spectral densities", shown,
                                            summary),
                           f"{bench}: ESD of chosen layers ({', '.join(chosen)}) of one seed per "
                           f"method (the lowest: {', '.join(f'{m} {s}' for m, s in shown.items())}): "
                           "non-empty log bins as points, that seed's power-law tail fit "
                           "dashed, Marchenko–Pastur edge dotted; the legend gives that seed's "
                           "α and the table's mean α over seeds")
    if "toy" not in skip:
        for bench, part in _per_benchmark(usable):
            sub, bad = toy.load_trajectories(part)
            _add_problems(problems, bad)
            if not sub:
                continue
            doc.heading(1, f"Trajectories: {bench}")
            doc.figure(toy.plot_parameter_space(sub, doc.figures_dir / _slug("toy_params", bench),
                                                f"{bench}: parameter space"),
                       f"{bench}: trajectories over the contours of the mean loss")
            doc.figure(toy.plot_loss_space(sub, doc.figures_dir / _slug("toy_losses", bench),
                                           f"{bench}: loss space"),
                       f"{bench}: trajectories in loss space with the Pareto front")
    if "saliency" not in skip:
        saliency.report_section(doc, out / "saliency")  # what `saliency` wrote into the report
    if not non_finite.empty:
        doc.heading(1, "Non-finite metric values")
        doc.frame_table("non_finite", non_finite, "Metric values of usable runs that are NaN "
                        "(written as null) or infinite, with the epochs where they occur")
    _left_out(doc, excluded, problems)
    return doc.write()


COST_HEADERS = {"method": "method", "device": "device", "seeds": "seeds",
                "step_time_ms": "training step time (ms)", "wall_time_s": "wall time per run (s)",
                "peak_memory_mib": "peak memory (MiB)", "memory_measured": "peak memory measured"}
COST_FORMATS = {"seeds": "d", "step_time_ms": ".2f", "wall_time_s": ".1f",
                "peak_memory_mib": ".1f"}
STEP_PEAK = "one training step's tensor memory (model, gradients, optimizer state, the step's peak)"
CUDA_PEAK = "CUDA allocator peak over the run (training and evaluation)"
PROCESS_PEAK = "process peak RSS since the process started (earlier runs included)"
COST_CAPTION = (
    "Costs measured during training, under whatever load the machine had at the time (other "
    "processes, runs in parallel): not comparable across machines, sessions or loads. For "
    "comparable costs, run python run_bench.py perf -b {bench} -m METHOD ..., which measures "
    "the step time and each step's peak memory of methods side by side on the same batches "
    "(docs/performance.md). Training step time: each epoch's training loop (data loading "
    "included, and the gradient-conflict statistics when engine.conflict_every > 0) divided by "
    "its steps, mean over epochs and seeds. Wall time: a whole run (training, evaluation, "
    "checkpoints), mean over seeds. Peak memory: what 'peak memory measured' names, largest "
    "over seeds. Runs record the tensor memory of one training step (their second): the "
    "parameters, gradients and optimizer state plus the peak the step allocates on top "
    "(the CUDA allocator's peak on a GPU, the torch profiler's allocation events on a CPU). "
    "Runs older than that record only the CUDA allocator's peak over the run or, on a CPU, the "
    "process's peak resident memory, which covers everything the process did before (earlier "
    "runs of the same command included) and reflects the order of the runs more than the "
    "method.")


def cost_table(costs: pd.DataFrame) -> pd.DataFrame:
    """Per method and device: seeds, the mean training step time (ms), the mean wall time per
    run (s), the largest recorded peak memory (MiB) and what that peak is: ``STEP_PEAK``
    where the runs recorded a training step's peak, else (older runs) ``CUDA_PEAK`` or
    ``PROCESS_PEAK`` (``engine.core.results.peak_memory_bytes``)."""
    if "step_peak_memory_mib" not in costs:
        costs = costs.assign(step_peak_memory_mib=float("nan"))
    table = (costs.groupby(["method", "device"], sort=True)
             .agg(seeds=("seed", "nunique"), step_time_s=("step_time_s", "mean"),
                  wall_time_s=("wall_time_s", "mean"),
                  step_peak=("step_peak_memory_mib", "max"),
                  run_peak=("peak_memory_mib", "max")).reset_index())
    table.insert(3, "step_time_ms", 1000.0 * table.pop("step_time_s"))
    step_peak, run_peak = table.pop("step_peak"), table.pop("run_peak")
    table["peak_memory_mib"] = step_peak.fillna(run_peak)
    table["memory_measured"] = [
        STEP_PEAK if pd.notna(step) else CUDA_PEAK if str(d).startswith("cuda") else PROCESS_PEAK
        for step, d in zip(step_peak, table.device)]
    return table


def _add_problems(problems: dict[str, str], found: dict[str, str]) -> None:
    """Collect the problems of each run folder; one folder may have several."""
    for run_dir, problem in found.items():
        problems[run_dir] = f"{problems[run_dir]}; {problem}" if run_dir in problems else problem


def _chosen_layers(summary: pd.DataFrame) -> list[str]:
    """ESD layers: the first, middle and last layer of the shared encoder (of stl's encoders
    when no shared one exists) and the largest layer of each head (six at most)."""
    summary = summary[summary.alpha.notna()]
    shared = summary[summary.group == "encoder"]
    enc = list(dict.fromkeys(shared.layer if not shared.empty else
                             summary[summary.group.str.startswith("encoder")].layer))
    chosen = [enc[0], enc[len(enc) // 2], enc[-1]] if enc else []
    for _, part in summary[summary.group.str.startswith("head")].groupby("group", sort=True):
        chosen.append(part.sort_values("eigenvalues").layer.iloc[-1])
    return list(dict.fromkeys(chosen))[:6]


def _left_out(doc: Document, excluded: pd.DataFrame, problems: dict[str, str]) -> None:
    doc.heading(1, "Runs left out")
    if excluded.empty:
        doc.para("None: every run folder is complete and readable.")
    else:
        doc.frame_table("left_out", excluded, "Incomplete, failed, diverged or corrupt runs "
                        "(left out of every table and figure), with the reason")
    if problems:
        doc.frame_table("unreadable_files",
                        pd.DataFrame({"run_dir": list(problems), "problem": list(problems.values())}),
                        "Optional files that are missing or could not be read, and the section "
                        "they leave the run out of (the rest of the run is used)")
