"""Logging writes to the current stderr and never raises into the code that logs."""

from __future__ import annotations

import io
import json

import pytest

from consumer.config import LogFormat
from consumer.log import configure_logging, get_logger


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
