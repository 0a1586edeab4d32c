"""A logging handler that keeps the messages it sees, for tests that assert a log stays quiet."""

from __future__ import annotations

import logging


class LogMessages(logging.Handler):
    """Collects ``record.getMessage()`` of every record it handles."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
