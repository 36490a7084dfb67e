"""Errors that mean "the user asked for something invalid".

The command line prints them as one line and exits non-zero, without a traceback; any
other exception is a bug or a failed run and keeps its traceback.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


class UserError(Exception):
    """Invalid input from the user (command line, config, data on disk, plugin)."""


class ConfigError(UserError):
    """A configuration value or key that cannot be accepted."""


class DataError(UserError):
    """Data on disk that is missing or not in the expected format."""


class ContractError(UserError):
    """A method (a plugin's, typically) returned something its kind's contract excludes."""


def closest(name: str, valid: Iterable[str], n: int = 3) -> str:
    """A hint naming the closest valid names, for error messages."""
    valid = sorted(valid)
    near = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if near:
        return f"did you mean {', '.join(near)}?"
    return f"valid: {', '.join(valid)}"


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False) -> None:
    """Refuse a hyperparameter outside its domain, naming the parameter and the valid range.
    NaN and infinities are refused whatever the range (an open bound is not infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}={value!r}: expected a finite number")
    ok = True
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value < high if high_open else value <= high
    if not ok:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ConfigError(f"{name}={value!r} is out of range; expected a value in {lo}, {hi}")


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; expected one of {', '.join(choices)}")
