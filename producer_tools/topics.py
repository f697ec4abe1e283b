"""`ocr-topics`: create or check the five ocr-stream topics.

    ocr-topics create [--partitions N] [--replication N]   # idempotent; prints what it created
    ocr-topics check  [--partitions N] [--replication N]   # exit 1 when the cluster differs

A thin CLI over consumer.topics, which owns the topic specs (partitions, retention,
compaction, record sizes) so the consumer, the local stack and this tool agree on them.
Exit codes: 0 ok, 1 check found mismatches, 2 Kafka unreachable or refused the request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from aiokafka.errors import KafkaError

from consumer.config import Settings, add_settings_arguments, settings_from_args
from consumer.topics import (
    MismatchKind,
    TopicMismatch,
    TopicSpec,
    check_topics,
    default_topic_specs,
    ensure_topics,
    wait_for_broker,
)

# How long `create` waits for brokers' metadata to show the topics it just created.
SETTLE_TIMEOUT_S = 15.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-topics",
        description="Create or check the ocr-stream topics (requests, results, progress, "
        "timing, DLQ) named by the OCR_TOPIC_* settings.",
    )
    parser.add_argument(
        "command", choices=["create", "check"],
        help="create: create missing topics (existing ones are never altered); "
        "check: report every difference, exit 1 if any",
    )
    parser.add_argument(
        "--partitions", type=int, default=None, metavar="N",
        help="partitions per topic (default OCR_TOPIC_PARTITIONS); the requests topic's "
        "count caps how many consumers do work",
    )
    parser.add_argument(
        "--replication", type=int, default=None, metavar="N",
        help="replication factor (default OCR_TOPIC_REPLICATION); 3 in production",
    )
    parser.add_argument(
        "--wait", type=float, default=30.0, metavar="S",
        help="seconds to wait for the broker to answer first (a container starting beside "
        "Kafka races its start); 0 to try once",
    )
    add_settings_arguments(parser)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    # The short flags feed the same settings fields, so --partitions 0 is refused exactly
    # like OCR_TOPIC_PARTITIONS=0 and an explicit --topic-partitions loses to --partitions.
    if args.partitions is not None:
        args.setting_topic_partitions = args.partitions
    if args.replication is not None:
        args.setting_topic_replication = args.replication
    return settings_from_args(args)


def _describe(spec: TopicSpec) -> str:
    policy = spec.configs.get("cleanup.policy", "default")
    return f"{spec.name} ({spec.partitions} partitions, replication {spec.replication}, {policy})"


async def run(command: str, settings: Settings, wait_s: float) -> int:
    specs = default_topic_specs(settings)
    if wait_s > 0:
        await wait_for_broker(settings, wait_s)
    if command == "create":
        created = set(await ensure_topics(settings, specs))
        for spec in specs:
            print(f"{'created' if spec.name in created else 'exists '} {_describe(spec)}")
        # A topic that existed before may differ from the spec; creating never alters it, so
        # say so here instead of leaving the operator to find out from `check`.
        for mismatch in await _settled_check(settings, specs):
            print(f"warning: {mismatch}", file=sys.stderr)
        return 0
    mismatches = await check_topics(settings, specs)
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}")
        print(f"  why it matters: {explain(mismatch.kind.value, mismatch.config)}")
    if mismatches:
        print(f"{len(mismatches)} mismatch(es); `ocr-topics create` creates missing topics, "
              "other differences need kafka-topics.sh / kafka-configs.sh by hand")
        return 1
    print(f"all {len(specs)} topics match: " + ", ".join(s.name for s in specs))
    return 0


async def _settled_check(settings: Settings, specs: list[TopicSpec]) -> list[TopicMismatch]:
    """check_topics once the brokers' metadata shows the topics just created.

    CreateTopics answers before every broker's metadata cache has the new topic, so a check
    straight after a create can report it missing; a caller that starts consumers next
    (compose's topic-init) wants "created" to mean "visible".
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        mismatches = await check_topics(settings, specs)
        missing = any(m.kind is MismatchKind.MISSING for m in mismatches)
        if not missing or time.monotonic() > deadline:
            return mismatches
        await asyncio.sleep(0.2)


def explain(kind: str, config: str | None = None) -> str:
    """One line on the consequence of a mismatch, for operators reading `check`."""
    if kind == "missing":
        return "the consumer cannot subscribe or publish to it; run `ocr-topics create`"
    if kind == "partitions":
        return ("partitions cap the number of busy consumers (one per partition) and changing "
                "them re-maps task ids to partitions; per-task ordering holds only for new "
                "records")
    if kind == "replication":
        return "fewer replicas than expected means a broker loss can lose or block records"
    known = {
        "cleanup.policy": "results must be compacted (keyed task_id/page) so replays overwrite; "
        "other topics use time retention",
        "retention.ms": "records older than this are deleted and cannot be replayed",
        "max.message.bytes": "larger records are refused by the broker (the producer fails) "
        "instead of reaching the consumer or the DLQ",
        "min.compaction.lag.ms": "readers slower than this may miss superseded page results",
        "segment.ms": "the active segment is never compacted; long segments delay compaction",
    }
    return known.get(config or "", "differs from the ocr-stream topic spec")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # aiokafka logs every failed connection attempt while it retries; the CLI reports the
    # outcome itself (one "error:" line), so its own log lines would only bury that.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args.command, settings, args.wait))
    except (KafkaError, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
