"""The comparison of the runs a command asked for: exactly those run folders (no other seeds
or settings that happen to share the results folder), plus the single-task runs of the same
configuration already on disk when the command did not name stl, so that the Δ columns are
there whenever a baseline is."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from analysis.table import Comparison, comparisons, to_text
from engine.core import results as R
from engine.core.identity import folder_mismatch
from engine.runs.runner import RunRequest
from methods.registry import METHODS, Composition

BASELINE = "stl"


@dataclass
class RequestedComparison:
    """The tables of a request's runs and what was added to or left out of them."""

    tables: list[Comparison]
    run_dirs: set[str]
    notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts = [to_text(t) for t in self.tables] or ["(no complete runs to compare)"]
        return "\n\n".join(parts + self.excluded + self.notes)


def baseline_request(request: RunRequest) -> RunRequest:
    """The stl run of ``request``'s benchmark, configuration and seed: its config with the
    method section swapped (what ``run -m stl`` with the same settings resolves to)."""
    config = dataclasses.replace(request.config, method=BASELINE,
                                 methods={BASELINE: METHODS.get(BASELINE).Config()})
    return RunRequest(config, Composition(BASELINE, ()), BASELINE, request.data_fingerprint)


def existing_baselines(requests: list[RunRequest], out: Path) -> list[RunRequest]:
    """The stl runs of the requests' configurations and seeds that are complete under ``out``
    (none when the requests include stl themselves)."""
    if any(r.method_name == BASELINE for r in requests):
        return []
    found, seen = [], set()
    for request in requests:
        base = baseline_request(request)
        run_dir = base.dir(out)
        if run_dir in seen:
            continue
        seen.add(run_dir)
        if (R.run_state(run_dir).status == R.STATUS_COMPLETE
                and not folder_mismatch(run_dir, base.identity)):
            found.append(base)
    return found


def requested_comparison(requests: list[RunRequest], out: Path, rule: str = "last",
                         k: int = 3) -> RequestedComparison:
    """The comparison tables of exactly ``requests``' run folders (one benchmark), with the
    stl runs of the same configuration from ``out`` added when the requests have none."""
    if not requests:
        return RequestedComparison([], set())
    benchmark = requests[0].config.benchmark
    dirs = {str(r.dir(out)) for r in requests}
    notes = []
    if all(r.method_name != BASELINE for r in requests):
        bases = existing_baselines(requests, out)
        if bases:
            seeds = sorted({b.config.seed for b in bases})
            dirs |= {str(b.dir(out)) for b in bases}
            notes.append(f"Δ against the stl runs of this configuration already in {out} "
                         f"(seed{'s' if len(seeds) > 1 else ''} "
                         f"{', '.join(map(str, seeds))}): "
                         + ", ".join(str(b.dir(out)) for b in bases))
        else:
            notes.append(f"no Δ columns: no complete stl run of this configuration in {out} "
                         f"(add -m stl to train it)")
    tables, excluded = comparisons(out, rule, k, benchmark, run_dirs=dirs)
    left_out = [f"left out: {r.run_dir} ({r.status}: {r.reason})" for r in excluded.itertuples()]
    return RequestedComparison(tables, dirs, notes, left_out)
