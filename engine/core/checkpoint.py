"""Checkpoints: written atomically at the end of every epoch, loaded with weights_only=True.

The previous checkpoint is kept as ``checkpoint.prev.pt``, so that a truncated or corrupt
latest checkpoint costs one epoch, not the run. A checkpoint of another config (edited
config, other code version), seed or data (engine/core/identity.py) is never loaded, nor used to
repair ``metrics.jsonl`` (``checkpoint_mismatch``): the run is refused with the reason.

Method state may hold numpy arrays and numpy scalars (plugins' ``get_extra_state``); they
are stored as tensors (``portable``) and given back as numpy on load (``restore``), since
``weights_only=True`` loads no numpy objects. ``check_loadable`` tries each method's state
once, when a run saves its first checkpoint, so that a state that could not be loaded back
fails the run at once, naming the method, instead of at every resume.
"""
from __future__ import annotations

import io
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import UserError
from engine.core.identity import Identity
from engine.core.results import CHECKPOINT, atomic_write_bytes

log = logging.getLogger(__name__)
PREVIOUS = "checkpoint.prev.pt"


def save_checkpoint(run_dir: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    latest = run_dir / CHECKPOINT
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
    atomic_write_bytes(latest, buffer.getvalue())


NDARRAY_TAG = "__ndarray__"


def portable(value: Any) -> Any:
    """``value`` with numpy arrays as tagged tensors and numpy scalars as Python numbers."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        return {NDARRAY_TAG: torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return _same_mapping(value, {k: portable(v) for k, v in value.items()})
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(portable(v) for v in value)
    return value


def _same_mapping(original: dict, items: dict) -> dict:
    """``items`` as the original's kind of mapping, keeping a state dict's ``_metadata``
    (module versions that ``load_state_dict`` reads)."""
    out = OrderedDict(items) if isinstance(original, OrderedDict) else items
    if hasattr(original, "_metadata"):
        out._metadata = original._metadata
    return out


def restore(value: Any) -> Any:
    """The inverse of ``portable``."""
    if isinstance(value, dict):
        if set(value) == {NDARRAY_TAG} and isinstance(value[NDARRAY_TAG], torch.Tensor):
            return value[NDARRAY_TAG].numpy()
        return _same_mapping(value, {k: restore(v) for k, v in value.items()})
    if isinstance(value, list):
        return [restore(v) for v in value]
    if isinstance(value, tuple):
        return tuple(restore(v) for v in value)
    return value


def check_loadable(name: str, state: Any) -> None:
    """Refuse a method state that a checkpoint could not give back (weights_only=True)."""
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
        buffer.seek(0)
        torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"method {name}: its state cannot be saved in a checkpoint and loaded "
                        f"back with weights_only=True ({first}); keep tensors, numbers, "
                        f"strings, numpy arrays and lists or dicts of them in its state") from None


class CheckpointMismatch(UserError):
    pass


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file's state. Raises (any exception) when the file is unreadable or is
    not a checkpoint of this harness."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state or "config_hash" not in state:
        raise ValueError("not a checkpoint of this harness")
    return state


def checkpoint_mismatch(path: Path, state: dict, identity: Identity) -> str:
    """Why a checkpoint must not be used for the run ``identity`` (another config, seed or
    data), or "". Resuming and repairing ``metrics.jsonl`` both ask this."""
    problems = identity.differences(state)
    return f"{path} belongs to {'; '.join(problems)}" if problems else ""


def load_checkpoint(run_dir: Path, identity: Identity) -> dict | None:
    """The newest readable checkpoint of this run, or None. A corrupt file is set aside
    (renamed ``*.corrupt``) and the previous one is tried; the log says which one the run
    resumes from, or that it starts from scratch."""
    set_aside = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = read_checkpoint(path)
        except Exception as exc:  # any unreadable file: truncated, corrupt, foreign
            aside = path.with_suffix(".corrupt")
            os.replace(path, aside)
            log.warning("checkpoint %s is unreadable (%s); set aside as %s", path, exc, aside.name)
            set_aside.append(name)
            continue
        mismatch = checkpoint_mismatch(path, state, identity)
        if mismatch:
            raise CheckpointMismatch(f"{mismatch}; rerun with --force to start this run over")
        log.log(logging.WARNING if set_aside else logging.INFO,
                "resuming %s from the end of epoch %d (%s)", run_dir, state["epoch"], name)
        return state
    if set_aside:
        log.warning("no readable checkpoint left in %s; the run starts from scratch", run_dir)
    return None
