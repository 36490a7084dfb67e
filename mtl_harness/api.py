"""``compare``: a comparison from Python, as ``run_bench.py run`` makes it, returned as a
DataFrame."""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from analysis.table import Comparison
from engine.core import results as R
from engine.runs.runner import build_requests, run_all
from engine.runs.tables import requested_comparison
from methods.registry import METHODS


def method_names() -> list[str]:
    """Every registered method (``python run_bench.py list methods`` describes them)."""
    return METHODS.names()


def compare(benchmark: str, methods: Sequence[str], seeds: Iterable[int] = (0, 1, 2), *,
            settings: Sequence[str] = (), profile: str = "quick", out: str | Path = "results",
            data_root: str | None = None, device: str = "auto", rule: str = "last",
            progress: bool = False) -> pd.DataFrame:
    """Train (or reuse, when complete under ``out``) every run of ``methods`` × ``seeds`` on
    ``benchmark`` and return the comparison: one row per method, the test metrics' means
    (``"task/metric"``) and standard deviations (``"task/metric std"``), the Δ measures
    when stl runs of the same configuration exist (``methods`` may include ``"stl"``), the
    mean rank and the number of seeds. ``settings``: ``--set`` overrides such as
    ``"train.epochs=5"``. A run that fails is left out with a warning (its folder says why);
    the table's notes are in ``frame.attrs["notes"]``."""
    out = Path(out)
    requests = build_requests(benchmark, list(methods), list(seeds), profile, list(settings),
                              device, data_root, out=out)
    for outcome in run_all(requests, out, progress=progress):
        if outcome.state != R.STATUS_COMPLETE:
            warnings.warn(f"{outcome.run_dir}: {outcome.state} ({outcome.reason})",
                          stacklevel=2)
    comparison = requested_comparison(requests, out, rule)
    frames = [as_frame(table) for table in comparison.tables]
    if not frames:
        raise RuntimeError(f"no run of {benchmark} completed; see the run folders under {out}")
    frame = pd.concat(frames) if len(frames) > 1 else frames[0]
    frame.attrs["notes"] = [n for t in comparison.tables for n in t.notes] + comparison.notes
    return frame


def as_frame(table: Comparison) -> pd.DataFrame:
    """One comparison table as a flat DataFrame (rows: methods or settings)."""
    columns = {f"{task}/{metric}": table.mean[(task, metric)] for task, metric in table.columns}
    columns |= {f"{task}/{metric} std": table.std[(task, metric)]
                for task, metric in table.columns}
    frame = pd.DataFrame(columns)
    if table.deltas is not None:
        frame = frame.join(table.deltas)
    frame["mean_rank"] = table.ranks
    frame["seeds"] = table.seeds
    frame.index.name = "method"
    if table.protocol:
        frame.insert(0, "protocol", table.protocol)
    return frame
