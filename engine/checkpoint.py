"""Checkpoints: written atomically at the end of every epoch, loaded with weights_only=True.

The previous checkpoint is kept as ``checkpoint.prev.pt``, so that a truncated or corrupt
latest checkpoint costs one epoch, not the run. A checkpoint of another config (edited
config, other code version) is never loaded silently.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import torch

from engine.errors import UserError
from engine.results import CHECKPOINT, atomic_write_bytes

log = logging.getLogger(__name__)
PREVIOUS = "checkpoint.prev.pt"


def save_checkpoint(run_dir: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    latest = run_dir / CHECKPOINT
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
    atomic_write_bytes(latest, buffer.getvalue())


class CheckpointMismatch(UserError):
    pass


def load_checkpoint(run_dir: Path, config_hash: str) -> dict | None:
    """The newest readable checkpoint of this run, or None. A corrupt file is set aside
    (renamed ``*.corrupt``) and the previous one is tried; the log says which one the run
    resumes from, or that it starts from scratch."""
    set_aside = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "epoch" not in state:
                raise ValueError("not a checkpoint of this harness")
        except Exception as exc:  # any unreadable file: truncated, corrupt, foreign
            aside = path.with_suffix(".corrupt")
            os.replace(path, aside)
            log.warning("checkpoint %s is unreadable (%s); set aside as %s", path, exc, aside.name)
            set_aside.append(name)
            continue
        if state.get("config_hash") != config_hash:
            raise CheckpointMismatch(
                f"{path} belongs to config {state.get('config_hash')}, not {config_hash}; "
                f"rerun with --force to start this run over")
        log.log(logging.WARNING if set_aside else logging.INFO,
                "resuming %s from the end of epoch %d (%s)", run_dir, state["epoch"], name)
        return state
    if set_aside:
        log.warning("no readable checkpoint left in %s; the run starts from scratch", run_dir)
    return None
