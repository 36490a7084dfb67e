"""Results on disk: one folder per run, every file written atomically.

``results/<benchmark>/<method>/seed<k>-<config hash>/``
  config.json    the fully resolved config (and its hash)
  env.json       Python, torch and package versions, device, CPU, git commit
  metrics.jsonl  one record per epoch and split (train, val, test)
  summary.json   status (running / complete / failed / diverged), reason, wall time, peak memory
  checkpoint.pt  the state at the end of the last finished epoch
  traceback.txt  for failed runs
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from engine.errors import UserError

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
ENV = "env.json"
CHECKPOINT = "checkpoint.pt"
TRACEBACK = "traceback.txt"
BENCHMARK_RECORD = "benchmark.json"  # Benchmark.extra_record(), when not empty

STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
STATUS_DIVERGED = "diverged"
FINAL_STATUSES = (STATUS_COMPLETE, STATUS_FAILED, STATUS_DIVERGED)
STATUS_ABSENT = "absent"
STATUS_UNREADABLE = "unreadable"


@dataclass(frozen=True)
class RunState:
    """Where a run folder stands, as its ``summary.json`` says: ``status`` is one of the
    STATUS_* values (``absent`` without a summary, ``unreadable`` when it cannot be read),
    or whatever other status the file records."""

    status: str
    reason: str = ""
    summary: dict = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """Complete, failed or diverged: nothing will change without a rerun."""
        return self.status in FINAL_STATUSES

    @property
    def user_error(self) -> bool:
        return self.summary.get("user_error") is True


def run_state(run_dir: Path) -> RunState:
    """The one place that reads what state a run is in (the runner, the executors, the
    sweep's listing, the comparison tables, the analysis and the records all ask here)."""
    path = run_dir / SUMMARY
    if not path.exists():
        return RunState(STATUS_ABSENT, "summary.json missing")
    try:
        summary = read_json(path)
    except (OSError, ValueError) as exc:
        return RunState(STATUS_UNREADABLE, f"summary.json unreadable ({exc})")
    if not isinstance(summary, dict):
        return RunState(STATUS_UNREADABLE, "summary.json holds no object")
    status = summary.get("status") or "unknown"
    reason = summary.get("reason") or ("still running or interrupted" if status == STATUS_RUNNING
                                       else "")
    return RunState(status, reason, summary)


def check_writable(folder: Path, what: str = "output folder") -> None:
    """Create ``folder`` if needed and make sure a file can be written in it, before any
    work whose results would then be lost; refuse with a one-line reason otherwise."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to {what} {folder}: {exc.strerror or exc}") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.*.tmp``) that an interrupted atomic write left
    in ``folder``; only call it while holding the folder's run lock. Returns them."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n").encode())


def write_jsonl(path: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(_json_safe(r), sort_keys=True) + "\n" for r in records)
    atomic_write_bytes(path, text.encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_dir(out: Path, benchmark: str, method: str, seed: int, config_hash: str) -> Path:
    return out / benchmark / method / f"seed{seed}-{config_hash}"


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it, which a
    container or a batch scheduler narrows below the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def processor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name (Linux's /proc/cpuinfo, else what the platform reports), so
    that timings and records say which machine made them."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def environment(device: torch.device) -> dict:
    packages = {}
    for name in ("torch", "torchvision", "numpy", "scipy", "pandas", "scikit-learn", "matplotlib"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    env = {"python": sys.version.split()[0], "platform": platform.platform(),
           "packages": packages, "device": str(device), "git_commit": git_commit(),
           "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda,
           "processor": processor(), "cores": usable_cores()}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory: the CUDA allocator's peak on a GPU, else the process's peak RSS (which
    covers everything the process did before, not only this run)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
