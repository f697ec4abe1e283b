"""`ocr-topics`: create or check the five ocr-stream topics, or wait for the broker.

    ocr-topics create [--partitions N] [--replication N]   # idempotent; prints what it created
    ocr-topics check  [--partitions N] [--replication N]   # exit 1 when the cluster differs
    ocr-topics wait   [--wait S]                           # until the broker answers

A thin CLI over topic_admin.py; the topic specs (partitions, retention, compaction, record
sizes) are the contract's (schemas/topics.py), so the consumer, the local stack and this
tool agree on them. Exit codes: 0 ok, 1 check found mismatches, 2 usage or settings,
4 Kafka unreachable or refused the request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from consumer.settings import (
    KafkaConnection,
    Logging,
    TopicLayout,
    add_settings_arguments,
    add_version_argument,
)
from producer_tools import EXIT_FAILED, EXIT_OK, run_cli, run_cli_async
from producer_tools.topic_admin import (
    MismatchKind,
    TopicMismatch,
    check_topics,
    ensure_topics,
    wait_for_broker,
)
from schemas.topics import TopicSpec


class TopicsToolSettings(KafkaConnection, TopicLayout, Logging):
    """What ocr-topics reads."""


# How long `create` waits for brokers' metadata to show the topics it just created.
SETTLE_TIMEOUT_S = 15.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-topics",
        description="Create or check the ocr-stream topics (requests, results, progress, "
        "timing, DLQ) named by the OCR_TOPIC_* settings, or wait for the broker.",
    )
    add_version_argument(parser)
    parser.add_argument(
        "command", choices=["create", "check", "wait"],
        help="create: create missing topics (existing ones are never altered); "
        "check: report every difference, exit 1 if any; wait: until the broker answers",
    )
    add_settings_arguments(parser, TopicsToolSettings)
    # Short forms that feed the same settings fields, so --partitions 0 is refused exactly
    # like OCR_TOPIC_PARTITIONS=0 (of the two spellings, the last given wins).
    parser.add_argument(
        "--partitions", type=int, default=None, metavar="N", dest="setting_topic_partitions",
        help="partitions per topic (--topic-partitions); the requests topic's count caps "
        "how many consumers do work",
    )
    parser.add_argument(
        "--replication", type=int, default=None, metavar="N",
        dest="setting_topic_replication", help="replication factor (--topic-replication); "
        "3 in production",
    )
    parser.add_argument(
        "--wait", type=float, default=30.0, metavar="S",
        help="seconds to wait for the broker to answer first (a container starting beside "
        "Kafka races its start); 0 to try once",
    )
    return parser


def _describe(spec: TopicSpec) -> str:
    policy = spec.configs.get("cleanup.policy", "default")
    return f"{spec.name} ({spec.partitions} partitions, replication {spec.replication}, {policy})"


async def run(command: str, settings: TopicsToolSettings, wait_s: float) -> int:
    specs = settings.topic_specs()
    if wait_s > 0 or command == "wait":
        await wait_for_broker(settings, max(wait_s, 0.1))
    if command == "wait":
        print(f"Kafka at {settings.kafka_bootstrap} answers")
        return EXIT_OK
    if command == "create":
        created = set(await ensure_topics(settings, specs))
        for spec in specs:
            print(f"{'created' if spec.name in created else 'exists '} {_describe(spec)}")
        # A topic that existed before may differ from the spec; creating never alters it, so
        # say so here instead of leaving the operator to find out from `check`.
        for mismatch in await _settled_check(settings, specs):
            print(f"warning: {mismatch}", file=sys.stderr)
        return EXIT_OK
    mismatches = await check_topics(settings, specs)
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}")
        print(f"  why it matters: {explain(mismatch.kind.value, mismatch.config)}")
    if mismatches:
        print(f"{len(mismatches)} mismatch(es); `ocr-topics create` creates missing topics, "
              "other differences need kafka-topics.sh / kafka-configs.sh by hand")
        return EXIT_FAILED
    print(f"all {len(specs)} topics match: " + ", ".join(s.name for s in specs))
    return EXIT_OK


async def _settled_check(
    settings: TopicsToolSettings, specs: list[TopicSpec]
) -> list[TopicMismatch]:
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


async def _run(args: argparse.Namespace, settings: TopicsToolSettings) -> int:
    return await run(args.command, settings, args.wait)


async def main_async(argv: list[str] | None = None) -> int:
    """The CLI as a coroutine (tests await it inside their own event loop)."""
    return await run_cli_async(build_parser(), _run, argv, TopicsToolSettings)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv, TopicsToolSettings)


if __name__ == "__main__":
    raise SystemExit(main())
