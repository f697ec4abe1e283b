"""structlog set-up: JSON lines in production, readable output on a terminal.

Context (task_id, page, partition, offset) is bound with structlog's contextvars so that
every event logged while working on a task carries it without threading loggers through.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

import structlog

from consumer.config import LogFormat


def configure_logging(level: str = "INFO", fmt: LogFormat = LogFormat.AUTO) -> None:
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # A stream swapped since configuration (a test's captured output, closed after the
        # test) once made every later warning raise, and a task that logged one never end.
        logger_factory=_current_stderr_logger,
        cache_logger_on_first_use=False,
    )
    # aiokafka and others log through the standard library; keep them quiet but visible.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


class _StderrLogger:
    """Writes each event to sys.stderr as it is at that moment (not as it was when logging
    was configured), and never raises: an event lost to a closed or broken stream must not
    end the task that logged it."""

    def __init__(self) -> None:
        # Events come from executor threads too: one write per line, one line at a time.
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def _current_stderr_logger(*_names: object) -> _StderrLogger:
    return _STDERR_LOGGER


_STDERR_LOGGER = _StderrLogger()


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
