"""Every tool: one run_cli, one exit-code table, a --help that lists only its own settings."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from consumer.settings import KafkaConnection, Logging, SettingsPart, add_settings_arguments
from producer_tools import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ToolError,
    UsageError,
    cancel,
    collect,
    replay,
    run_cli,
    submit,
    topics,
    watch,
)
from tests.support.tls import TlsFiles

pytestmark = pytest.mark.usefixtures("clean_env")

ROOT = Path(__file__).resolve().parents[2]


class Tiny(KafkaConnection, Logging):
    pass


def tiny(outcome: Callable[[], int]) -> Callable[[list[str]], int]:
    async def run(args: argparse.Namespace, settings: Tiny) -> int:
        return outcome()

    def main(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="tiny")
        add_settings_arguments(parser, Tiny)
        return run_cli(parser, run, argv, Tiny)

    return main


def raising(exc: BaseException) -> Callable[[], int]:
    def outcome() -> int:
        raise exc

    return outcome


@pytest.mark.parametrize(
    ("outcome", "code", "message"),
    [
        (lambda: EXIT_TIMEOUT, EXIT_TIMEOUT, ""),
        (raising(ToolError("topic 'x' does not exist")), EXIT_FAILED, "topic 'x' does not exist"),
        (raising(UsageError("--timeout must be positive")), EXIT_USAGE, "--timeout must be"),
        (raising(KafkaConnectionError("no route")), EXIT_UNREACHABLE, "Kafka at 127.0.0.1:9092"),
        (raising(TopicAuthorizationFailedError()), EXIT_UNREACHABLE, "Kafka at"),
        (raising(ConnectionRefusedError(111, "refused")), EXIT_UNREACHABLE, "Kafka at"),
        (raising(TimeoutError("no answer")), EXIT_UNREACHABLE, "no answer"),
        (raising(PermissionError(13, "denied", "out/x.md")), EXIT_FAILED, "denied"),
    ],
)
def test_failures_become_the_exit_codes_of_the_table(
    outcome: Callable[[], int], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tiny(outcome)([]) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_refused_login_is_named_not_called_unreachable(
    tls: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    # A TLS listener whose certificate our settings do not trust: aiokafka says only
    # "Unable to bootstrap"; the tool probes and says which setting to change.
    context = tls.server_context(require_client_cert=False)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            with contextlib.suppress(OSError), listener.accept()[0] as conn:
                context.wrap_socket(conn, server_side=True).close()

        threading.Thread(target=serve, daemon=True).start()
        port = listener.getsockname()[1]
        code = tiny(raising(KafkaConnectionError("Unable to bootstrap")))(
            ["--kafka-bootstrap", f"127.0.0.1:{port}", "--kafka-security-protocol", "SSL"]
        )
    assert code == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert f"Kafka at 127.0.0.1:{port} refused us" in err and "OCR_KAFKA_SSL_CAFILE" in err


def test_invalid_settings_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert tiny(lambda: EXIT_OK)(["--kafka-security-protocol", "SASL_SSL"]) == EXIT_USAGE
    assert "error: invalid settings: " in capsys.readouterr().err


def test_argparse_usage_errors_stay_2() -> None:
    with pytest.raises(SystemExit) as info:
        tiny(lambda: EXIT_OK)(["--no-such-flag"])
    assert info.value.code == EXIT_USAGE


TOOLS: list[tuple[str, Callable[[], argparse.ArgumentParser], type[SettingsPart]]] = [
    ("ocr-submit", submit.build_parser, submit.SubmitSettings),
    ("ocr-watch", watch.build_parser, watch.WatchSettings),
    ("ocr-cancel", cancel.build_parser, cancel.CancelSettings),
    ("ocr-collect", collect.build_parser, collect.CollectSettings),
    ("ocr-topics", topics.build_parser, topics.TopicsToolSettings),
]


@pytest.mark.parametrize(("name", "build", "settings_type"), TOOLS)
def test_each_tool_offers_exactly_the_settings_it_declares(
    name: str, build: Callable[[], argparse.ArgumentParser], settings_type: type[SettingsPart],
) -> None:
    parser = build()
    flags = {o for action in parser._actions for o in action.option_strings}
    for field in settings_type.model_fields:
        assert "--" + field.replace("_", "-") in flags, (name, field)
    for engine_flag in ("--gpu-memory-utilization", "--max-num-seqs", "--redis-url"):
        assert engine_flag not in flags, (name, engine_flag)


def test_replay_subcommands_offer_the_replay_settings() -> None:
    for command in (["reset", "--group", "g", "--to-latest"], ["republish", "--from-dlq"]):
        args = replay.build_parser().parse_args(command)
        assert args._ocr_settings_type.__name__ == "ReplaySettings"


def test_ocr_submit_help_fits_a_screen() -> None:
    # The installed command, on an 80-column terminal as argparse assumes without one.
    done = subprocess.run(
        [sys.executable, "-m", "producer_tools.submit", "--help"], cwd=ROOT,
        env={**os.environ, "COLUMNS": "80"}, capture_output=True, text=True, timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert len(lines) < 60, done.stdout
    assert "--blob-root" in done.stdout and "--max-pages" not in done.stdout
    assert "usage: ocr-submit" in lines[0] and "[--<setting> V]" in done.stdout
