"""One log format for everything the process logs: JSON lines in production, readable
output on a terminal.

- Our events go through structlog's own pipeline (`configure_logging`).
- Records of libraries that use the standard library (aiokafka, redis-py, botocore, ...)
  reach the root logger, whose one handler renders them with structlog's
  `ProcessorFormatter` and the same processors: same fields (`event`, `level`,
  `timestamp`, plus `logger`), same renderer. Libraries log WARNING and above.
- vLLM configures its own logger when it is imported, in this process and in the engine
  core it spawns. `configure_vllm_logging` (called just before vLLM is imported) points
  VLLM_LOGGING_CONFIG_PATH at a dictConfig file whose formatter is `stdlib_formatter`
  below, so vLLM's records come out like ours in both processes. An operator's own
  VLLM_LOGGING_CONFIG_PATH, or VLLM_CONFIGURE_LOGGING=0, is left alone.

What this does not cover: text written straight to stdout/stderr (print, tqdm progress bars,
C++ code in the engine) bypasses logging altogether.

Context (task_id, page, partition, offset) is bound with structlog's contextvars so that
every event logged while working on a task carries it without threading loggers through.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
from typing import Any

import structlog

from consumer.settings.service import LOG_LEVELS, LogFormat

VLLM_CONFIGURE_LOGGING = "VLLM_CONFIGURE_LOGGING"
VLLM_LOGGING_CONFIG_PATH = "VLLM_LOGGING_CONFIG_PATH"
# Libraries are kept to warnings and worse: aiokafka at INFO logs every rebalance step.
LIBRARY_MIN_LEVEL = logging.WARNING


def level_number(level: str) -> int:
    """The logging level named `level` (any case); ValueError listing the allowed names."""
    name = level.strip().upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    return logging.getLevelNamesMapping()[name]


def _use_json(fmt: LogFormat) -> bool:
    return fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not sys.stderr.isatty())


def _renderer(use_json: bool) -> structlog.typing.Processor:
    if use_json:
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())


def _shared_processors() -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def stdlib_formatter(json_lines: bool = True) -> logging.Formatter:
    """structlog's formatter for standard-library records, rendering them as our events.
    Also the formatter factory of vLLM's logging configuration (hence the plain argument)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _renderer(json_lines),
        ],
    )


class StderrHandler(logging.Handler):
    """The root logger's handler: each formatted record through the same writer as our
    events (current stderr, one line at a time, never raising)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        _STDERR_LOGGER.msg(message)


_state: dict[str, Any] = {"level": logging.INFO, "json": True}


def configure_logging(level: str = "INFO", fmt: LogFormat = LogFormat.AUTO) -> None:
    """Our events at `level` and up; library records at `level` or WARNING, whichever is
    higher; all in one format. Raises ValueError for an unknown level (settings refuse it
    before this: OCR_LOG_LEVEL)."""
    numeric = level_number(level)
    use_json = _use_json(fmt)
    _state.update(level=numeric, json=use_json)
    structlog.configure(
        processors=[
            # `logger`: the module's name, as library records carry theirs.
            structlog.stdlib.add_logger_name,
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _renderer(use_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # A stream swapped since configuration (a test's captured output, closed after the
        # test) once made every later warning raise, and a task that logged one never end.
        logger_factory=_current_stderr_logger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    # Configured again (tests, a tool calling twice): replace our handler, keep others'.
    for handler in list(root.handlers):
        if isinstance(handler, StderrHandler):
            root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(stdlib_formatter(use_json))
    root.addHandler(handler)
    root.setLevel(max(numeric, LIBRARY_MIN_LEVEL))


def vllm_logging_config(level: int, json_lines: bool) -> dict[str, Any]:
    """vLLM's dictConfig: its `vllm` logger writes through our formatter, at our level
    (vLLM's start-up INFO lines are worth having), and does not propagate (no root handler
    exists in a spawned engine core; in this process it would print twice)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "ocr_stream": {"()": f"{__name__}.stdlib_formatter", "json_lines": json_lines}
        },
        "handlers": {
            "ocr_stream": {"class": f"{__name__}.StderrHandler", "formatter": "ocr_stream"}
        },
        "loggers": {
            "vllm": {
                "handlers": ["ocr_stream"],
                "level": logging.getLevelName(level),
                "propagate": False,
            }
        },
    }


def configure_vllm_logging() -> str | None:
    """Before vLLM is first imported: write its logging configuration (the level and format
    `configure_logging` chose) and point VLLM_LOGGING_CONFIG_PATH at it; the engine core
    inherits the environment. Returns the file, or None when the operator configured vLLM's
    logging themselves."""
    if os.environ.get(VLLM_LOGGING_CONFIG_PATH) or os.environ.get(
        VLLM_CONFIGURE_LOGGING, "1"
    ).strip() in ("0", "false", "False"):
        return None
    config = vllm_logging_config(_state["level"], _state["json"])
    fd, path = tempfile.mkstemp(prefix="ocr-stream-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w") as file:
        json.dump(config, file)
    # Read by vLLM when it is imported, here and in each engine process it starts; those
    # live no longer than this process.
    atexit.register(_remove, path)
    os.environ[VLLM_CONFIGURE_LOGGING] = "1"
    os.environ[VLLM_LOGGING_CONFIG_PATH] = path
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


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


class _NamedStderrLogger:
    """The one writer under the name given to get_logger, for add_logger_name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        _STDERR_LOGGER.msg(message)

    debug = info = warning = warn = error = critical = exception = fatal = msg


def _current_stderr_logger(*names: object) -> _NamedStderrLogger:
    name = str(names[0]) if names else ""
    logger = _NAMED.get(name)
    if logger is None:
        logger = _NAMED.setdefault(name, _NamedStderrLogger(name))
    return logger


_STDERR_LOGGER = _StderrLogger()
_NAMED: dict[str, _NamedStderrLogger] = {}


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
