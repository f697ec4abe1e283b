"""Command-line tools around the ocr-stream topics.

- `ocr-submit` (submit.py): upstream; publishes OcrRequests and waits for their results;
  submit_requests.py builds the requests (document hand-over, task ids).
- `ocr-watch` (watch.py): follows the progress of tasks until they are final.
- `ocr-cancel` (cancel.py): publishes cancel records for tasks, optionally waits for the end.
- `ocr-collect` (collect.py): downstream; materialises results + progress into files.
- follow_progress.py: the progress following shared by `ocr-submit --wait` and `ocr-watch`.
- task_files.py: a task's pages as Markdown, JSON and ZIP, for `ocr-collect` and `ocr-submit --out`.

The package itself needs no Kafka client to import: `ocr-bench engine` and its pages
(bench.py, bench_pages.py) run on GPU hosts that carry no aiokafka.

Every tool takes every `OCR_*` setting as a flag too (consumer.config.add_settings_arguments)
and shares the exit codes and error handling below.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError

from consumer.config import settings_from_args
from consumer.log import configure_logging

EXIT_OK = 0
EXIT_FAILED = 1  # a task failed or lost pages, or the tool itself could not do its work
EXIT_TIMEOUT = 2  # --timeout passed before every task was final
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class ToolError(Exception):
    """Something the user must fix (a missing topic, an unreadable file); printed as is."""


def describe_validation(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors(include_url=False)[:5]
    )


def run_cli(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    argv: list[str] | None,
) -> int:
    """Parse, set up logging, run the tool's coroutine, and turn failures into exit codes."""
    # Imported here, not at the top: `ocr-bench engine` runs on GPU hosts without aiokafka.
    from aiokafka.errors import KafkaError

    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"error: invalid setting: {describe_validation(exc)}", file=sys.stderr)
        return EXIT_FAILED
    configure_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(run(args))
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KafkaError, OSError) as exc:
        print(
            f"error: Kafka at {settings.kafka_bootstrap} failed: {exc!r}; check "
            "--kafka-bootstrap / OCR_KAFKA_BOOTSTRAP and that the broker is up",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
