"""Command-line tools around the ocr-stream topics.

- `ocr-submit` (submit.py): upstream; publishes OcrRequests and waits for their results;
  submit_requests.py builds the requests (document hand-over, task ids).
- `ocr-watch` (watch.py): follows the progress of tasks until they are final.
- `ocr-cancel` (cancel.py): publishes cancel records for tasks, optionally waits for the end.
- `ocr-collect` (collect.py): downstream; materialises results + progress into files.
- `ocr-topics` (topics.py): creates and checks the topics; topic_admin.py does the work.
- `ocr-replay` (replay.py): resets offsets, republishes requests, side-by-side runs.
- follow_progress.py: the progress following shared by `ocr-submit --wait` and `ocr-watch`.
- task_files.py: a task's pages as Markdown, JSON and ZIP, for `ocr-collect` and `ocr-submit --out`.

Each tool declares the settings it reads by composing parts of `consumer.settings` (its
`--help` lists only those), and runs through `run_cli`, which gives every tool the same
exit codes and error handling:

    0  ok
    1  a task failed (or lost pages), or the tool refused or could not do what was asked
    2  usage or settings error (argparse's own usage errors are 2 as well)
    3  a timeout (--timeout passed before every task was final)
    4  Kafka or Redis unreachable, or refusing the tool's requests
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pydantic import ValidationError

from consumer.log import configure_logging
from consumer.settings import Logging, SettingsPart, settings_from_args

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

S = TypeVar("S", bound=SettingsPart)
ToolRun = Callable[[argparse.Namespace, S], Coroutine[Any, Any, int]]


class ToolError(Exception):
    """Something the user must fix (a missing topic, a refused reset); printed as is."""

    exit_code = EXIT_FAILED


class UsageError(ToolError):
    """The arguments cannot work together (a --timeout of 0, --pages that parse to nothing)."""

    exit_code = EXIT_USAGE


def describe_validation(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors(include_url=False)[:5]
    )


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean Kafka or Redis could not be reached or refused us. Imported
    here: `ocr-bench engine` runs on GPU hosts with neither client installed."""
    # Connection failures only: an OSError writing an output file is not the network's.
    found: list[type[BaseException]] = [ConnectionError, socket.gaierror, TimeoutError]
    try:
        from aiokafka.errors import KafkaError

        found.append(KafkaError)
    except ImportError:
        pass
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        found += [RedisConnectionError, RedisTimeoutError]
    except ImportError:
        pass
    return tuple(found)


def _where(settings: SettingsPart) -> str:
    places = [
        f"{name} at {getattr(settings, field)}"
        for name, field in (("Kafka", "kafka_bootstrap"), ("Redis", "redis_url"))
        if hasattr(settings, field)
    ]
    return " / ".join(places) or "a service"


async def _login_refusal(settings: SettingsPart, exc: BaseException) -> str | None:
    """Why Kafka refused our login, when a connection failure hides that (aiokafka reports a
    wrong password or an untrusted certificate as "Unable to bootstrap")."""
    from aiokafka.errors import KafkaConnectionError

    from consumer.settings.kafka import KafkaConnection

    if not isinstance(exc, KafkaConnectionError) or not isinstance(settings, KafkaConnection):
        return None
    from consumer.settings.kafka_login import login_refusal

    refused = await login_refusal(settings)
    return refused.message if refused is not None else None


async def run_cli_async(
    parser: argparse.ArgumentParser, run: ToolRun[S], argv: list[str] | None,
    settings_type: type[S],
) -> int:
    """Parse, read settings, set up logging, run the tool, and turn failures into exit
    codes (the module docstring's table). For callers that own an event loop (tests)."""
    return await _run_parsed(parser.parse_args(argv), run, settings_type)


async def _run_parsed(args: argparse.Namespace, run: ToolRun[S], settings_type: type[S]) -> int:
    try:
        settings = settings_from_args(args, settings_type)
    except ValidationError as exc:
        print(f"error: invalid settings: {describe_validation(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # a part's own check outside pydantic (e.g. a prefix)
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(settings, Logging):
        configure_logging(settings.log_level, settings.log_format)
    # aiokafka logs every failed connection attempt while it retries; the tool reports the
    # outcome itself (one "error:" line), so its own log lines would only bury that.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return await run(args, settings)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except _unreachable_errors() as exc:
        refusal = await _login_refusal(settings, exc)
        print(
            f"error: Kafka at {getattr(settings, 'kafka_bootstrap', '?')} refused us: {refusal}"
            if refusal else
            f"error: {_where(settings)}: {exc!r}; check the address (--kafka-bootstrap, "
            "--redis-url or their OCR_* variables) and that the service is up",
            file=sys.stderr,
        )  # fmt: skip
        return EXIT_UNREACHABLE
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def run_cli(
    parser: argparse.ArgumentParser, run: ToolRun[S], argv: list[str] | None,
    settings_type: type[S],
) -> int:
    """`run_cli_async` in an event loop of its own: a console script's main()."""
    # Parsed first: a usage error exits (2) before any event loop exists.
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run_parsed(args, run, settings_type))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
