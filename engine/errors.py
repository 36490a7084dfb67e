"""Errors that mean "the user asked for something invalid".

The command line prints them as one line and exits non-zero, without a traceback; any
other exception is a bug or a failed run and keeps its traceback.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


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


# --------------------------------------------------------------------------- domains

DOMAIN = "domain"
"""The key of a dataclass field's metadata that holds its ``Domain`` (see ``param``)."""


@dataclass(frozen=True)
class Domain:
    """The values a config field accepts: numbers in a range (``low``/``high``, each
    closed unless ``low_open``/``high_open``; None: unbounded) or one of ``choices``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None

    def __post_init__(self) -> None:
        if self.choices is not None and (self.low is not None or self.high is not None):
            raise TypeError("a domain is either a range (low/high) or choices, not both")
        if self.choices is not None and not self.choices:
            raise TypeError("a domain's choices must not be empty")
        if self.choices is None and self.low is None and self.high is None:
            raise TypeError("a domain needs low, high or choices")
        if (self.low_open and self.low is None) or (self.high_open and self.high is None):
            raise TypeError("an open bound needs its value (low_open needs low, high_open high)")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise TypeError(f"a domain's low ({self.low}) is above its high ({self.high})")

    def check(self, key: str, value: object) -> None:
        """Raise ConfigError, worded by ``check_range``/``check_choice`` and naming ``key``,
        when ``value`` is outside. Choices that are not strings (integer codes) are compared
        as text, as a --set value is written."""
        if self.choices is not None:
            check_choice(key, value if isinstance(value, str) else str(value),
                         [str(choice) for choice in self.choices])
        else:
            check_range(key, value, self.low, self.high,
                        low_open=self.low_open, high_open=self.high_open)

    def __contains__(self, value: object) -> bool:
        try:
            self.check("value", value)
        except ConfigError:
            return False
        return True


def param(default: Any, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False,
          choices: Iterable | None = None) -> Any:
    """A config field with its default and its domain, for a config dataclass:
    ``c: float = param(0.4, low=0)``, ``scale: str = param("mean", choices=SCALES)``.
    ``check_config`` refuses a value outside the domain, naming the field by its key; the
    domain is metadata, so the field's value (and a config hash) is as with a plain
    default."""
    domain = Domain(low, high, low_open, high_open,
                    None if choices is None else tuple(choices))
    return dataclasses.field(default=default, metadata={DOMAIN: domain})


def domain_of(field: dataclasses.Field) -> Domain | None:
    """The domain a config field declares (``param``), or None."""
    return field.metadata.get(DOMAIN)


def check_domains(config: Any, prefix: str) -> None:
    """Refuse a field of dataclass ``config`` outside its declared domain; the error names
    it ``<prefix>.<field>`` (``method.cagrad.c``). Fields are checked in their order."""
    for field in dataclasses.fields(config):
        domain = domain_of(field)
        if domain is not None:
            domain.check(f"{prefix}.{field.name}", getattr(config, field.name))


def check_config(config: Any, prefix: str) -> None:
    """The checks of a config section: every field's declared domain (``check_domains``),
    then the section's own ``validate()`` (relations between fields, values no domain
    describes), when it has one."""
    check_domains(config, prefix)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
