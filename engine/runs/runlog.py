"""What a run reports while it trains: ``run.log`` in its folder, and TensorBoard events.

``run_log(run_dir)`` sends every log record of the process (INFO and up, DEBUG with -v) to
``<run dir>/run.log`` for as long as the run trains, appending, so that an interrupted and
resumed run keeps one log. The console keeps its own level: only the file gets INFO.

``TensorBoardHook`` writes each epoch's records (training losses and weights, val/test
losses and metrics, learning rate) as scalars under ``<run dir>/tensorboard/``; it needs the
``tensorboard`` package, which ``check_tensorboard()`` verifies before any run starts.
``WandbHook`` logs the same scalars, and the resolved config, to Weights & Biases (one W&B
run per harness run, its files under ``<run dir>/wandb/``); it needs the optional ``wandb``
package (``check_wandb()``) and honours W&B's own environment (``WANDB_PROJECT``,
``WANDB_MODE=offline``, ...).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from engine.errors import UserError

RUN_LOG = "run.log"
TENSORBOARD_DIR = "tensorboard"
log = logging.getLogger(__name__)


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    root = logging.getLogger()
    level = min(root.getEffectiveLevel(), logging.INFO)
    handler = logging.FileHandler(run_dir / RUN_LOG, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Handlers without a level of their own (the console) keep showing what they showed.
    quiet = [h for h in root.handlers if h.level == logging.NOTSET]
    for h in quiet:
        h.setLevel(root.level)
    old_level = root.level
    root.setLevel(level)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
        for h in quiet:
            h.setLevel(logging.NOTSET)


def log_epoch(epoch: int, records: list[dict]) -> None:
    """One line per split of a finished epoch, for run.log."""
    for r in records:
        if r.get("epoch") != epoch:
            continue
        parts = [f"{t}={_fmt(v)}" for t, v in r.get("losses", {}).items()]
        for task, metrics in r.get("metrics", {}).items():
            parts += [f"{task}.{m}={_fmt(v)}" for m, v in metrics.items()]
        if "step_time_s" in r:
            parts.append(f"step={r['step_time_s'] * 1000:.1f}ms")
        log.info("epoch %d %s: %s", epoch, r["split"], " ".join(parts))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package, which is not installed: "
                        "pip install tensorboard (or leave out --tensorboard)") from None


def check_wandb() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError("--wandb needs the wandb package, which is not installed: pip install "
                        "wandb (or leave out --wandb)") from None


def epoch_scalars(epoch: int, records: list[dict]) -> Iterator[tuple[str, float]]:
    """The (tag, value) pairs of one finished epoch that the trackers log."""
    for r in records:
        if r.get("epoch") != epoch:
            continue
        split = r["split"]
        pairs = [(f"loss/{split}/{task}", v) for task, v in r.get("losses", {}).items()]
        pairs += [(f"{split}/{task}/{name}", v) for task, metrics in r.get("metrics", {}).items()
                  for name, v in metrics.items()]
        pairs += [(f"weight/{task}", v) for task, v in (r.get("weights") or {}).items()]
        if "lr" in r:
            pairs.append(("lr", r["lr"]))
        for tag, value in pairs:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield tag, float(value)


def tracker_hooks(run_dir: Path, name: str, config: dict, tensorboard: bool,
                  wandb: bool) -> list:
    """The epoch hooks of the trackers asked for (each has ``close()``)."""
    hooks: list = []
    if tensorboard:
        hooks.append(TensorBoardHook(run_dir))
    if wandb:
        hooks.append(WandbHook(run_dir, name, config))
    return hooks


class WandbHook:
    """Epoch hook: the epoch's scalars to a W&B run, step = epoch. A resumed run starts a
    new W&B run of the same name (the folder's id, so that the two can be grouped)."""

    def __init__(self, run_dir: Path, name: str, config: dict):
        check_wandb()
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mtl-harness"),
                              dir=str(run_dir), name=f"{name}/{run_dir.name}",
                              group=f"{config.get('benchmark', '')}/{name}", config=config,
                              reinit="create_new",
                              # W&B's banner and summary add dozens of lines per run to the
                              # command's output; errors still reach the log.
                              settings=wandb.Settings(silent=True))

    def __call__(self, epoch: int, records: list[dict]) -> None:
        scalars = dict(epoch_scalars(epoch, records))
        if scalars:
            self.run.log(scalars, step=epoch)

    def close(self) -> None:
        self.run.finish()


class TensorBoardHook:
    """Epoch hook: the epoch's records as TensorBoard scalars, step = epoch."""

    def __init__(self, run_dir: Path):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def __call__(self, epoch: int, records: list[dict]) -> None:
        for tag, value in epoch_scalars(epoch, records):
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
