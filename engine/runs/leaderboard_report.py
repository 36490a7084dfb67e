"""The leaderboard's reports: the plan of the next runs, the tables of the finished entries,
the drift check of a plugin's ranking, and the generated sections of the docs
(docs/leaderboard.md, or a protocol's own page), all from what ``engine.runs.leaderboard``
knows of a benchmark.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from analysis.records import RunRecord, record_from_run
from engine.core import results as R
from engine.errors import UserError
from engine.runs.leaderboard import (FRONT, ROOT, Board, EntryState, Outcome, Protocol, Where,
                                     check_hashes, known_records, profile_board)

FIGURES = ROOT / "docs" / "leaderboard"


def plan_text(outcome: Outcome) -> str:
    lines = [f"next: {len(outcome.pending)} run(s)"]
    lines += [f"  {p.entry.label:<16} {p.stage:<8} seed {p.seed}  {' '.join(p.overrides)}  "
              f"-> {run_dir}" for p, run_dir in outcome.pending]
    finished = sum(st.final for st in outcome.states)
    protocol = outcome.board.protocol
    tuning = max((len(protocol.lr_grid) + (1 if st.entry.label in protocol.knob_from
                                           else len(st.entry.knob))
                  for st in outcome.states), default=0)
    finals = (2 if protocol.untuned_seeds else 1) * len(protocol.seeds)
    lines.append(f"{finished} of {len(outcome.states)} entries finished; an unfinished entry "
                 f"needs at most {tuning} tuning runs and {finals} final runs")
    return "\n".join(lines)


def _unfinished(states: list[EntryState]) -> str:
    waiting = [f"{st.entry.label} ({st.needed[0].stage if st.needed else 'waits for ' + (st.waits_for or 'stl')})"
               for st in states if not st.final]
    return ("Not finished (stage reached): " + ", ".join(waiting) + ".") if waiting else ""


def tables(protocol: Protocol, rows: list, correction: str = "holm") -> list[str]:
    """The Δp_task table (without the untuned column where the protocol trains no untuned
    seeds) and, where the protocol asks (``metrics_table``), every test metric per row."""
    from analysis.leaderboard import leaderboard_frame, metrics_markdown, to_markdown

    frame, notes = leaderboard_frame(rows, correction)
    out = [to_markdown(frame, notes, untuned=protocol.untuned_seeds)]
    if protocol.raw.get("metrics_table", False):
        out.append(metrics_markdown(rows, list(frame.label)))
    return out + [grid_edge_text(protocol.lr_grid, rows)]


def grid_edge_text(lr_grid: list[float], rows: list) -> str:
    """Which rows selected the smallest or the largest learning rate of the grid: their
    optimum may lie beyond it, so a reader should know that the tuning was cut there."""
    if len(lr_grid) < 2:
        return ""
    edges = {min(lr_grid): "smallest", max(lr_grid): "largest"}
    at_edge: dict[float, list[str]] = {}
    for row in rows:
        for override in row.selected:
            key, _, value = override.partition("=")
            if key == "train.lr" and float(value) in edges:
                at_edge.setdefault(float(value), []).append(row.label)
    if not at_edge:
        return ""
    everyone = len(at_edge) == 1 and len(next(iter(at_edge.values()))) == len(rows)
    parts = [f"lr {lr:g}, the grid's {edges[lr]}, "
             + ("by every row" if everyone else "by " + ", ".join(labels))
             for lr, labels in sorted(at_edge.items())]
    return ("Selected at the edge of the learning-rate grid, where a rate beyond it might do "
            "better: " + "; ".join(parts) + ".")


def standing_text(outcome: Outcome, correction: str = "holm", every_row: bool = False) -> str:
    """The table of the finished entries, and what is not finished. ``every_row``: the table
    holds every finished entry of the benchmark, not only the ones asked for, so that a new
    method's row stands among the shipped ones and is tested under the same correction."""
    states = outcome.states
    if every_row:
        asked = {st.entry.label for st in states}
        states = states + [st for st in outcome.board.states() if st.entry.label not in asked]
    rows = outcome.board.rows(states)
    parts = [f"## {outcome.board.benchmark}"]
    if not any(r.label == "stl" for r in rows):
        parts.append("No finished stl entry yet: no base for the table.")
    else:
        parts += tables(outcome.board.protocol, rows, correction)
    parts.append(_unfinished(outcome.states))
    return "\n\n".join(p for p in parts if p)


def check_known(outcome: Outcome, methods: list[str] | None, records: Path, out: Path) -> None:
    """Refuse to print a table of nothing: no run at all, or none of a named method."""
    from methods.registry import canonical_name

    known = {key[0] for key in outcome.board.known}
    benchmark = outcome.board.benchmark
    if not known:
        raise UserError(f"no records of {benchmark} ({records} is missing) and no runs of it "
                        f"under {out}; train them with: run_bench.py leaderboard -b {benchmark}")
    for method in methods or []:
        if canonical_name(method) not in known:
            raise UserError(f"no records or runs of {method} on {benchmark}; train them with: "
                            f"run_bench.py leaderboard -b {benchmark} -m {method}")


def drift_text(protocol: Protocol, benchmark: str, where: Where, outcome: Outcome) -> str:
    """Rerun ew's selected configuration at the tuning seed here and compare it with the
    shipped record: identical on the machine that made the records (same thread count),
    otherwise the difference shows how far rows from two machines may drift apart."""
    from engine.runs import executors as X
    from engine.runs.runner import build_requests
    from engine.runs.sweep import RunSpec

    ew = next((st for st in outcome.states if st.entry.method == "ew" and st.final), None)
    if ew is None:
        return "drift check: no finished ew entry to compare with"
    key = ("ew", ew.selected, protocol.tuning_seed)
    shipped = {r.key: r for r in known_records(protocol, benchmark)}.get(key)
    if shipped is None:
        return "drift check: ew was trained here, not taken from the records; nothing to compare"
    (request,) = build_requests(benchmark, ["ew"], [protocol.tuning_seed], protocol.profile,
                                list(ew.selected), where.device, where.data_root)
    run_dir = request.dir(where.out)
    spec = RunSpec(benchmark, "ew", protocol.tuning_seed, protocol.profile, ew.selected,
                   where.device, where.data_root, request.config.hash(), str(run_dir),
                   where.plugins, "ew drift check")
    todo, _ = X.plan([spec], X.Options(str(where.out)))
    X.run_local(todo, X.Options(str(where.out)), progress=False)
    mine = record_from_run(run_dir, ew.selected)
    if mine is None or mine.status != R.STATUS_COMPLETE:
        return f"drift check: the ew rerun in {run_dir} did not complete"
    gaps = [(abs(mine.final("test")[t][m] - value), f"{t} {m}")
            for t, metrics in shipped.final("test").items() for m, value in metrics.items()]
    gap, where_ = max(gaps)
    threads = shipped.env.get("torch_threads")
    if gap == 0:
        return (f"drift check: ew seed {protocol.tuning_seed} rerun here equals the shipped "
                f"record exactly: rows from here and the records are comparable")
    return (f"drift check: ew seed {protocol.tuning_seed} rerun here differs from the shipped "
            f"record by up to {gap:.4g} ({where_}); the records were made with {threads} torch "
            f"thread(s) on {shipped.env.get('device')} (torch {shipped.env.get('torch')}); "
            f"read differences between a new row and the shipped ones with this drift in mind")


def records_board(protocol: Protocol, benchmark: str) -> tuple[Board, list[EntryState]]:
    """The standing from the shipped records alone (no run folder is read)."""
    board = profile_board(protocol, benchmark, Where(Path(".")))
    shipped = known_records(protocol, benchmark)
    check_hashes(shipped, protocol, benchmark, Where(Path(".")))
    board.known = {r.key: r for r in shipped}
    return board, board.states()


def docs_section(protocol: Protocol, benchmark: str) -> str:
    """The benchmark's section of docs/leaderboard.md, from the shipped records."""
    board, states = records_board(protocol, benchmark)
    records = list(board.known.values())
    if not records:
        return "\n\n".join(part for part in (
            f"No records yet for {benchmark}.",
            _not_ranked(protocol, benchmark) if protocol.is_default else "") if part)
    seconds = [r.step_time_s for r in records if r.step_time_s]
    head = (f"{len(records)} runs recorded ({sum(st.final for st in states)} of {len(states)} "
            f"entries finished); made with {made_with(records)}"
            + (f"; median training step {1000 * sorted(seconds)[len(seconds) // 2]:.0f} ms"
               if seconds else "") + ".")
    parts = [head]
    rows = board.rows(states)
    if any(r.label == "stl" for r in rows):
        parts += tables(protocol, rows)
        if any(r.label.startswith(FRONT) for r in rows):
            from analysis.leaderboard import front_text

            parts.append(f"![{benchmark}: the fixed-weight front and the methods]"
                         f"(leaderboard/{benchmark}_front.png)")
            parts.append(front_text(rows))
    # A study's protocol (not the default one) lists what it compares, not a ranking.
    parts += [_unfinished(states), _not_ranked(protocol, benchmark) if protocol.is_default else ""]
    return "\n\n".join(p for p in parts if p)


def made_with(records: list[RunRecord]) -> str:
    """Which software, threads and machines made the records, with the runs of each when
    they differ, and at how many commits of this repository (every record names its own)."""
    groups = Counter((r.env.get("torch"), r.env.get("torch_threads"), r.env.get("device"),
                      r.env.get("machine") or "machine not recorded") for r in records)
    text = "; ".join(f"torch {t}, {n} thread(s), {d} ({m}"
                     + (f": {count} run(s))" if len(groups) > 1 else ")")
                     for (t, n, d, m), count in sorted(groups.items(), key=str))
    commits = {r.env.get("git_commit") for r in records} - {None}
    return text + (f", at {len(commits)} commit(s) of this repository" if commits else "")


def _not_ranked(protocol: Protocol, benchmark: str) -> str:
    """On a benchmark that ranks a subset, the methods it leaves out."""
    import dataclasses

    if protocol.benchmarks[benchmark] == "all":
        return ""
    every = dataclasses.replace(protocol, benchmarks={**protocol.benchmarks, benchmark: "all"})
    ranked = set(protocol.methods(benchmark))
    others = [m for m in every.methods(benchmark) if m not in ranked]
    return f"Not ranked on {benchmark} (the protocol lists a subset): {', '.join(others)}."


def markers(benchmark: str, protocol: Protocol | None = None) -> tuple[str, str]:
    """The lines around a generated section: the benchmark's own for the default protocol,
    ``<protocol folder>/<benchmark>`` for another, so that several protocols' sections of
    one benchmark can share a page."""
    if protocol is None or protocol.is_default:
        key, option = benchmark, ""
    else:
        key = f"{protocol.path.parent.name}/{benchmark}"
        where = protocol.path.resolve()
        shown = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
        option = f"--protocol {shown.as_posix()} "
    return (f"<!-- leaderboard:{key}:begin (generated: run_bench.py leaderboard {option}-b "
            f"{benchmark} --no-run --write-docs) -->", f"<!-- leaderboard:{key}:end -->")


def write_docs(protocol: Protocol, benchmark: str, path: Path | None = None) -> Path:
    """Replace the benchmark's generated section of the protocol's page (docs/leaderboard.md
    by default; and its front plot)."""
    from analysis.leaderboard import plot_front

    path = protocol.docs_path if path is None else path
    begin, end = markers(benchmark, protocol)
    text = path.read_text()
    if begin not in text or end not in text:
        raise UserError(f"{path}: no generated section for {benchmark} (expected the lines "
                        f"{begin} and {end})")
    section = docs_section(protocol, benchmark)
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    R.atomic_write_bytes(path, (head + begin + "\n" + section + "\n" + end + tail).encode())
    board, states = records_board(protocol, benchmark)
    rows = board.rows(states)
    if any(r.label.startswith(FRONT) for r in rows):
        FIGURES.mkdir(exist_ok=True)
        plot_front(rows, FIGURES / f"{benchmark}_front.png",
                   f"{benchmark}: test metrics, mean over seeds, every entry tuned")
    return path
