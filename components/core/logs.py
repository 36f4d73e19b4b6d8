"""locgen's own log lines, on stderr as `locgen: ...`: the command line's and a pipeline task's alike (in a
pod, the log a person reads in the Kubeflow UI; under `locgen run`, the lines it shows)."""

from __future__ import annotations

import logging
import sys

from components.core.errors import redacted


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes, not to the one of the first call (tests and
    callers swap it; a handler holding a closed stream fails every later message)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redacted(super().format(record))


def log_to_stderr() -> None:
    """locgen's own messages (not its libraries' chatter) as `locgen: ...` lines on stderr; stdout is the summary."""
    for name in ("components", "pipeline"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = _StderrHandler()
            handler.setFormatter(_RedactingFormatter("locgen: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
