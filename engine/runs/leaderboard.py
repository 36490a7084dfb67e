"""The leaderboard's protocol, planned and run: every method tuned on equal terms.

``benchmarks/leaderboard/protocol.toml`` states the protocol. For one benchmark, every entry
(a method, or a point of the fixed-weight front) goes through three stages, each depending
on the validation results of the one before:

1. ``lr``: the learning-rate grid at the tuning seed;
2. ``knob``: at the best learning rate, the two settings of the entry's knob;
3. ``final``: the best of those six configurations for every seed, and the untuned
   configuration (the profile's learning rate, nothing else changed) for every seed.

"Best" is the highest validation Δp_task at the last epoch, against the reference: the
untuned single-task run at the tuning seed (the same reference for every entry, so the
choice never depends on another entry's tuning). A run that diverged scores -inf.

What is known comes from two places: the shipped records of the benchmark
(``analysis/records.py``), which are never rerun, and complete run folders under the results
folder. ``advance`` runs whatever the current stage of each entry still lacks, wave after
wave, until every entry is final or a run fails. ``engine/runs/leaderboard_report.py`` turns
what is known into tables, the plan's text and the docs' sections.
"""
from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from analysis.measures import delta_p_task
from engine.core import results as R
from analysis.records import RunRecord, read_records, record_from_run, write_records
from engine.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "benchmarks" / "leaderboard" / "protocol.toml"
FRONT = "fixed"
FIRST = ("stl", "ew")  # the reference and the baseline: every other row is read against them
SHARED_KEYS = ("profile", "set", "lr_grid", "tuning_seed", "seeds", "selection", "default_knob")


def literal(value) -> str:
    from engine.runs.sweep import toml_literal

    return toml_literal(value)


def override_set(table: dict) -> tuple[str, ...]:
    return tuple(sorted(f"{k}={literal(v)}" for k, v in table.items()))


@dataclass(frozen=True)
class Entry:
    """One row of the leaderboard: a method (``label`` = its name) or a front point."""

    label: str
    method: str
    base: tuple[str, ...]
    knob: tuple[tuple[str, ...], ...]
    own: tuple[str, ...] = ()
    """The protocol's settings of this method alone (``[method_set]``): part of every run,
    shown in the tables, and replaced by a knob setting of the same key."""

    def with_(self, *extra: tuple[str, ...]) -> tuple[str, ...]:
        keys = {o.split("=", 1)[0] for e in extra for o in e}
        own = [o for o in self.own if o.split("=", 1)[0] not in keys]
        return tuple(sorted(set(self.base).union(own, *extra)))


@dataclass
class Protocol:
    path: Path
    raw: dict
    profile: str
    lr_grid: list[float]
    tuning_seed: int
    seeds: list[int]
    default_knob: tuple[tuple[str, ...], ...]
    front_weights: list[float]
    knobs: dict[str, tuple[tuple[str, ...], ...]]
    exclude: dict[str, str]
    benchmarks: dict[str, object]
    fixed: tuple[str, ...] = ()
    """Overrides of every run (the protocol's ``set`` table)."""
    first: tuple[str, ...] = ()
    """Methods run before the others (``fixed`` places the front)."""
    untuned_seeds: bool = True
    """Whether the untuned configuration is trained for every seed (else only the tuning
    seed's run of the learning-rate stage exists, and the table shows no untuned column)."""
    knob_from: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    """Entries whose knob is another entry's selected setting, renamed: ``{label: (source,
    {source key: own key})}`` (e.g. an ablation at the full method's selected λ)."""
    method_set: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Settings of one method's every run (``[method_set]``: a λ other than its default,
    say), so that its learning rate is selected at that setting."""

    def hash(self) -> str:
        """What the records depend on: the shared settings (not the method lists)."""
        shared = {k: self.raw.get(k) for k in SHARED_KEYS}
        return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def docs_path(self) -> Path:
        """The page holding this protocol's generated sections (``docs`` in the file, a path
        from the project's root; docs/leaderboard.md by default)."""
        return ROOT / self.raw.get("docs", "docs/leaderboard.md")

    @property
    def is_default(self) -> bool:
        return self.path.resolve() == PROTOCOL.resolve()

    def records_path(self, benchmark: str) -> Path:
        """Records live beside their protocol, in ``records/``."""
        return self.path.parent / "records" / f"{benchmark}.jsonl.gz"

    def entries(self, benchmark: str, methods: list[str] | None = None,
                tasks: int | None = None) -> list[Entry]:
        """The entries of a benchmark: its methods (or ``methods``), then the fixed-weight
        front when the benchmark has two tasks (``tasks``, known once a run is) and the
        front is asked for (every method, or ``fixed`` named in ``methods``)."""
        from methods.registry import canonical_name, parse_method

        self.check_benchmark(benchmark)
        names = self.methods(benchmark, tasks) if methods is None else list(methods)
        out = []
        for spec in names:
            name = canonical_name(spec)
            if name == FRONT:
                continue
            parse_method(name)  # refuses an unknown name with a hint
            if name in self.exclude:
                raise UserError(f"{name} is left out of the leaderboard: {self.exclude[name]}")
            out.append(Entry(name, name, self.fixed, self.knobs.get(name, self.default_knob),
                             self.method_set.get(name, ())))
        front = (methods is None and self.benchmarks[benchmark] == "all") or FRONT in names
        if front and tasks == 2:
            for w in self.front_weights:
                weights = override_set({f"method.{FRONT}.weights": [w, round(1 - w, 10)]})
                out.append(Entry(f"{FRONT} w={w:g}", FRONT, tuple(sorted(self.fixed + weights)),
                                 self.default_knob))
        # The order in which entries are run (one after another): the protocol's `first`
        # list, then the rest; stl and ew always lead, every other row is read against them.
        first = list(FIRST) + [m for m in self.first if m not in FIRST]
        rank = lambda e: first.index(e.method) if e.method in first else len(first)  # noqa: E731
        return sorted(out, key=rank)

    def check_benchmark(self, benchmark: str) -> None:
        if benchmark not in self.benchmarks:
            raise UserError(f"benchmark {benchmark!r} has no leaderboard; the protocol "
                            f"({self.path.name}) lists {', '.join(self.benchmarks)}")

    def methods(self, benchmark: str, tasks: int | None = None) -> list[str]:
        """The methods a benchmark ranks: its list, or every registered method that it
        accepts, less the excluded ones, the front's ``fixed`` and, once the benchmark's
        number of tasks is known (``tasks``), those defined only for more tasks."""
        from benchmarks.registry import BENCHMARKS
        from engine.runs.runner import check_compatible
        from methods.registry import METHODS, parse_method

        listed = self.benchmarks[benchmark]
        if listed != "all":
            return list(listed)
        bench_cls = BENCHMARKS.get(benchmark)
        names = []
        for name in METHODS.names():
            if name in self.exclude or name == FRONT or not is_builtin(name):
                continue
            try:
                check_compatible(parse_method(name), name, bench_cls)
            except UserError:
                continue
            if tasks is not None and too_few_tasks(name, tasks):
                continue
            names.append(name)
        return names


def too_few_tasks(method: str, tasks: int) -> bool:
    """The method, at its default settings, needs more than ``tasks`` tasks."""
    from methods.registry import METHODS, parse_method

    return any(METHODS.get(c).min_tasks(METHODS.get(c).Config()) > tasks
               for c in parse_method(method).components)


def is_builtin(method: str) -> bool:
    """Every component of the method is one of the project's own (not a plugin's)."""
    from methods.registry import METHODS, parse_method

    return all(METHODS.get(c).__module__.startswith("methods.")
               for c in parse_method(method).components)


def load_protocol(path: Path = PROTOCOL) -> Protocol:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the leaderboard protocol ({exc})") from None
    missing = [k for k in (*SHARED_KEYS, "benchmarks") if k not in raw and k != "set"]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    knob = lambda sets: tuple(override_set(t) for t in sets)  # noqa: E731
    if not isinstance(raw.get("metrics_table", False), bool):
        raise ConfigError(f"{path}: metrics_table must be true or false, got "
                          f"{raw['metrics_table']!r}")
    if not isinstance(raw.get("docs", ""), str):
        raise ConfigError(f"{path}: docs must be a page's path from the project's root, got "
                          f"{raw['docs']!r}")
    untuned_seeds = raw.get("untuned_seeds", True)
    if not isinstance(untuned_seeds, bool):
        raise ConfigError(f"{path}: untuned_seeds must be true or false, got {untuned_seeds!r}")
    return Protocol(path, raw, raw["profile"], [float(v) for v in raw["lr_grid"]],
                    int(raw["tuning_seed"]), [int(s) for s in raw["seeds"]],
                    knob(raw["default_knob"]), [float(w) for w in raw.get("front_weights", [])],
                    {m: knob(v) for m, v in raw.get("knobs", {}).items()},
                    dict(raw.get("exclude", {})), dict(raw["benchmarks"]),
                    override_set(raw.get("set", {})), tuple(raw.get("first", ())),
                    untuned_seeds, _knob_from(path, raw.get("knob_from", {}), raw),
                    _method_set(path, raw.get("method_set", {})))


def _method_set(path: Path, table: dict) -> dict[str, tuple[str, ...]]:
    """``[method_set]``: method = { "<key>" = value, ... }, each key of that method's own."""
    out = {}
    for method, settings in table.items():
        if not isinstance(settings, dict) or not all(
                k.startswith(f"method.{method}.") for k in settings):
            raise ConfigError(f"{path}: [method_set] {method} must be a table of "
                              f"method.{method}.<option> = value, got {settings!r}")
        out[method] = override_set(settings)
    return out


def _knob_from(path: Path, table: dict, raw: dict) -> dict[str, tuple[str, dict[str, str]]]:
    """``[knob_from.<label>]`` tables: ``entry`` (the source entry) and ``keys`` (its
    override keys mapped to the label's own)."""
    out = {}
    for label, spec in table.items():
        entry, keys = (spec.get("entry"), spec.get("keys")) if isinstance(spec, dict) else (None, None)
        if not isinstance(entry, str) or not isinstance(keys, dict) or not keys \
                or not all(isinstance(v, str) for v in keys.values()):
            raise ConfigError(f"{path}: [knob_from.{label}] needs entry = \"<method>\" and "
                              f"keys = {{ \"<its key>\" = \"<{label}'s key>\", ... }}")
        if entry == label or entry in table:
            raise ConfigError(f"{path}: [knob_from.{label}] takes its knob from {entry!r}, "
                              f"which must tune its own knob")
        if label in raw.get("knobs", {}):
            raise ConfigError(f"{path}: {label} has both a knob list and [knob_from.{label}]")
        out[label] = (entry, dict(keys))
    return out


# --------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class Planned:
    entry: Entry
    stage: str
    overrides: tuple[str, ...]
    seed: int

    @property
    def key(self) -> tuple[str, tuple[str, ...], int]:
        return self.entry.method, self.overrides, self.seed


@dataclass
class EntryState:
    """Where an entry stands: the runs its current stage needs, and what was selected."""

    entry: Entry
    needed: list[Planned] = field(default_factory=list)
    tuning: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    selected: tuple[str, ...] | None = None
    untuned: tuple[str, ...] = ()
    waits_for: str = ""
    """The entry whose selection this one's knob needs (``knob_from``), while it has none."""

    @property
    def final(self) -> bool:
        return self.selected is not None and not self.needed


class Board:
    """The protocol applied to one benchmark, over what is known so far."""

    def __init__(self, protocol: Protocol, benchmark: str, profile_lr: float,
                 tasks: int | None = None):
        self.protocol = protocol
        self.benchmark = benchmark
        self.profile_lr = profile_lr
        self.tasks = tasks
        """The benchmark's number of tasks where its config tells it before any run."""
        self.known: dict[tuple, RunRecord] = {}

    def lr_set(self, lr: float) -> tuple[str, ...]:
        return (f"train.lr={literal(lr)}",)

    def reference(self) -> RunRecord | None:
        overrides = tuple(sorted(self.protocol.fixed + self.lr_set(self.profile_lr)))
        key = ("stl", overrides, self.protocol.tuning_seed)
        return self.known.get(key)

    def score(self, record: RunRecord | None, reference: RunRecord) -> float:
        if record is None or record.status != "complete":
            return -math.inf
        return validation_score(record, reference)

    def states(self, methods: list[str] | None = None) -> list[EntryState]:
        reference = self.reference()
        tasks = len(reference.tasks) if reference else self.tasks
        return [self.state(e) for e in self.protocol.entries(self.benchmark, methods, tasks)]

    def rows(self, states: list[EntryState]) -> list:
        """The finished entries as table rows (analysis.leaderboard.Row)."""
        from analysis.leaderboard import Row

        p = self.protocol
        get = lambda st, overrides: [self.known[(st.entry.method, overrides, s)]  # noqa: E731
                                     for s in p.seeds if (st.entry.method, overrides, s) in self.known]
        return [Row(st.entry.label, tuple(o for o in st.selected if o not in st.entry.base),
                    get(st, st.selected),
                    [] if st.entry.method == FRONT or not p.untuned_seeds else get(st, st.untuned))
                for st in states if st.final]

    def state(self, entry: Entry) -> EntryState:
        p, st = self.protocol, EntryState(entry)
        st.untuned = entry.with_(self.lr_set(self.profile_lr))
        lr_runs = [Planned(entry, "lr", entry.with_(self.lr_set(lr)), p.tuning_seed)
                   for lr in p.lr_grid]
        reference = self.reference()
        st.needed = [r for r in lr_runs if r.key not in self.known]
        if reference is None and not st.needed and entry.method != "stl":
            return st  # waits for the reference (stl's untuned tuning run)
        if st.needed or reference is None:
            if reference is None and entry.method == "stl" and not st.needed:
                st.needed = [Planned(entry, "lr", st.untuned, p.tuning_seed)]
            return st
        scores = [(r.overrides, self.score(self.known[r.key], reference)) for r in lr_runs]
        best_lr = max(scores, key=lambda s: s[1])[0]
        lr_part = tuple(o for o in best_lr if o.startswith("train.lr="))
        knobs = entry.knob
        if entry.label in p.knob_from:
            knobs = self.inherited_knob(entry)
            if knobs is None:
                st.waits_for = p.knob_from[entry.label][0]
                return st
        knob_runs = [Planned(entry, "knob", entry.with_(lr_part, k), p.tuning_seed)
                     for k in knobs]
        st.needed = [r for r in knob_runs if r.key not in self.known]
        if st.needed:
            st.tuning = scores
            return st
        st.tuning = scores + [(r.overrides, self.score(self.known[r.key], reference))
                              for r in knob_runs]
        st.selected = max(st.tuning, key=lambda s: s[1])[0]
        finals = [Planned(entry, "final", st.selected, s) for s in p.seeds]
        if not entry.label.startswith(FRONT) and p.untuned_seeds:
            finals += [Planned(entry, "untuned", st.untuned, s) for s in p.seeds]
        st.needed = [r for r in finals if r.key not in self.known]
        return st


    def inherited_knob(self, entry: Entry) -> tuple[tuple[str, ...], ...] | None:
        """The knob of a ``knob_from`` entry: its source's selected values under the
        entry's own keys (one setting; empty when the source kept its defaults), or None
        while the source has selected nothing."""
        source, keys = self.protocol.knob_from[entry.label]
        (source_entry,) = self.protocol.entries(self.benchmark, [source])
        selected = self.state(source_entry).selected
        if selected is None:
            return None
        mapped = [f"{keys[k]}={v}" for k, v in (o.split("=", 1) for o in selected) if k in keys]
        return (tuple(sorted(mapped)),)


def validation_score(record: RunRecord, reference: RunRecord) -> float:
    """Δp_task (%) of the record's last validation epoch against the reference's."""
    mine, base = record.final("val"), reference.final("val")
    values, baseline, higher, tasks = [], [], [], []
    for task, metrics in record.tasks.items():
        for metric, spec in metrics.items():
            value = mine.get(task, {}).get(metric)
            if value is None or not math.isfinite(value):
                return -math.inf
            values.append(value)
            baseline.append(base[task][metric])
            higher.append(bool(spec["higher_is_better"]))
            tasks.append(task)
    return float(delta_p_task(values, baseline, higher, tasks))


# --------------------------------------------------------------------------- knowledge

def known_records(protocol: Protocol, benchmark: str) -> list[RunRecord]:
    return read_records(protocol.records_path(benchmark), benchmark, protocol.hash())


def check_hashes(records: list[RunRecord], protocol: Protocol, benchmark: str,
                 where: Where) -> None:
    """A shipped record whose settings this harness now resolves to another config is
    refused: using it would rank a run of other code, and rerunning it silently would make
    two versions of one run. One resolution per configuration (the hash has no seed)."""
    from engine.runs.runner import build_requests

    resolved: dict[tuple, str] = {}
    for record in records:
        config = (record.method, record.overrides)
        if config not in resolved:
            (request,) = build_requests(benchmark, [record.method], [record.seed],
                                        protocol.profile, list(record.overrides), where.device,
                                        where.data_root, check_data=False)
            resolved[config] = request.config.hash()
        if record.config_hash != resolved[config]:
            raise UserError(f"the record of {record.method} seed {record.seed} "
                            f"({' '.join(record.overrides)}) was made with config "
                            f"{record.config_hash}; this harness resolves the same settings to "
                            f"{resolved[config]} (the code or the profile changed): the records "
                            f"no longer describe this harness")


def export_records(protocol: Protocol, benchmark: str, new: list[RunRecord]) -> int:
    """Add records of built-in methods to the shipped file; returns how many were new."""
    path = protocol.records_path(benchmark)
    existing = {r.key: r for r in known_records(protocol, benchmark)}
    added = 0
    for record in new:
        if record.key in existing or not is_builtin(record.method):
            continue
        existing[record.key] = record
        added += 1
    if added:
        write_records(path, benchmark, protocol.hash(), list(existing.values()))
    return added


# --------------------------------------------------------------------------- running

@dataclass
class Outcome:
    """Where the benchmark's leaderboard stands after ``advance``."""

    board: Board
    states: list[EntryState]
    pending: list[tuple[Planned, str]] = field(default_factory=list)
    """Runs still needed, with their run folder (a dry run, or after a failure)."""
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Where:
    """Where and how runs are made (the command line's options)."""

    out: Path
    device: str = "auto"
    data_root: str | None = None
    plugins: tuple[str, ...] = ()
    jobs: int = 1
    progress: bool = False


def profile_board(protocol: Protocol, benchmark: str, where: Where) -> Board:
    """An empty board for the benchmark: the profile's learning rate (the untuned setting)
    and, where the config tells it, the number of tasks (so that a first plan already leaves
    out the methods defined for more tasks)."""
    from benchmarks.registry import BENCHMARKS
    from engine.runs.runner import build_requests

    protocol.check_benchmark(benchmark)  # before the protocol's settings meet its config
    (request,) = build_requests(benchmark, ["ew"], [protocol.tuning_seed], protocol.profile,
                                list(protocol.fixed), where.device, where.data_root,
                                check_data=False)
    return Board(protocol, benchmark, float(request.config.train.lr),
                 BENCHMARKS.get(benchmark).task_count(request.config.data))


def advance(protocol: Protocol, benchmark: str, methods: list[str] | None, where: Where,
            dry_run: bool = False) -> Outcome:
    """Run every stage that the entries still need, wave after wave (see the module
    docstring); a dry run plans the next wave only."""
    from engine.runs import executors as X
    from engine.runs.runner import build_requests
    from engine.runs.sweep import RunSpec

    import torch

    if where.jobs == 1:
        # One torch thread per run, as the records were made (the processes executor gives
        # each of its workers cores // jobs): a thread count sums in another order.
        torch.set_num_threads(1)
    shipped = known_records(protocol, benchmark)
    check_hashes(shipped, protocol, benchmark, where)
    known = {r.key: r for r in shipped}
    board = profile_board(protocol, benchmark, where)
    options = X.Options(str(where.out))
    requests: dict[tuple, object] = {}  # planned key -> its resolved request (planning is replayed)
    while True:
        board.known = known
        states = board.states(methods)
        needed = list({p.key: p for st in states for p in st.needed
                       if p.key not in known}.values())
        specs, found = [], False
        for p in needed:
            if p.key not in requests:
                (requests[p.key],) = build_requests(
                    benchmark, [p.entry.method], [p.seed], protocol.profile, list(p.overrides),
                    where.device, where.data_root, check_data=not dry_run)
            request = requests[p.key]
            run_dir = request.dir(where.out)
            record = record_from_run(run_dir, p.overrides)
            if record is not None:
                known[p.key] = record
                found = True
                continue
            specs.append((p, RunSpec(benchmark, request.method_name, p.seed, protocol.profile,
                                     p.overrides, where.device, where.data_root,
                                     request.config.hash(), str(run_dir), where.plugins,
                                     f"{p.entry.label} {p.stage}")))
        if found:
            continue  # what the folders held may unlock the next stage
        outcome = Outcome(board, states, [(p, spec.run_dir) for p, spec in specs])
        if not specs or dry_run:
            return outcome
        # Entries advance one after another (the first ``jobs`` runs needed, then plan
        # again), so that an interrupted leaderboard leaves finished rows, not a half stage
        # of every entry.
        todo, results = X.plan([spec for _, spec in specs[:where.jobs]], options)
        if todo and where.jobs > 1:
            results += X.run_processes(todo, options, where.jobs, where.progress)
        elif todo:
            results += X.run_local(todo, options, where.progress)
        failed = [f"{r.label}: {r.state} ({r.reason})" for r in results
                  if r.state not in (R.STATUS_COMPLETE, R.STATUS_DIVERGED)]
        if failed:
            outcome.failures = failed
            return outcome
