"""The local stack does what the project relies on, against the real broker and Redis.

Kafka version that passed: Apache Kafka 4.1.1 (org.apache.kafka:kafka_2.13:4.1.1 from Maven
Central, single-node KRaft, Java 17) with aiokafka 0.14.0 - every API below works on 4.x
after KIP-896 removed the old protocol versions; no 3.9 fallback was needed.

These are exactly the things an in-memory stand-in broker gets wrong (idempotent producer,
offsets_for_times, group-offset admin), which is why the suite runs on a real Kafka.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumer.config import Settings
from consumer.settings.kafka import client_kwargs
from producer_tools.topic_admin import (
    MismatchKind,
    TopicMismatch,
    check_topics,
    delete_topics,
    ensure_topics,
)
from schemas.topics import TopicSpec


def _reader(settings: Settings, *topics: str, group_id: str | None = None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        **client_kwargs(settings),
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


async def _read(consumer: AIOKafkaConsumer, count: int, timeout_s: float = 30.0) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count:
        assert time.monotonic() < deadline, f"read {len(records)} of {count} records"
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            records.extend(batch)
    return records


async def _topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    [resource] = response.resources
    return {entry[0]: entry[1] for entry in resource[4]}


async def test_round_trip_keeps_key_value_and_headers(topics: Settings) -> None:
    headers = [("ce_type", b"ocr.page.result.v1"), ("ce_id", b"abc"), ("empty", b"")]
    producer = AIOKafkaProducer(**client_kwargs(topics), acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            topics.topic_results, value=b'{"page": 1}', key=b"task-1/1", headers=headers
        )
    finally:
        await producer.stop()
    consumer = _reader(topics, topics.topic_results)
    await consumer.start()
    try:
        [record] = await _read(consumer, 1)
    finally:
        await consumer.stop()
    assert (record.partition, record.offset) == (meta.partition, meta.offset)
    assert record.key == b"task-1/1" and record.value == b'{"page": 1}'
    assert list(record.headers) == headers


async def test_idempotent_producer(topics: Settings) -> None:
    producer = AIOKafkaProducer(
        **client_kwargs(topics), acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(topics.topic_progress, value=f"{i}".encode(), key=b"k")
            for i in range(5)
        ]
    finally:
        await producer.stop()
    # One key, one partition, consecutive offsets: InitProducerId worked and nothing was
    # duplicated or reordered.
    assert len({m.partition for m in sent}) == 1
    assert [m.offset for m in sent] == list(range(sent[0].offset, sent[0].offset + 5))
    consumer = _reader(topics, topics.topic_progress)
    await consumer.start()
    try:
        records = await _read(consumer, 5)
    finally:
        await consumer.stop()
    assert [r.value for r in records] == [f"{i}".encode() for i in range(5)]


async def test_offsets_for_times_finds_the_first_record_at_or_after(topics: Settings) -> None:
    tp = TopicPartition(topics.topic_requests, 0)
    base = int(time.time() * 1000) - 60_000
    producer = AIOKafkaProducer(**client_kwargs(topics))
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(
                tp.topic, value=b"x", partition=0, timestamp_ms=base + i * 10_000
            )
    finally:
        await producer.stop()
    consumer = _reader(topics)
    await consumer.start()
    try:
        found = await consumer.offsets_for_times(
            {tp: base + 15_000}
        )
        before = await consumer.offsets_for_times({tp: base - 1})
        after = await consumer.offsets_for_times({tp: base + 60_000})
    finally:
        await consumer.stop()
    assert found[tp] is not None
    assert (found[tp].offset, found[tp].timestamp) == (2, base + 20_000)
    assert before[tp] is not None and before[tp].offset == 0
    assert after[tp] is None


async def test_group_admin_describe_list_and_offsets(topics: Settings) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topics.topic_requests, 0)
    producer = AIOKafkaProducer(**client_kwargs(topics))
    await producer.start()
    try:
        for i in range(4):
            await producer.send_and_wait(tp.topic, value=f"{i}".encode(), partition=0)
    finally:
        await producer.stop()

    admin = AIOKafkaAdminClient(**client_kwargs(topics))
    await admin.start()
    member = _reader(topics, tp.topic, group_id=group)
    await member.start()
    try:
        await _read(member, 4)
        await member.commit({tp: 3})
        groups = {g[0] for g in await admin.list_consumer_groups()}
        assert group in groups
        [response] = await admin.describe_consumer_groups([group])
        [described] = response.to_object()["groups"]
        assert described["error_code"] == 0 and described["group"] == group
        assert described["state"] == "Stable" and len(described["members"]) == 1
        committed = await admin.list_consumer_group_offsets(group)
        assert committed[tp].offset == 3

        # Altering offsets (what an operator's reset does) needs the group empty: a
        # manually assigned consumer commits on behalf of the group.
        await member.stop()
        resetter = AIOKafkaConsumer(
            **client_kwargs(topics), group_id=group, enable_auto_commit=False
        )
        await resetter.start()
        try:
            resetter.assign([tp])
            await resetter.commit({tp: 1})
        finally:
            await resetter.stop()
        committed = await admin.list_consumer_group_offsets(group, partitions=[tp])
        assert committed[tp].offset == 1
        [response] = await admin.describe_consumer_groups([group])
        assert response.to_object()["groups"][0]["state"] == "Empty"
    finally:
        await member.stop()
        await admin.close()


async def test_ensure_topics_creates_the_contract_topics(stack: Settings) -> None:
    run = uuid.uuid4().hex[:8]
    settings = stack.model_copy(
        update={
            "topic_requests": f"e-{run}.req",
            "topic_results": f"e-{run}.res",
            "topic_progress": f"e-{run}.prog",
            "topic_timing": f"e-{run}.tim",
            "topic_dlq": f"e-{run}.dlq",
            "topic_partitions": 2,
        }
    )
    specs = settings.topic_specs()
    try:
        created = await ensure_topics(settings, specs)
        assert created == [s.name for s in specs]
        assert await ensure_topics(settings, specs) == []  # idempotent
        assert await check_topics(settings, specs) == []
        results = await _topic_configs(settings, settings.topic_results)
        assert results["cleanup.policy"] == "compact"
        requests = await _topic_configs(settings, settings.topic_requests)
        assert requests["cleanup.policy"] == "delete"
        assert requests["retention.ms"] == str(7 * 24 * 3600 * 1000)
    finally:
        await delete_topics(settings, [s.name for s in specs])


async def test_check_topics_reports_each_difference_precisely(stack: Settings) -> None:
    name = f"c-{uuid.uuid4().hex[:8]}"
    actual = TopicSpec(name, 2, 1, {"cleanup.policy": "delete"})
    await ensure_topics(stack, [actual])
    try:
        expected = [
            TopicSpec(name, 3, 1, {"cleanup.policy": "compact", "retention.ms": "-1"}),
            TopicSpec(f"{name}-absent", 1, 1),
        ]
        mismatches = await check_topics(stack, expected)
    finally:
        await delete_topics(stack, [name])
    assert mismatches == [
        TopicMismatch(name, MismatchKind.PARTITIONS, expected="3", actual="2"),
        TopicMismatch(
            name, MismatchKind.CONFIG, expected="compact", actual="delete",
            config="cleanup.policy",
        ),
        TopicMismatch(
            name, MismatchKind.CONFIG, expected="-1", actual=str(7 * 24 * 3600 * 1000),
            config="retention.ms",
        ),
        TopicMismatch(
            f"{name}-absent", MismatchKind.MISSING, expected="1 partitions, replication 1",
            actual="absent",
        ),
    ]
    assert str(mismatches[0]) == f"topic {name!r}: partitions is 2, expected 3"
    assert str(mismatches[1]) == (
        f"topic {name!r}: config cleanup.policy is delete, expected compact"
    )
    assert str(mismatches[3]) == (
        f"topic '{name}-absent' is missing (expected 1 partitions, replication 1)"
    )


async def test_redis_ping_set_and_expiry(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    assert await redis_client.ping() is True
    key = f"{redis_prefix}probe"
    assert await redis_client.set(key, "v", px=300) is True
    assert await redis_client.get(key) == "v"
    ttl = await redis_client.pttl(key)
    assert 0 < ttl <= 300
    await asyncio.sleep(0.5)
    assert await redis_client.get(key) is None
    assert await redis_client.set(f"{redis_prefix}kept", "v", ex=60) is True
    assert 55 <= await redis_client.ttl(f"{redis_prefix}kept") <= 60
