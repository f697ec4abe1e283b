"""Logging writes to the current stderr and never raises into the code that logs."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from pydantic import ValidationError

from consumer.app import main as consumer_main
from consumer.config import LogFormat, Settings
from consumer.log import (
    VLLM_CONFIGURE_LOGGING,
    VLLM_LOGGING_CONFIG_PATH,
    configure_logging,
    configure_vllm_logging,
    get_logger,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restored_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # Tools run in-process by other tests quiet aiokafka for the whole process
    # (producer_tools.run_cli); these tests log through it at its default level.
    aiokafka = logging.getLogger("aiokafka")
    aiokafka_level = aiokafka.level
    aiokafka.setLevel(logging.NOTSET)
    # configure_vllm_logging sets these for the process; each test starts without them.
    for name in (VLLM_LOGGING_CONFIG_PATH, VLLM_CONFIGURE_LOGGING):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    aiokafka.setLevel(aiokafka_level)


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


# One format for library records ---------------------------------------------------------------


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_library_records_come_out_as_our_json_events(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO", LogFormat.JSON)
    get_logger("consumer.loop").warning("partition_paused", partition=3)
    logging.getLogger("aiokafka.consumer.group_coordinator").warning(
        "Heartbeat failed for group %s", "ocr-stream"
    )
    logging.getLogger("redis.connection").info("dropped: libraries log warnings and up")
    try:
        raise ConnectionError("broker gone")
    except ConnectionError:
        logging.getLogger("aiokafka").exception("Unexpected error in coordinator routine")
    ours, kafka, failed = _lines(stream)
    assert ours["event"] == "partition_paused" and ours["logger"] == "consumer.loop"
    assert kafka["event"] == "Heartbeat failed for group ocr-stream"
    assert kafka["logger"] == "aiokafka.consumer.group_coordinator"
    assert kafka["level"] == "warning"
    # The same fields as our own events, nothing of the stdlib's own format.
    assert set(ours) - {"partition"} == set(kafka)
    assert "ConnectionError: broker gone" in str(failed["exception"])
    assert failed["level"] == "error"


def test_library_records_on_the_console_are_console_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("DEBUG", LogFormat.CONSOLE)
    logging.getLogger("aiokafka").error("Unable connect to node with id 1")
    line = stream.getvalue()
    assert "ERROR:aiokafka" not in line  # the stdlib's default format, before
    assert "Unable connect to node with id 1" in line and "[aiokafka]" in line


def test_configuring_twice_keeps_one_root_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO", LogFormat.JSON)
    configure_logging("WARNING", LogFormat.JSON)
    logging.getLogger("aiokafka").warning("once")
    assert len(stream.getvalue().splitlines()) == 1


# Levels ---------------------------------------------------------------------------------------


def test_an_invalid_level_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(ValidationError, match="DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        Settings(log_level="verbose")
    assert Settings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValueError, match="DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        configure_logging("verbose", LogFormat.JSON)


def test_the_consumer_refuses_it_at_start_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert consumer_main(["--log-level", "LOUD"]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and "log_level" in err and "CRITICAL" in err


# vLLM, through its own logging configuration ----------------------------------------------------


def test_vllm_logs_like_us_in_a_spawned_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(VLLM_LOGGING_CONFIG_PATH, raising=False)
    monkeypatch.delenv(VLLM_CONFIGURE_LOGGING, raising=False)
    configure_logging("INFO", LogFormat.JSON)
    path = configure_vllm_logging()
    assert path is not None and os.environ[VLLM_LOGGING_CONFIG_PATH] == path
    # What vllm/logger.py does when imported, in a fresh interpreter (an engine core that
    # vLLM spawned): read the file named by the variable and apply it with dictConfig.
    child = (
        "import json, logging, logging.config, os\n"
        "logging.config.dictConfig(json.load(open(os.environ['VLLM_LOGGING_CONFIG_PATH'])))\n"
        "log = logging.getLogger('vllm.v1.engine.core')\n"
        "log.info('Waiting for init message from front-end.')\n"
        "log.debug('not at INFO')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "Waiting for init message from front-end."
    assert event["logger"] == "vllm.v1.engine.core" and event["level"] == "info"
    assert done.stdout == ""  # vLLM's own handler writes to stdout; ours is not it


def test_an_operators_vllm_logging_config_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VLLM_LOGGING_CONFIG_PATH, "/etc/vllm-logging.json")
    assert configure_vllm_logging() is None
    assert os.environ[VLLM_LOGGING_CONFIG_PATH] == "/etc/vllm-logging.json"
    monkeypatch.delenv(VLLM_LOGGING_CONFIG_PATH)
    monkeypatch.setenv(VLLM_CONFIGURE_LOGGING, "0")
    assert configure_vllm_logging() is None
    assert VLLM_LOGGING_CONFIG_PATH not in os.environ
