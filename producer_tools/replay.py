"""`ocr-replay`: reprocess what went through ocr-stream. Every command is a dry run unless
--execute is given; a dry run prints the plan and changes nothing.

    ocr-replay reset --group G (--to-earliest | --to-latest | --to-offset N |
                                --to-datetime ISO | --shift-by N) [--topic T ...] [--execute]
    ocr-replay republish (--from-dlq [--since ISO] | --since ISO) [--until ISO] [--force]
                         [--task ID ...] [--code CODE ...] [--execute]
    ocr-replay side-by-side --target-prefix P [--since ISO] [--until ISO] [--task ID ...]
                            [--target-model M] [--target-resolution-mode MODE] [--execute]

Exit codes: 0 done (or planned), 1 refused (a live group, a missing topic), 2 usage or
settings, 4 Kafka unreachable or failing. docs/operations.md walks through each command.
The commands live in replay_reset.py and replay_republish.py; this module is the CLI.
"""

from __future__ import annotations

import argparse

from consumer.settings import add_settings_arguments, add_version_argument
from producer_tools import UsageError, run_cli, run_cli_async
from producer_tools.replay_common import ReplaySettings, parse_time, to_ms
from producer_tools.replay_republish import (
    print_selection,
    republish,
    select_from_dlq,
    select_from_requests,
    side_by_side,
    side_pipeline,
)
from producer_tools.replay_reset import ResetTarget, TargetKind, reset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-replay",
        description="Reset consumer-group offsets, republish requests from the DLQ or a "
        "time range, or copy requests to a side-by-side comparison pipeline. Dry run "
        "unless --execute.",
    )
    add_version_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_reset = commands.add_parser(
        "reset", help="move a stopped group's committed offsets",
        description="Move the committed offsets of a consumer group that has no live "
        "members. Re-read requests of completed tasks are answered as duplicates unless "
        "they say force; use `republish --force` to recompute.",
    )
    p_reset.add_argument("--group", required=True, help="consumer group id (OCR_GROUP_ID)")
    target = p_reset.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-earliest", action="store_true", help="the log start")
    target.add_argument("--to-latest", action="store_true", help="the log end: skip backlog")
    target.add_argument("--to-offset", type=int, metavar="N",
                        help="offset N on every partition (clamped to the log)")
    target.add_argument("--to-datetime", metavar="ISO",
                        help="first record at or after this time (UTC if no zone); "
                        "partitions with none go to their end")
    target.add_argument("--shift-by", type=int, metavar="N",
                        help="committed offset plus N (negative to go back)")
    p_reset.add_argument("--topic", action="append", metavar="T",
                         help="topic to reset (repeatable; default OCR_TOPIC_REQUESTS)")

    p_repub = commands.add_parser(
        "republish", help="send requests again with attempt+1",
        description="Read the DLQ or the requests topic and republish each valid request "
        "to the requests topic with attempt+1, keyed by task id; the latest copy of each "
        "task wins. Requests that are still invalid are reported and skipped.",
    )
    p_repub.add_argument("--from-dlq", action="store_true",
                         help="read DLQ envelopes (OCR_TOPIC_DLQ) instead of the requests "
                         "topic; --since/--until then bound the dead letters' times")
    p_repub.add_argument("--since", metavar="ISO",
                         help="records from this time (UTC if no zone); required without "
                         "--from-dlq")
    p_repub.add_argument("--force", action="store_true",
                         help="set force=true: recompute tasks that already completed")
    p_repub.add_argument("--code", action="append", metavar="CODE", default=[],
                         help="with --from-dlq: only envelopes with this error code")
    _add_common_selection(p_repub)

    p_side = commands.add_parser(
        "side-by-side", help="copy requests to a prefixed comparison pipeline",
        description="Copy requests to <prefix>.<requests topic>, create the prefixed "
        "topics, and print the OCR_* overrides of a second consumer group (another model "
        "or resolution mode) that writes to <prefix>.* topics.",
    )
    p_side.add_argument("--target-prefix", required=True, metavar="P",
                        help="prefix of the comparison topics, group and Redis keys")
    p_side.add_argument("--since", metavar="ISO", help="only requests from this time")
    # Not --model/--resolution-mode: those are the settings flags (this side's settings).
    p_side.add_argument("--target-model", metavar="M",
                        help="OCR_MODEL of the comparison consumer (default: OCR_MODEL)")
    p_side.add_argument("--target-resolution-mode", metavar="MODE",
                        help="OCR_RESOLUTION_MODE of the comparison consumer (default: "
                        "OCR_RESOLUTION_MODE)")
    p_side.add_argument("--target-group", metavar="G",
                        help="group id of the comparison consumer (default P.<group>)")
    _add_common_selection(p_side)

    for sub in (p_reset, p_repub, p_side):
        sub.add_argument("--execute", action="store_true",
                         help="really commit/send; without it nothing changes")
        add_settings_arguments(sub, ReplaySettings)
    return parser


def _add_common_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until", metavar="ISO",
                        help="only records before this time (UTC if no zone)")
    parser.add_argument("--task", action="append", metavar="ID", default=[],
                        help="only these task ids (repeatable)")


def _reset_target(args: argparse.Namespace) -> ResetTarget:
    if args.to_earliest:
        return ResetTarget(TargetKind.EARLIEST)
    if args.to_latest:
        return ResetTarget(TargetKind.LATEST)
    if args.to_offset is not None:
        if args.to_offset < 0:
            raise UsageError("--to-offset must be 0 or more")
        return ResetTarget(TargetKind.OFFSET, args.to_offset)
    if args.to_datetime is not None:
        return ResetTarget(TargetKind.DATETIME, to_ms(parse_time(args.to_datetime)))
    return ResetTarget(TargetKind.SHIFT, args.shift_by)


def _ms(text: str | None) -> int | None:
    return to_ms(parse_time(text)) if text is not None else None


async def _dispatch(args: argparse.Namespace, settings: ReplaySettings) -> int:
    if args.command == "reset":
        topics = args.topic or [settings.topic_requests]
        return await reset(settings, args.group, topics, _reset_target(args),
                           execute=args.execute)

    since_ms, until_ms = _ms(args.since), _ms(args.until)
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise UsageError("--until must be later than --since")
    if args.command == "republish":
        if args.from_dlq:
            selection = await select_from_dlq(settings, since_ms=since_ms, until_ms=until_ms,
                                              tasks=args.task, codes=args.code)
            print_selection(selection, settings.topic_dlq)
        else:
            if since_ms is None:
                raise UsageError("republish needs --from-dlq or --since: republishing the "
                                  "whole requests topic by accident would redo everything")
            if args.code:
                raise UsageError("--code applies to --from-dlq only")
            selection = await select_from_requests(settings, since_ms=since_ms,
                                                   until_ms=until_ms, tasks=args.task)
            print_selection(selection, settings.topic_requests)
        await republish(settings, selection, force=args.force, execute=args.execute)
        return 0

    side = side_pipeline(settings, args.target_prefix, model=args.target_model,
                         resolution_mode=args.target_resolution_mode, group_id=args.target_group)
    selection = await select_from_requests(settings, since_ms=since_ms, until_ms=until_ms,
                                           tasks=args.task)
    print_selection(selection, settings.topic_requests)
    await side_by_side(settings, side, selection, execute=args.execute)
    return 0


async def run(argv: list[str] | None = None) -> int:
    """The CLI as a coroutine (tests await it inside their own event loop)."""
    return await run_cli_async(build_parser(), _dispatch, argv, ReplaySettings)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _dispatch, argv, ReplaySettings)


if __name__ == "__main__":
    raise SystemExit(main())
