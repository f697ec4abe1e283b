"""Logging writes to the current stderr and never raises into the code that logs."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest
import structlog

from consumer.config import LogFormat
from consumer.log import configure_logging, get_logger


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.reset_defaults()
    for handler in logging.getLogger().handlers:
        if handler not in handlers:
            logging.getLogger().removeHandler(handler)


def test_events_follow_stderr_and_a_closed_stream_loses_only_the_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configured_on = io.StringIO()
    monkeypatch.setattr("sys.stderr", configured_on)
    configure_logging("INFO", LogFormat.JSON)
    log = get_logger("test")
    configured_on.close()  # as pytest closes a test's captured stream after the test
    log.warning("lost_quietly", task_id="t-1")  # raised ValueError before
    later = io.StringIO()
    monkeypatch.setattr("sys.stderr", later)
    log.warning("task_failed", task_id="t-2", code="SOURCE_NOT_FOUND")
    event = json.loads(later.getvalue())
    assert event["event"] == "task_failed" and event["task_id"] == "t-2"
    assert event["level"] == "warning"


def test_lines_from_threads_never_interleave(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO", LogFormat.JSON)
    log = get_logger("test")

    def burst(name: str) -> None:
        for n in range(300):
            log.info("page_done", worker=name, page=n, text="x" * 200)

    threads = [threading.Thread(target=burst, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1200
    assert all(json.loads(line)["event"] == "page_done" for line in lines)
