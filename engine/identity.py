"""What a run folder holds must be what the request asks for: same config, seed and data.

The config hash names the folder, but the data are not in it (paths are not hashed, so that
results stay valid when a data set moves). So every run also records a *data fingerprint*:

- a benchmark read from disk (``needs_data_root``): a hash of the relative name, size and
  modification time of every file under its data folder (one ``stat`` per file, no file is
  read; copying the data elsewhere with new modification times changes it);
- a built-in benchmark (generated or bundled data): a hash of the benchmark's name and its
  data options, the generator's parameters.

``config.json``, ``summary.json`` and every checkpoint record it. Before a run is skipped as
complete or resumed, ``folder_mismatch`` compares the folder's record with the request; a
difference is refused with the reason (``--force`` starts the run over). Folders written
before fingerprints were recorded have none and are accepted as they are.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from engine import results as R

FINGERPRINT_KEY = "data_fingerprint"


def files_fingerprint(root: Path) -> str:
    """Names, sizes and modification times of every file under ``root``, hashed."""
    digest = hashlib.sha256()
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = Path(folder) / name
            try:
                st = path.stat()
            except OSError:
                continue  # a dangling link or a file removed meanwhile
            entries.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns))
    for rel, size, mtime in sorted(entries):
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return "files:" + digest.hexdigest()[:16]


_files_cache: dict[str, str] = {}


def data_fingerprint(bench_cls, data_config, data_root: str | None) -> str:
    """The run's data fingerprint (see the module docstring). A data folder is walked once
    per process (a sweep builds every run of a benchmark from the same folder)."""
    if bench_cls.needs_data_root and data_root is not None:
        key = str(Path(data_root).resolve())
        if key not in _files_cache:
            _files_cache[key] = files_fingerprint(Path(data_root))
        return _files_cache[key]
    options = dataclasses.asdict(data_config) if dataclasses.is_dataclass(data_config) else {}
    text = json.dumps({"benchmark": bench_cls.name, "data": options}, sort_keys=True,
                      default=str)
    return "generated:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def folder_mismatch(run_dir: Path, config_hash: str, seed: int, fingerprint: str | None) -> str:
    """Why the folder's recorded identity differs from the request's ("" when it does not,
    or the folder records none). Reads ``config.json``, the record every run writes first."""
    path = run_dir / R.CONFIG
    try:
        recorded = R.read_json(path)
    except (OSError, ValueError):
        return ""
    if not isinstance(recorded, dict):
        return ""
    problems = []
    if recorded.get("config_hash") not in (None, config_hash):
        problems.append(f"config {recorded['config_hash']}, not {config_hash}")
    if recorded.get("seed") not in (None, seed):
        problems.append(f"seed {recorded['seed']}, not {seed}")
    theirs = recorded.get(FINGERPRINT_KEY)
    if fingerprint is not None and theirs is not None and theirs != fingerprint:
        problems.append(f"data fingerprint {theirs}, not {fingerprint} (the data changed, or "
                        f"another data folder was given)")
    if not problems:
        return ""
    return (f"{run_dir} holds a run of {'; '.join(problems)}; refusing to skip or resume it "
            f"(--force trains it again from scratch, or use another --out)")
