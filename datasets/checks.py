"""Departures of a user's data from the official dataset (split counts, image sizes).

Such data can be legitimate (a subset to smoke-test, a re-export at another size), so each
departure is a logged warning, kept for the run's record, unless strict mode makes it an
error. Malformed data (a missing folder, a wrong shape, a label out of range) is always an
error, raised where it is found.
"""
from __future__ import annotations

import logging

from engine.errors import DataError

log = logging.getLogger(__name__)


class Departures:
    """Collects departures from the official dataset; raises on the first in strict mode."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.messages: list[str] = []

    def report(self, message: str) -> None:
        if self.strict:
            raise DataError(f"{message} (data.strict=true makes this an error)")
        log.warning("%s", message)
        self.messages.append(message)

    def count(self, what: str, found: int, official: int) -> None:
        if found != official:
            self.report(f"{what}: {found} items, the official dataset has {official}")
