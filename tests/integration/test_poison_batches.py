"""Nothing a broker hands over stops a partition, on the real broker: batches no client can
read, and errors no retry fixes.

Unreadable batches (each between valid requests on the same partition, with valid requests
on the other partitions fetched in the same polls): the consumer dead-letters every offset
of the batch as REQUEST_UNREADABLE (no value: aiokafka never hands the bytes over), skips
it, completes every valid request around it, commits every partition to its end and keeps
serving:
- an LZ4 batch whose frame checksum is wrong, sent with a raw Produce request: the broker
  stores it (its LZ4 reader does not check content checksums), aiokafka's decoder refuses it
  (cramjam: ERROR_contentChecksum_invalid);
- a record corrupted on the broker's disk after it was written: CorruptRecordException
  (the batch CRC no longer matches);
- a zstd batch read by a consumer without the zstd library (aiokafka's codec check patched
  to say so, as a build without cramjam would): UnsupportedCodecError.

Errors no retry fixes make the consumer exit with status 5 and say what to change: the
requests topic missing, Kafka denying the topic or the group (an ACL), and a second live
consumer with the same static membership id (fenced).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import aiokafka.codec
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.admin import CreateAclsRequest
from structlog.testing import capture_logs

import consumer.loop
from consumer.app import App
from consumer.config import Settings
from consumer.read_errors import EXIT_KAFKA_REFUSED
from consumer.settings.kafka import CompressionType, client_kwargs
from schemas.common import ErrorCode
from schemas.dlq import DlqEnvelope
from schemas.progress import TaskStatus
from tests.support.apps import running_app
from tests.support.batches import corrupt_on_disk, produce_lz4_bad_checksum, segment_file
from tests.support.documents import make_pdf
from tests.support.engines import ScriptedEngine
from tests.support.kafka import TopicReader, committed_offsets, wait_until

pytestmark = pytest.mark.integration

POISONED = 0  # the partition holding the unreadable batch
PARTITIONS = 6


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={"file_roots": [tmp_path], "metrics_port": 0, "commit_interval_s": 0.2}
    )


def request(task_id: str, pdf: Path) -> bytes:
    return json.dumps({"task_id": task_id, "source": {"uri": pdf.as_uri()}}).encode()


async def produce_to(
    settings: Settings, partition: int, records: list[tuple[str, bytes]],
    compression: str | None = None,
) -> None:
    """Each record its own batch, on `partition`."""
    producer = AIOKafkaProducer(**client_kwargs(settings), compression_type=compression)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(
                settings.topic_requests, value=value, key=key.encode(), partition=partition
            )
    finally:
        await producer.stop()


async def lz4_bad_checksum(settings: Settings, lost: list[tuple[str, bytes]]) -> None:
    partition = TopicPartition(settings.topic_requests, POISONED)
    await produce_lz4_bad_checksum(
        settings, partition, [(key.encode(), value) for key, value in lost]
    )


async def crc_on_disk(settings: Settings, lost: list[tuple[str, bytes]]) -> None:
    partition = TopicPartition(settings.topic_requests, POISONED)
    await produce_to(settings, POISONED, lost)
    segment = await segment_file(settings, partition)
    if segment is None:
        pytest.skip("the broker's log directory is not on this machine")
    for key, _ in lost:
        corrupt_on_disk(segment, key.encode())


async def codec_missing(
    settings: Settings, lost: list[tuple[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    await produce_to(settings, POISONED, lost, compression="zstd")
    # The whole process loses zstd: the consumer's own producer must not use it.
    monkeypatch.setattr(aiokafka.codec, "has_zstd", lambda: False)


def metric(app: App, name: str, **labels: str) -> float:
    value = app.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.parametrize("poison", ["lz4_bad_checksum", "crc_on_disk", "codec_missing"])
async def test_an_unreadable_batch_is_dead_lettered_and_skipped(
    settings: Settings, tmp_path: Path, poison: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdf = make_pdf(tmp_path / "doc.pdf", pages=1)
    lost = [(f"lost-{i}", request(f"lost-{i}", pdf)) for i in range(2)]
    await produce_to(settings, POISONED, [("before", request("before", pdf))])
    if poison == "lz4_bad_checksum":
        await lz4_bad_checksum(settings, lost)
    elif poison == "crc_on_disk":
        await crc_on_disk(settings, lost)
    else:
        await codec_missing(settings, lost, monkeypatch)
        settings = settings.model_copy(update={"kafka_compression_type": CompressionType.GZIP})
    await produce_to(settings, POISONED, [("after", request("after", pdf))])
    elsewhere = [f"elsewhere-{p}" for p in range(1, PARTITIONS)]
    for partition, task_id in enumerate(elsewhere, start=1):
        await produce_to(settings, partition, [(task_id, request(task_id, pdf))])
    valid = ["before", "after", *elsewhere]
    # Everything is on the topic before the consumer starts, so the first polls drain
    # several partitions at once and meet the unreadable batch among them.
    async with (
        running_app(settings, ScriptedEngine()) as app,
        TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader,
    ):
        await reader.wait_for(
            lambda r: all(r.final(settings, t) for t in valid) and len(dead(r, settings)) >= 2,
            timeout=90,
        )
        await wait_until_committed(settings, {POISONED: 4, **dict.fromkeys(range(1, 6), 1)})
        assert app.ready, "the consumer stopped serving"
        unreadable = metric(app, "ocr_kafka_read_errors_total", kind="unreadable")
        skipped = metric(app, "ocr_records_skipped_total", reason="unreadable_batch")
    for task_id in valid:
        [final] = reader.final(settings, task_id)
        assert final.status is TaskStatus.COMPLETED, (task_id, final)
    letters = dead(reader, settings)
    assert [(e.original_partition, e.original_offset) for e in letters] == [(0, 1), (0, 2)]
    for envelope in letters:
        assert envelope.error_code is ErrorCode.REQUEST_UNREADABLE
        assert envelope.original_value_base64 == ""
        assert "could not be read" in envelope.error_message
    assert unreadable >= 1 and skipped == 2


def dead(reader: TopicReader, settings: Settings) -> list[DlqEnvelope]:
    return sorted(
        (DlqEnvelope.model_validate_json(r.value) for r in reader.on(settings.topic_dlq)
         if r.value is not None),
        key=lambda e: (e.original_partition, e.original_offset),
    )


async def wait_until_committed(settings: Settings, ends: dict[int, int]) -> None:
    committed: dict[int, int] = {}
    for _ in range(100):
        committed = await committed_offsets(settings)
        if all(committed.get(p, -1) >= end for p, end in ends.items()):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"committed {committed}, expected at least {ends}")


async def dead_lettered_then_behind(settings: Settings) -> TopicReader:
    """Run a consumer until partition 0's first record is dead-lettered, the request
    "behind" it is final and both offsets are committed; what it published."""
    async with (
        running_app(settings, ScriptedEngine()) as app,
        TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader,
    ):
        await reader.wait_for(
            lambda r: bool(r.final(settings, "behind")) and bool(dead(r, settings)), timeout=60
        )
        await wait_until_committed(settings, {0: 2})
        assert app.ready
    return reader


async def test_a_request_with_a_5000_digit_number_is_dead_lettered(
    settings: Settings, tmp_path: Path
) -> None:
    """Issue 16, defect 1: json.loads raised a plain ValueError, the loop died on every
    redelivery and the request behind it was never processed."""
    pdf = make_pdf(tmp_path / "doc.pdf", pages=1)
    poison = b'{"task_id": "digits", "source": {"uri": "' + pdf.as_uri().encode() + (
        b'"}, "metadata": {"n": ' + b"7" * 5000 + b"}}"
    )
    await produce_to(settings, 0, [("digits", poison), ("behind", request("behind", pdf))])
    reader = await dead_lettered_then_behind(settings)
    [envelope] = dead(reader, settings)
    assert envelope.error_code is ErrorCode.REQUEST_INVALID
    assert base64.b64decode(envelope.original_value_base64) == poison


# -- records the broker accepts that used to stall a partition or fail a task ---------------


async def test_a_dead_letter_too_large_for_the_dlq_is_bounded_and_published(
    settings: Settings, tmp_path: Path
) -> None:
    """Issue 16, defect 2: a non-JSON value with a 1.9 MiB key (both compress, so the batch
    fits the requests topic's 2 MiB) made a 6.5 MB dead letter; the producer refused it
    for ever, the partition committed nothing more and SIGTERM waited out its grace."""
    pdf = make_pdf(tmp_path / "doc.pdf", pages=1)
    key, value = "k" * 1_900_000, b"\xff" * (2 * 1024 * 1024)
    producer = AIOKafkaProducer(
        **client_kwargs(settings), compression_type="gzip", max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_requests, value=value, key=key.encode(),
                                     partition=0)
    finally:
        await producer.stop()
    await produce_to(settings, 0, [("behind", request("behind", pdf))])
    reader = await dead_lettered_then_behind(settings)
    [envelope] = dead(reader, settings)
    assert envelope.error_code is ErrorCode.REQUEST_TOO_LARGE  # over OCR_MAX_REQUEST_BYTES
    assert base64.b64decode(envelope.original_value_base64) == value
    assert envelope.original_key_base64 is not None
    assert "[dead letter: key cut to its first" in envelope.error_message
    [record] = reader.on(settings.topic_dlq)
    assert record.key == "k" * 256


async def test_a_far_future_timestamp_is_read_as_now(
    settings: Settings, tmp_path: Path
) -> None:
    """Issue 16, defect 9: a record timestamp no datetime holds ended its task INTERNAL.
    Kafka 4 refuses timestamps more than an hour ahead unless the topic allows them."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(
            ConfigResourceType.TOPIC, settings.topic_requests,
            {"message.timestamp.after.max.ms": str(2**63 - 1)},
        )])
    finally:
        await admin.close()
    pdf = make_pdf(tmp_path / "doc.pdf", pages=1)
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    try:
        for _ in range(20):  # the new topic config reaches the broker's log shortly
            try:
                await producer.send_and_wait(
                    settings.topic_requests, value=request("future", pdf), key=b"future",
                    timestamp_ms=253_402_300_800_000,  # 10000-01-01
                )
                break
            except kafka_errors.InvalidTimestampError:
                await asyncio.sleep(0.5)
    finally:
        await producer.stop()
    async with (
        running_app(settings, ScriptedEngine()),
        TopicReader(settings, settings.topic_progress, settings.topic_timing) as reader,
    ):
        await reader.wait_for(lambda r: bool(r.final(settings, "future")), timeout=60)
    [final] = reader.final(settings, "future")
    assert final.status is TaskStatus.COMPLETED, final


async def shrink_records(settings: Settings, topic: str, max_bytes: int) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(
            ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(max_bytes)}
        )])
    finally:
        await admin.close()


@pytest.mark.parametrize("shrunk", ["before_start", "while_running"])
async def test_a_page_result_the_results_topic_refuses_fails_that_page_only(
    settings: Settings, tmp_path: Path, shrunk: str
) -> None:
    """Issue 16, defect 9: the broker refused a page result as too large and the whole task
    failed INTERNAL ("ExceptionGroup: unhandled errors in a TaskGroup"). The results topic
    takes 64 KiB records here; page 2's result is about 530 KB. Known at start, the record
    is measured and never sent; shrunk while the consumer runs, the broker refuses it, which
    breaks aiokafka's idempotent producer (OutOfOrderSequenceNumber on every later send)
    until the publisher replaces it."""
    if shrunk == "before_start":
        await shrink_records(settings, settings.topic_results, 65536)
    pdf = make_pdf(tmp_path / "doc.pdf", pages=3)
    # Random text, so that the producer's compression cannot bring it under the limit.
    noise = base64.b64encode(os.urandom(200_000)).decode()
    engine = ScriptedEngine(grounded=lambda image: noise if image.page == 2 else "a page")
    async with (
        running_app(settings, engine),
        TopicReader(settings, settings.topic_progress, settings.topic_results) as reader,
    ):
        if shrunk == "while_running":
            await shrink_records(settings, settings.topic_results, 65536)
            await asyncio.sleep(1.0)  # the new config reaches the partition's log
        await produce_to(settings, 0, [("big", request("big", pdf))])
        await reader.wait_for(lambda r: bool(r.final(settings, "big")), timeout=60)
        # The producer still works: the next task (one page, small) completes whole.
        small = make_pdf(tmp_path / "small.pdf", pages=1)
        await produce_to(settings, 0, [("next", request("next", small))])
        await reader.wait_for(lambda r: bool(r.final(settings, "next")), timeout=60)
    [final] = reader.final(settings, "big")
    assert final.status is TaskStatus.COMPLETED and final.pages_failed == 1, final
    pages = {r.page: r for r in reader.results(settings) if r.task_id == "big"}
    error = pages[2].error
    assert error is not None and error.code is ErrorCode.PAGE_OUTPUT_TOO_LARGE
    assert pages[1].error is None and pages[3].error is None
    [final] = reader.final(settings, "next")
    assert final.status is TaskStatus.COMPLETED and final.pages_failed == 0, final


# -- errors no retry fixes -------------------------------------------------------------------


async def exit_status(app: App, timeout: float = 60.0) -> int:
    await asyncio.wait_for(app.run(), timeout)
    return app.exit_code


async def test_a_missing_requests_topic_exits_5(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer.loop, "TOPIC_WAIT_S", 1.0)
    absent = settings.model_copy(update={"topic_requests": settings.topic_requests + ".absent"})
    with capture_logs() as logs:
        assert await exit_status(App(absent, engine=ScriptedEngine())) == EXIT_KAFKA_REFUSED
    [exiting] = [e for e in logs if e["event"] == "consumer_exiting"]
    assert exiting["cause"] == "topic_missing" and "does not exist" in exiting["message"]


# Kafka's ACL codes: resource TOPIC 2, GROUP 3; pattern LITERAL 3; operation READ 3,
# DESCRIBE 8; permission DENY 2, ALLOW 3.
RESOURCES = {"topic": 2, "group": 3}
READ, DESCRIBE, DENY, ALLOW = 3, 8, 2, 3


async def acl(settings: Settings, resource: str, name: str, operation: int, kind: int) -> None:
    """An ACL for everyone (the stack's clients are User:ANONYMOUS) on `name`."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        response = await admin._send_request(CreateAclsRequest(
            RESOURCES[resource], name, 3, "User:ANONYMOUS", "*", operation, kind
        ))
    finally:
        await admin.close()
    [(error_code, message)] = response.creation_responses
    if error_code == 54:  # SECURITY_DISABLED: a broker started without an authorizer
        pytest.skip(f"the broker checks no ACLs ({message}); restart it with `make up`")
    assert error_code == 0, message


@pytest.mark.parametrize("resource", ["topic", "group"])
async def test_kafka_denying_the_consumer_exits_5(settings: Settings, resource: str) -> None:
    """The topic may be described (so it is not taken for missing) but not read; or the
    group may not be joined."""
    name = settings.topic_requests if resource == "topic" else settings.group_id
    if resource == "topic":
        await acl(settings, resource, name, DESCRIBE, ALLOW)
    await acl(settings, resource, name, READ, DENY)
    with capture_logs() as logs:
        assert await exit_status(App(settings, engine=ScriptedEngine())) == EXIT_KAFKA_REFUSED
    [exiting] = [e for e in logs if e["event"] == "consumer_exiting"]
    assert exiting["cause"] == "authorization"
    assert "grant this consumer's principal Read" in exiting["message"]


async def test_a_second_consumer_with_our_static_id_fences_and_exits_5(
    settings: Settings, tmp_path: Path
) -> None:
    static = settings.model_copy(update={"group_instance_id": "ocr-0"})
    pdf = make_pdf(tmp_path / "doc.pdf", pages=1)
    first = App(static.model_copy(update={"consumer_id": "first"}), engine=ScriptedEngine())
    second = App(static.model_copy(update={"consumer_id": "second"}), engine=ScriptedEngine())
    runs = [asyncio.create_task(app.run()) for app in (first, second)]
    try:
        # Work for both, so that they commit and rejoin while they fence each other.
        for i in range(20):
            await produce_to(static, i % PARTITIONS, [(f"t{i}", request(f"t{i}", pdf))])
            await asyncio.sleep(0.5)
            if any(run.done() for run in runs):
                break
        await wait_until(lambda: any(run.done() for run in runs), timeout=60)
    finally:
        for app in (first, second):
            app.stop()
        await asyncio.wait(runs, timeout=60)
    codes: list[int] = [app.exit_code for app in (first, second)]
    assert EXIT_KAFKA_REFUSED in codes, codes
