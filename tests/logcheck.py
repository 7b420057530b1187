"""What a test's services logged at error level or with a traceback (a fuzz run must log neither)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class ErrorLog(logging.Handler):
    """A root-logger handler keeping the records at error level or above, or carrying a traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        event: Any = record.msg
        traceback = record.exc_info is not None or (isinstance(event, dict) and "exception" in event)
        if record.levelno >= logging.ERROR or traceback:
            self.records.append(record)

    def lines(self) -> list[str]:
        """One short line per record kept (for assertion messages)."""
        return [f"{r.name} {r.levelname} {str(r.msg)[:300]}" for r in self.records]


@contextmanager
def error_log() -> Iterator[ErrorLog]:
    """Collect error-level and traceback-carrying log records while the block runs."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
