"""Pieces shared by the `ocr-replay` commands: times, group inspection, bounded topic reads."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code

from consumer.settings import (
    ConsumerGroup,
    KafkaConnection,
    Logging,
    RequestLimits,
    TaskState,
    TopicLayout,
    client_kwargs,
)
from producer_tools import ToolError, UsageError

# Kafka 4 answers DescribeGroups for an unknown group with GROUP_ID_NOT_FOUND where older
# brokers said state "Dead"; both mean "no members, nothing to protect".
GROUP_ID_NOT_FOUND = 69
IDLE_STATES = ("Empty", "Dead")
# The requests topic accepts 2 MiB records (schemas/topics.py); fetch at least that much per
# partition so one large inline request cannot stall a read.
FETCH_BYTES = 4 * 1024 * 1024


class ReplaySettings(
    KafkaConnection, TopicLayout, ConsumerGroup, RequestLimits, TaskState, Logging
):
    """What ocr-replay reads: the group and the Redis key prefix are the production
    consumer's, from which side-by-side derives its own."""


class ReplayError(ToolError):
    """An operator-facing refusal (exit 1): the message says what is wrong and what to do."""


def parse_time(text: str) -> datetime:
    """ISO 8601 (a trailing Z allowed); a time without a zone is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise UsageError(
            f"{text!r} is not an ISO 8601 time; use e.g. 2026-11-24T09:30:00Z"
        ) from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def format_ms(ms: int | None) -> str:
    if ms is None or ms < 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group_id: str
    state: str
    protocol_type: str
    members: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return bool(self.members) or self.state not in IDLE_STATES


async def describe_group(settings: KafkaConnection, group_id: str) -> GroupInfo:
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="ocr-replay")
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    for response in responses:
        for entry in response.groups:
            # DescribeGroups v0-v5 all start (error_code, group_id, state, protocol_type,
            # protocol, members); members end with (client_id, client_host, metadata,
            # assignment) whether or not the version carries group_instance_id.
            error_code, gid, state, protocol_type, _protocol, members = entry[:6]
            if gid != group_id:
                continue
            if error_code == GROUP_ID_NOT_FOUND:
                return GroupInfo(group_id, "Dead", "")
            if error_code:
                error = for_code(error_code)
                raise error(f"describing group {group_id!r}: {error.__name__}")
            described = [f"{m[0]} (client {m[-4]} at {m[-3]})" for m in members]
            return GroupInfo(group_id, state, protocol_type, described)
    return GroupInfo(group_id, "Dead", "")


def refuse_if_live(group: GroupInfo, action: str) -> None:
    if group.live:
        members = "".join(f"\n  - {m}" for m in group.members) or " (none listed)"
        raise ReplayError(
            f"group {group.group_id!r} is {group.state} with {len(group.members)} live "
            f"member(s); {action} only while the group is empty. Stop its consumers first "
            f"(kubectl scale deploy/ocr-consumer --replicas=0, or stop ocr-consumer), wait for "
            f"the session timeout, then run again. Members:{members}"
        )


@dataclass(frozen=True, slots=True)
class TopicRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def origin(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def offsets_consumer(settings: KafkaConnection) -> AIOKafkaConsumer:
    """A group-less consumer for offset look-ups and bounded reads; it commits nothing."""
    return AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="ocr-replay",
        max_partition_fetch_bytes=FETCH_BYTES,
        fetch_max_bytes=4 * FETCH_BYTES,
    )


async def topic_partitions(settings: KafkaConnection, topics: list[str]) -> list[TopicPartition]:
    """Every partition of `topics`; ReplayError naming any topic that does not exist."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="ocr-replay")
    await admin.start()
    try:
        # Metadata of all topics, not of the named ones: naming a missing topic may
        # auto-create it on brokers that allow that, and a replay must not create topics.
        described = {t["topic"]: t for t in await admin.describe_topics()
                     if t["error_code"] == 0}
    finally:
        await admin.close()
    tps: list[TopicPartition] = []
    for topic in topics:
        if topic not in described or not described[topic]["partitions"]:
            raise ReplayError(f"topic {topic!r} does not exist (`ocr-topics check` lists the "
                              "ocr-stream topics)")
        partitions = sorted(p["partition"] for p in described[topic]["partitions"])
        tps.extend(TopicPartition(topic, p) for p in partitions)
    return tps


async def offsets_at(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], when_ms: int,
    end: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """First offset with a timestamp >= when_ms; the end offset where no record is that late."""
    found = await consumer.offsets_for_times({tp: when_ms for tp in tps})
    return {tp: found[tp].offset if found.get(tp) is not None else end[tp] for tp in tps}


async def read_range(
    settings: KafkaConnection,
    topic: str,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    idle_timeout_s: float = 30.0,
) -> AsyncIterator[TopicRecord]:
    """Every record of `topic` with since_ms <= timestamp < until_ms, as the topic is now.

    The end is fixed when the read starts (the end offsets, or the first offsets at
    until_ms), so a topic that keeps growing, or this tool republishing into the topic it
    reads, cannot make the read endless.
    """
    tps = await topic_partitions(settings, [topic])
    consumer = offsets_consumer(settings)
    await consumer.start()
    try:
        end = await consumer.end_offsets(tps)
        start = (
            await offsets_at(consumer, tps, since_ms, end)
            if since_ms is not None
            else await consumer.beginning_offsets(tps)
        )
        stop = await offsets_at(consumer, tps, until_ms, end) if until_ms is not None else end
        active = {tp for tp in tps if start[tp] < stop[tp]}
        if not active:
            return
        consumer.assign(sorted(active, key=lambda tp: tp.partition))
        for tp in active:
            consumer.seek(tp, start[tp])
        last_progress = time.monotonic()
        while active:
            batch = await consumer.getmany(*active, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= stop[tp]:
                        break
                    # CreateTime timestamps need not rise with offsets: the offset bounds
                    # are the coarse cut, this is the exact one.
                    if since_ms is not None and record.timestamp < since_ms:
                        continue
                    if until_ms is not None and record.timestamp >= until_ms:
                        continue
                    yield TopicRecord(
                        topic=record.topic, partition=record.partition, offset=record.offset,
                        timestamp_ms=record.timestamp, key=record.key, value=record.value,
                        headers=tuple((k, bytes(v or b"")) for k, v in record.headers or ()),
                    )
            progressed = bool(batch)
            for tp in list(active):
                # The position also moves past transaction markers and compacted gaps, so
                # it, not the last record seen, says when a partition is read to `stop`.
                if await consumer.position(tp) >= stop[tp]:
                    active.discard(tp)
                    consumer.pause(tp)
                    progressed = True
            if progressed:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > idle_timeout_s:
                missing = ", ".join(f"{tp.partition}" for tp in sorted(active))
                raise ReplayError(
                    f"reading {topic!r} made no progress for {idle_timeout_s:.0f}s on "
                    f"partition(s) {missing}; is the broker healthy?"
                )
    finally:
        await consumer.stop()
