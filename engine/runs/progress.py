"""How far a command is through its runs: a bar on a terminal, one line per finished run
where the output goes to a file or a pipe (a log stays readable: no redrawn bars), nothing
when progress is off."""
from __future__ import annotations

import sys


class RunProgress:
    """Counts finished runs; use as a context manager."""

    def __init__(self, total: int, desc: str, enabled: bool = True, min_runs: int = 1):
        from tqdm.auto import tqdm

        self.total, self.done = total, 0
        self.lines = enabled and not sys.stderr.isatty()
        shown = enabled and not self.lines and total >= min_runs
        self.bar = tqdm(total=total, desc=desc, unit="run", disable=not shown, position=0)

    def finished(self, label: str, status: str) -> None:
        self.done += 1
        if self.lines:
            print(f"[{self.done}/{self.total}] {label}: {status}", file=sys.stderr, flush=True)
        else:
            self.bar.set_postfix_str(f"{label}: {status}")
            self.bar.update(1)

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
