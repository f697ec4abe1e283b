"""`ocr-watch`: follow the progress of tasks until every one is final.

    ocr-watch [--timeout S] [--from-beginning] TASK_ID...

Without --from-beginning only events from now on are read: right for a task that is queued
or running. A task that may already be final needs --from-beginning, which reads the
partitions of the progress topic holding these tasks from their start (cost: those
partitions' retained history, a week by default) and judges each task by its latest event.
Live bars on a terminal (stderr), plain lines otherwise, each with the consumer's own
words (pages done, percent, time left); one outcome line per task at the end. Exit codes:
0 every task completed with no failed page, 1 a task failed, was cancelled or lost pages,
3 --timeout passed first, 4 Kafka unreachable.
"""

from __future__ import annotations

import argparse
import re

from consumer.settings import Logging, TopicClient, add_settings_arguments, add_version_argument
from producer_tools import UsageError, run_cli
from producer_tools.follow_progress import ProgressFollower, make_display, report
from schemas.common import TASK_ID_PATTERN


class WatchSettings(TopicClient, Logging):
    """What ocr-watch reads."""


def _valid_task_id(text: str) -> str:
    # The contract's own rule, so a typo is refused here rather than watched forever.
    if not re.match(TASK_ID_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a task id (1-128 of [A-Za-z0-9._:@+=-], no '/')"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-watch",
        description="Follow OCR task progress until every task is final. "
        "Exit: 0 done, 1 failed, 3 timeout.",
        allow_abbrev=False,
    )
    add_version_argument(parser)
    parser.add_argument("task_ids", nargs="+", metavar="TASK_ID", type=_valid_task_id)
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="give up after S seconds (exit 3); default: no limit",
    )
    parser.add_argument(
        "--from-beginning", action="store_true",
        help="read the tasks' history too (needed for tasks that may already be final)",
    )
    add_settings_arguments(parser, WatchSettings)
    return parser


async def run(args: argparse.Namespace, settings: WatchSettings) -> int:
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    labels = {task_id: task_id for task_id in dict.fromkeys(args.task_ids)}
    follower = ProgressFollower(settings, labels, make_display(labels), client_id="ocr-watch")
    try:
        await follower.start(from_beginning=args.from_beginning)
        outcome = await follower.wait(args.timeout)
    finally:
        await follower.stop()
    hint = (
        "no progress seen; if the task may have finished before, add --from-beginning"
        if not args.from_beginning
        else f"no progress for this task id on {settings.topic_progress} (retained history)"
    )
    return report(outcome, labels, timeout=args.timeout, silence_hint=hint)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv, WatchSettings)


if __name__ == "__main__":
    raise SystemExit(main())
