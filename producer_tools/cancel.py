"""`ocr-cancel`: ask the consumers to stop tasks.

    ocr-cancel [--reason TEXT] [--wait] [--timeout S] TASK_ID...

Publishes one cancel record per task on the requests topic (schemas/control.py), keyed by
the task id like the task's request, so it lands on the task's partition behind it. The
consumer running the task aborts its pages in the engine and ends it `cancelled`, keeping
the pages already published; a later request for the task starts again only with
`force`.

--wait follows the tasks' progress (and the dead-letter topic) from the end offsets read
*before* publishing, until each task is final. Exit codes: 0 every task is final (cancelled,
or it had already ended: that is said), 1 a cancel was refused (dead-lettered: a consumer
that predates cancel records refuses them as REQUEST_INVALID), 2 usage or settings,
3 --timeout passed first, 4 Kafka unreachable.
"""

from __future__ import annotations

import argparse
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import TextIO

from aiokafka import AIOKafkaProducer

from consumer.settings import (
    Logging,
    TopicClient,
    add_settings_arguments,
    add_version_argument,
    producer_kwargs,
)
from producer_tools import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, UsageError, run_cli
from producer_tools.follow_progress import (
    ProgressFollower,
    is_dead_letter,
    is_final,
    make_display,
    status_text,
    topic_partitions,
)
from producer_tools.watch import _valid_task_id
from schemas.cloudevents import CE_TYPE_CANCEL, ce_headers
from schemas.control import MAX_CANCEL_REASON, CancelRequest, ControlAction
from schemas.event_ids import cancel_event_id
from schemas.progress import ProgressEvent, TaskStatus


class CancelSettings(TopicClient, Logging):
    """What ocr-cancel reads."""


def cancel_records(task_ids: Sequence[str], reason: str) -> list[CancelRequest]:
    return [
        CancelRequest(action=ControlAction.CANCEL, task_id=task_id, reason=reason)
        for task_id in dict.fromkeys(task_ids)
    ]


async def publish_cancels(settings: CancelSettings, cancels: Sequence[CancelRequest]) -> None:
    """Publish the cancel records keyed by task id, idempotently, waiting for every ack."""
    await topic_partitions(settings, [settings.topic_requests])
    producer = AIOKafkaProducer(
        **producer_kwargs(settings), client_id="ocr-cancel", acks="all",
        enable_idempotence=settings.kafka_idempotence,
    )
    await producer.start()
    source = f"ocr-cancel/{socket.gethostname()}"
    try:
        pending = [
            await producer.send(
                settings.topic_requests,
                value=cancel.model_dump_json().encode(),
                key=cancel.task_id.encode(),
                headers=ce_headers(
                    event_id=cancel_event_id(cancel.task_id, uuid.uuid4().hex),
                    event_type=CE_TYPE_CANCEL, source=source, subject=cancel.task_id,
                ),
            )
            for cancel in cancels
        ]
        for future in pending:
            await future
    finally:
        await producer.stop()


def outcome_code(latest: Mapping[str, ProgressEvent | None]) -> int:
    """1 when a cancel was refused, else 3 when a task is not final yet, else 0."""
    if any(event is not None and is_dead_letter(event) for event in latest.values()):
        return EXIT_FAILED
    if not all(is_final(event) for event in latest.values()):
        return EXIT_TIMEOUT
    return EXIT_OK


def report_cancels(
    latest: Mapping[str, ProgressEvent | None], *, timeout: float | None,
    out: TextIO | None = None, err: TextIO | None = None,
) -> int:
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    for task_id, event in latest.items():
        if event is not None and is_dead_letter(event):
            assert event.error is not None
            stderr.write(f"error: {task_id}: the cancel was refused: {event.error.message}\n")
            stderr.write(
                "  hint: consumers from before cancel records dead-letter them "
                "(REQUEST_INVALID); upgrade them\n"
            )
        elif event is not None and event.status is TaskStatus.CANCELLED:
            stdout.write(f"{task_id}: {status_text(event)}\n")
        elif is_final(event):
            assert event is not None
            stdout.write(
                f"{task_id}: already {event.status.value}, nothing to cancel "
                f"({status_text(event)})\n"
            )
        else:
            waited = "" if timeout is None else f" after {timeout:g} s"
            stderr.write(f"error: {task_id}: not final{waited}; last seen: {status_text(event)}\n")
    stdout.flush()
    stderr.flush()
    return outcome_code(latest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-cancel",
        description="Cancel OCR tasks: publish a cancel record per task id on the requests "
        "topic. The task ends 'cancelled'; its published pages are kept; a later request "
        "restarts it only with force. Exit: 0 done, 1 refused, 3 timeout.",
        allow_abbrev=False,
    )
    add_version_argument(parser)
    parser.add_argument("task_ids", nargs="+", metavar="TASK_ID", type=_valid_task_id)
    parser.add_argument(
        "--reason", default="", metavar="TEXT",
        help=f"why, in words (up to {MAX_CANCEL_REASON} characters); shown in the task's "
        "final progress",
    )
    parser.add_argument(
        "--wait", action="store_true", help="follow the tasks until each one is final"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="with --wait: give up after S seconds (exit 3); default: no limit",
    )
    add_settings_arguments(parser, CancelSettings)
    return parser


async def run(args: argparse.Namespace, settings: CancelSettings) -> int:
    if len(args.reason) > MAX_CANCEL_REASON:
        raise UsageError(f"--reason is {len(args.reason)} characters; at most {MAX_CANCEL_REASON}")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    cancels = cancel_records(args.task_ids, args.reason)
    labels = {cancel.task_id: cancel.task_id for cancel in cancels}
    follower = (
        ProgressFollower(
            settings, labels, make_display(labels), dead_letters=True, client_id="ocr-cancel"
        )
        if args.wait
        else None
    )
    try:
        if follower is not None:
            # Before publishing: the start position must lie before the answers.
            await follower.start(from_beginning=False)
        await publish_cancels(settings, cancels)
        for cancel in cancels:
            print(f"cancel sent for {cancel.task_id}", flush=True)
        if follower is None:
            return EXIT_OK
        outcome = await follower.wait(args.timeout)
    finally:
        if follower is not None:
            await follower.stop()
    return report_cancels(outcome.latest, timeout=args.timeout)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv, CancelSettings)


if __name__ == "__main__":
    raise SystemExit(main())
