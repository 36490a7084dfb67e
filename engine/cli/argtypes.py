"""Argument types of the command line: numbers checked as they are parsed, with messages
that say what was expected."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def int_at_least(low: int, what: str = "") -> Callable[[str], int]:
    """An integer >= ``low``; ``what`` names it in the message (e.g. "seed")."""
    prefix = f"{what} " if what else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{prefix}{text!r} is not an integer") from None
        if value < low:
            problem = "negative" if low == 0 and value < 0 else f"less than {low}"
            raise argparse.ArgumentTypeError(f"{prefix}{value} is {problem}; expected an "
                                             f"integer >= {low}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return value


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def folder_text(text: str) -> str:
    """A folder path; an empty one is refused, since it would silently mean the current
    folder (``--out ''`` from an unset shell variable)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; expected a folder (write . for the "
                                         "current folder)")
    return text


def folder_arg(text: str) -> Path:
    return Path(folder_text(text))


def add_tracker_flags(parser) -> None:
    """--tensorboard and --wandb, shared by `run` and `sweep`."""
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard events in each run's folder (needs "
                             "tensorboard)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log each run to Weights & Biases (needs the optional wandb "
                             "package; WANDB_PROJECT, WANDB_MODE=offline, ... are honoured)")


def check_trackers(args) -> None:
    """Refuse a missing tracker package before any run starts."""
    from engine.runs.runlog import check_tensorboard, check_wandb

    if args.tensorboard:
        check_tensorboard()
    if args.wandb:
        check_wandb()
