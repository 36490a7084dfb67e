"""The one writer of a run folder (engine/core/results.py names its files).

The runner opens a ``RunFolder`` for a run and hands it to the Trainer: the runner records
the run's start (config, environment, a ``running`` summary) and its end (the final summary,
a traceback), the Trainer each finished epoch (metrics, traces, then the checkpoint) and
reads the checkpoint to resume; the batched toy runner (engine/runs/toy_batch.py) writes its
finished runs through it too. Nothing else writes into the folder, and ``state()`` (that
is, ``results.run_state``) is how anyone reads where the run stands.

In a data-parallel run every process holds the folder but only the main one writes
(``writes``); every process reads the checkpoint. A Trainer without a folder (``perf``,
scripts) writes nothing and starts from scratch.
"""
from __future__ import annotations

from pathlib import Path

from engine.core import results as R
from engine.core.checkpoint import load_checkpoint, save_checkpoint
from engine.core.identity import Identity

LEFT_BY_A_FORCED_RERUN = (R.CHECKPOINT, "checkpoint.prev.pt", R.METRICS, R.TRACEBACK)


class RunFolder:
    def __init__(self, path: Path, writes: bool = True):
        self.path = Path(path)
        self.writes = writes

    def state(self) -> R.RunState:
        return R.run_state(self.path)

    # ------------------------------------------------------------------ the runner's part
    def open(self, force: bool) -> None:
        """Create the folder; ``force`` drops what a previous run of it trained (so it
        starts from scratch). Under the run's lock no other process writes here, so any
        temporary file is what a killed process left behind."""
        if not self.writes:
            return
        if force and self.path.exists():
            for name in LEFT_BY_A_FORCED_RERUN:
                (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        R.remove_temporaries(self.path)

    def start(self, config: dict, env: dict, summary: dict) -> None:
        """config.json, env.json and the ``running`` summary."""
        self.write_setup(config, env)
        self.write_summary(summary)

    def write_setup(self, config: dict, env: dict) -> None:
        """config.json and env.json."""
        self._json(R.CONFIG, config)
        self._json(R.ENV, env)

    def write_summary(self, summary: dict) -> None:
        self._json(R.SUMMARY, summary)

    def write_benchmark_record(self, record: dict) -> None:
        """What the benchmark generated or decided for this run (Benchmark.extra_record)."""
        self._json(R.BENCHMARK_RECORD, record)

    def write_traceback(self, text: str) -> None:
        if self.writes:
            R.atomic_write_bytes(self.path / R.TRACEBACK, text.encode())

    def close(self) -> None:
        if self.writes:
            R.remove_temporaries(self.path)

    # ------------------------------------------------------------------ the Trainer's part
    def load_checkpoint(self, identity: Identity) -> dict | None:
        return load_checkpoint(self.path, identity)

    def end_epoch(self, records: list[dict], traces, state: dict) -> None:
        """Files first, checkpoint last: a run killed in between redoes this epoch and
        rewrites them, so they never lag behind the checkpoint."""
        if not self.writes:
            return
        self.write_lines(R.METRICS, records)
        traces.write(self.path)
        save_checkpoint(self.path, state)

    def write_lines(self, name: str, records: list[dict]) -> None:
        """A JSON-lines file of the run (metrics.jsonl, a trace written whole)."""
        if self.writes:
            R.write_jsonl(self.path / name, records)

    def _json(self, name: str, obj) -> None:
        if self.writes:
            R.atomic_write_json(self.path / name, obj)
