"""What a run folder holds must be what the request asks for: same config, seed and data.

The config hash names the folder, but the data are not in it (paths are not hashed, so that
results stay valid when a data set moves). So every run also records a *data fingerprint*:

- a benchmark read from disk (``needs_data_root``): a hash of the relative name, size and
  modification time of every file under its data folder that the benchmark reads
  (``Benchmark.reads_data_file``; one ``stat`` per file, no file is read; copying the data
  elsewhere with new modification times changes it). Symbolic links are followed, a link
  back to a folder above it is not entered twice; hidden files and folders, and the results
  folder when it lies inside the data folder, are left out;
- a built-in benchmark (generated or bundled data): a hash of the benchmark's name and its
  data options, the generator's parameters.

``config.json``, ``summary.json`` and every checkpoint record the run's ``Identity`` (config
hash, seed, fingerprint). Before a run is skipped as complete or resumed, its folder's
records are compared with the request (``folder_mismatch``), and a checkpoint is compared
with it before it is loaded or used to repair ``metrics.jsonl`` (``Identity.differences``,
the one comparison for all three). A difference is refused with the reason (``--force``
starts the run over). A value that a record lacks (folders written before it was
recorded) is no difference.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.core import results as R
from engine.errors import UserError

FINGERPRINT_KEY = "data_fingerprint"


@dataclass(frozen=True)
class Identity:
    """What makes a run this run: its config hash, seed and data fingerprint (None when the
    data were not looked at)."""

    config_hash: str
    seed: int
    data_fingerprint: str | None = None

    def record(self) -> dict:
        """The identity as the entries of config.json, summary.json and checkpoints."""
        out = {"config_hash": self.config_hash, "seed": self.seed}
        if self.data_fingerprint is not None:
            out[FINGERPRINT_KEY] = self.data_fingerprint
        return out

    def differences(self, recorded: Mapping) -> list[str]:
        """How a record (config.json, summary.json, a checkpoint) differs from this identity,
        e.g. ``["seed 1, not 0"]``; empty when it does not."""
        problems = []
        theirs = recorded.get("config_hash")
        if theirs is not None and theirs != self.config_hash:
            problems.append(f"config {theirs}, not {self.config_hash}")
        theirs = recorded.get("seed")
        if theirs is not None and theirs != self.seed:
            problems.append(f"seed {theirs}, not {self.seed}")
        theirs = recorded.get(FINGERPRINT_KEY)
        if self.data_fingerprint is not None and theirs is not None \
                and theirs != self.data_fingerprint:
            problems.append(f"data fingerprint {theirs}, not {self.data_fingerprint} (other "
                            f"data: the data changed, or another data folder was given)")
        return problems


def _walk(folder: Path, rel: PurePosixPath, ancestors: frozenset, skip: frozenset
          ) -> Iterator[tuple[PurePosixPath, os.stat_result]]:
    """Every regular file under ``folder`` with its ``stat``, links followed. ``ancestors``
    (device, inode) are the folders being walked: a link to one of them is a loop."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return  # an unreadable folder: no benchmark can read its files either
    for entry in entries:
        if entry.name.startswith("."):
            continue  # .git, .DS_Store and the like: no reader reads hidden entries
        try:
            st = os.stat(entry.path)  # follows links: the data behind a link count
        except OSError:
            continue  # a dangling link or a file removed meanwhile
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key not in ancestors and key not in skip:
                yield from _walk(Path(entry.path), rel / entry.name, ancestors | {key}, skip)
        elif stat.S_ISREG(st.st_mode):
            yield rel / entry.name, st


def _folder_key(path: Path | None) -> frozenset:
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return frozenset()  # not there yet: nothing of it to leave out
    return frozenset({(st.st_dev, st.st_ino)}) if st is not None else frozenset()


def files_fingerprint(root: Path, reads: Callable[[PurePosixPath], bool] = lambda _: True,
                      exclude: Path | None = None) -> str:
    """Names, sizes and modification times of the files under ``root`` that ``reads``
    accepts (paths relative to ``root``), hashed; the folder ``exclude`` (the results) is
    left out."""
    return _hashed(_read_files(root, reads, exclude))


def _read_files(root: Path, reads: Callable[[PurePosixPath], bool],
                exclude: Path | None) -> list[tuple[str, int, int]]:
    root = Path(root)
    return [(str(rel), st.st_size, st.st_mtime_ns)
            for rel, st in _walk(root, PurePosixPath(), _folder_key(root), _folder_key(exclude))
            if reads(rel)]


def _hashed(entries: list[tuple[str, int, int]]) -> str:
    digest = hashlib.sha256()
    for rel, size, mtime in sorted(entries):
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return "files:" + digest.hexdigest()[:16]


_files_cache: dict[tuple, str] = {}


def data_fingerprint(bench_cls, data_config, data_root: str | None,
                     out: Path | None = None) -> str:
    """The run's data fingerprint (see the module docstring); ``out`` is the results folder,
    left out when it lies inside the data folder. A data folder is walked once per process
    and benchmark (a sweep builds every run of a benchmark from the same folder)."""
    options = dataclasses.asdict(data_config) if dataclasses.is_dataclass(data_config) else {}
    text = json.dumps({"benchmark": bench_cls.name, "data": options}, sort_keys=True,
                      default=str)
    if bench_cls.needs_data_root and data_root is not None:
        key = (text, str(Path(data_root).resolve()), str(Path(out).resolve()) if out else None)
        if key not in _files_cache:
            files = _read_files(Path(data_root),
                                lambda rel: bench_cls.reads_data_file(data_config, rel), out)
            if not files:
                # Refused when the run is built, not recorded as a failed run.
                raise UserError(f"benchmark {bench_cls.name}: the data folder {data_root} holds "
                                f"no file it reads (empty, or not readable); "
                                f"{bench_cls.data_hint}")
            _files_cache[key] = _hashed(files)
        return _files_cache[key]
    return "generated:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def folder_mismatch(run_dir: Path, identity: Identity) -> str:
    """Why the folder's records differ from the request's identity ("" when they do not).
    Both ``config.json`` and ``summary.json`` record it, so that losing one of them leaves
    the other to check; a checkpoint is checked when it is loaded."""
    problems: list[str] = []
    for name in (R.CONFIG, R.SUMMARY):
        try:
            recorded = R.read_json(run_dir / name)
        except (OSError, ValueError):
            continue
        if isinstance(recorded, dict):
            problems += [p for p in identity.differences(recorded) if p not in problems]
    if not problems:
        return ""
    return (f"{run_dir} holds a run of {'; '.join(problems)}; refusing to skip or resume it "
            f"(--force trains it again from scratch, or use another --out)")
