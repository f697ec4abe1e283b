"""`ocr-replay` on the real broker: offset resets, DLQ/time-range republish, side-by-side."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from consumer.config import Settings
from consumer.settings.kafka import client_kwargs
from producer_tools import EXIT_USAGE, replay
from producer_tools.topic_admin import delete_topics
from schemas.cloudevents import CE_TYPE_REQUEST, parse_ce_headers
from schemas.common import ErrorCode
from schemas.dlq import DlqEnvelope
from schemas.headers import DLQ_ERROR_CODE, REPLAY_OF, TRACEPARENT, TRACESTATE
from schemas.request import OcrRequest, Source
from tests.support.apps import running_app
from tests.support.engines import ScriptedEngine
from tests.support.kafka import Record, TopicReader

pytestmark = pytest.mark.integration

# Records an hour old: well inside the topics' 7-day retention, and never "in the future"
# for the broker's message.timestamp.after.max.ms check.
T0_MS = (int(time.time()) - 3600) * 1000
# The W3C trace context of the original requests, which every replay must keep.
PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE = [(TRACEPARENT, PARENT), (TRACESTATE, b"rojo=00f067aa0ba902b7")]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def flags(settings: Settings) -> list[str]:
    """The settings flags that point the CLI at this test's broker and topics."""
    return [
        "--kafka-bootstrap", settings.kafka_bootstrap,
        "--topic-requests", settings.topic_requests,
        "--topic-results", settings.topic_results,
        "--topic-progress", settings.topic_progress,
        "--topic-timing", settings.topic_timing,
        "--topic-dlq", settings.topic_dlq,
        "--group-id", settings.group_id,
        "--redis-key-prefix", settings.redis_key_prefix,
    ]


def request(task_id: str, **extra: object) -> OcrRequest:
    return OcrRequest.model_validate(
        {"task_id": task_id, "source": Source(uri=f"file:///srv/ocr-blobs/{task_id}.pdf"),
         **extra},
        strict=False,
    )


async def produce(
    settings: Settings, topic: str, items: list[tuple[bytes | None, bytes, int | None, int]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """items: (key, value, partition or None, timestamp ms)."""
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all")
    await producer.start()
    try:
        for key, value, partition, ts in items:
            await producer.send_and_wait(
                topic, value=value, key=key, partition=partition, timestamp_ms=ts,
                headers=headers,
            )
    finally:
        await producer.stop()


async def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}


async def commit_as_group(settings: Settings, group: str, offsets: dict[int, int]) -> None:
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = {TopicPartition(settings.topic_requests, p): o for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


async def read_all(settings: Settings, topic: str, expected: int) -> list[Record]:
    async with TopicReader(settings, topic) as reader:
        await reader.wait_for(lambda r: len(r.records) >= expected, timeout=30)
        # A moment more to catch records beyond the expected count (there must be none).
        for _ in range(3):
            await reader.poll()
    return reader.records


@pytest.fixture
def settings(stack_settings: Settings) -> Settings:
    return stack_settings


async def ten_per_partition(settings: Settings) -> None:
    """Offsets 0..9 on partitions 0 and 1, one second apart from T0; other partitions empty."""
    items = [
        (f"k{p}-{i}".encode(), b"{}", p, T0_MS + i * 1000) for p in (0, 1) for i in range(10)
    ]
    await produce(settings, settings.topic_requests, items)


# reset ------------------------------------------------------------------------------------


async def test_reset_to_datetime_dry_run_then_execute(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await ten_per_partition(settings)
    group = settings.group_id
    middle = iso(T0_MS + 5000)  # records 5..9 are at or after it

    rc = await replay.run(["reset", "--group", group, "--to-datetime", middle, *flags(settings)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "dry run" in out and "nothing was committed" in out
    assert await committed(settings, group, settings.topic_requests) == {}

    rc = await replay.run(
        ["reset", "--group", group, "--to-datetime", middle, "--execute", *flags(settings)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    offsets = await committed(settings, group, settings.topic_requests)
    # Empty partitions have no record after the time: they go to their end (0).
    assert offsets == {0: 5, 1: 5, 2: 0, 3: 0, 4: 0, 5: 0}
    assert "end of log" in out

    # A time after every record sends every partition to its end.
    rc = await replay.run(["reset", "--group", group, "--to-datetime",
                           iso(T0_MS + 60_000), "--execute", *flags(settings)])
    assert rc == 0
    offsets = await committed(settings, group, settings.topic_requests)
    assert offsets[0] == 10 and offsets[1] == 10


async def test_reset_earliest_offset_shift_and_latest(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await ten_per_partition(settings)
    group = settings.group_id
    await commit_as_group(settings, group, {0: 8, 1: 9})

    async def reset(*target: str) -> dict[int, int]:
        rc = await replay.run(["reset", "--group", group, *target, "--execute",
                               *flags(settings)])
        assert rc == 0, capsys.readouterr()
        return await committed(settings, group, settings.topic_requests)

    offsets = await reset("--shift-by", "-3")
    assert offsets[0] == 5 and offsets[1] == 6
    offsets = await reset("--to-earliest")
    assert offsets == dict.fromkeys(range(6), 0)
    offsets = await reset("--to-offset", "7")
    # Clamped to each partition's log: 7 on the full ones, 0 (the end) on the empty ones.
    assert offsets == {0: 7, 1: 7, 2: 0, 3: 0, 4: 0, 5: 0}
    assert "clamped" in capsys.readouterr().out
    offsets = await reset("--to-latest")
    assert offsets[0] == 10 and offsets[1] == 10


async def test_reset_dry_run_prints_current_and_new(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await ten_per_partition(settings)
    await commit_as_group(settings, settings.group_id, {0: 8})
    rc = await replay.run(["reset", "--group", settings.group_id, "--to-earliest",
                           *flags(settings)])
    out = capsys.readouterr().out
    assert rc == 0
    line = next(row for row in out.splitlines() if row.startswith(settings.topic_requests)
                and row.split()[1] == "0")
    assert "8 -> 0" in " ".join(line.split()) and "(-8)" in line
    assert await committed(settings, settings.group_id, settings.topic_requests) == {0: 8}


async def test_reset_refused_while_a_member_is_live(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await ten_per_partition(settings)
    group = settings.group_id
    await commit_as_group(settings, group, {0: 8, 1: 8})
    member = AIOKafkaConsumer(
        settings.topic_requests, **client_kwargs(settings), group_id=group,
        enable_auto_commit=False, auto_offset_reset="earliest",
        client_id="live-member",
    )
    await member.start()
    try:
        deadline = time.monotonic() + 30
        while not member.assignment():
            assert time.monotonic() < deadline, "the member never joined"
            await member.getmany(timeout_ms=200)
        for extra in ([], ["--execute"]):
            rc = await replay.run(["reset", "--group", group, "--to-earliest", *extra,
                                   *flags(settings)])
            captured = capsys.readouterr()
            assert rc == 1
            assert "live member" in captured.err and "live-member" in captured.err
        assert await committed(settings, group, settings.topic_requests) == {0: 8, 1: 8}
    finally:
        await member.stop()


async def test_reset_of_a_missing_topic_is_a_clear_error(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = await replay.run(["reset", "--group", settings.group_id, "--to-earliest",
                           "--topic", f"{settings.topic_requests}.nope", *flags(settings)])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err


# republish --------------------------------------------------------------------------------


def envelope(raw: bytes, code: ErrorCode, task_id: str | None, offset: int) -> bytes:
    return DlqEnvelope(
        error_code=code, error_message="test", original_topic="ocr.requests",
        original_partition=0, original_offset=offset,
        original_key_base64=base64.b64encode(task_id.encode()).decode() if task_id else None,
        original_value_base64=base64.b64encode(raw).decode(), task_id=task_id,
        consumer_id="test", failed_at=datetime.now(UTC),
    ).model_dump_json().encode()


async def test_republish_from_dlq_with_attempt_plus_one_and_force(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    good = request("dlq-good", attempt=2, metadata={"who": "ops"})
    conflict = request("dlq-conflict")
    letters = [
        envelope(good.model_dump_json().encode(), ErrorCode.TASK_ID_CONFLICT, "dlq-good", 1),
        envelope(b"{not json", ErrorCode.REQUEST_NOT_JSON, None, 2),
        envelope(json.dumps({"task_id": "dlq-bad", "source": {}}).encode(),
                 ErrorCode.REQUEST_INVALID, "dlq-bad", 3),
        envelope(conflict.model_dump_json().encode(), ErrorCode.TASK_ID_CONFLICT,
                 "dlq-conflict", 4),
        b"not an envelope",
    ]
    # Dead letters carry their request's trace context (and their own reason headers).
    await produce(settings, settings.topic_dlq,
                  [(None, value, 0, T0_MS + i) for i, value in enumerate(letters)],
                  headers=[*TRACE, (DLQ_ERROR_CODE, b"TASK_ID_CONFLICT")])

    rc = await replay.run(["republish", "--from-dlq", "--force", *flags(settings)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "would send dlq-good attempt 3 force" in out
    assert "still invalid: REQUEST_NOT_JSON" in out
    assert "still invalid: REQUEST_INVALID" in out and "source" in out
    assert "not a DLQ envelope" in out
    async with TopicReader(settings, settings.topic_requests) as reader:
        for _ in range(5):
            await reader.poll()
    assert reader.records == [], "a dry run must send nothing"

    rc = await replay.run(["republish", "--from-dlq", "--force", "--task", "dlq-good",
                           "--execute", *flags(settings)])
    out = capsys.readouterr().out
    assert rc == 0, out
    [record] = await read_all(settings, settings.topic_requests, 1)
    sent = OcrRequest.model_validate_json(record.value or b"")
    assert sent.task_id == "dlq-good" and sent.attempt == 3 and sent.force is True
    assert sent.metadata == {"who": "ops"} and sent.source == good.source
    assert record.key == "dlq-good"
    assert parse_ce_headers(list(record.headers.items())).type == CE_TYPE_REQUEST
    assert record.headers[REPLAY_OF].startswith(settings.topic_dlq.encode())
    # The replay stays in the request's trace; the dead letter's own headers stay behind.
    assert [(k, v) for k, v in record.headers.items() if k in (TRACEPARENT, TRACESTATE)] == TRACE
    assert DLQ_ERROR_CODE not in record.headers

    # Without --force the flag stays as it was; --code filters envelopes.
    rc = await replay.run(["republish", "--from-dlq", "--code", "TASK_ID_CONFLICT",
                           "--task", "dlq-conflict", "--execute", *flags(settings)])
    assert rc == 0
    records = await read_all(settings, settings.topic_requests, 2)
    [again] = [OcrRequest.model_validate_json(r.value or b"") for r in records
               if r.key == "dlq-conflict"]
    assert again.attempt == 1 and again.force is False


async def test_republish_time_range_of_the_requests_topic(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    items = [
        (b"early", request("early").model_dump_json().encode(), None, T0_MS),
        (b"in-1", request("in-1").model_dump_json().encode(), None, T0_MS + 2000),
        (b"in-2", request("in-2", attempt=4).model_dump_json().encode(), None, T0_MS + 3000),
        # A second copy of in-1 in the window: only the latest is republished.
        (b"in-1", request("in-1", attempt=1).model_dump_json().encode(), None, T0_MS + 3500),
        (b"junk", b"\xff\xfe", None, T0_MS + 3600),
        # A cancel is not replayed: computing again is the point of a replay.
        (b"in-2", b'{"action": "cancel", "task_id": "in-2"}', None, T0_MS + 3700),
        (b"late", request("late").model_dump_json().encode(), None, T0_MS + 9000),
    ]
    await produce(settings, settings.topic_requests, items, headers=[*TRACE, ("x", b"y")])
    window = ["--since", iso(T0_MS + 1000), "--until", iso(T0_MS + 5000)]

    rc = await replay.run(["republish", *window, "--execute", *flags(settings)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "1 older copies superseded" in out and "REQUEST_NOT_UTF8" in out
    assert "a cancel of in-2, not sent" in out
    records = await read_all(settings, settings.topic_requests, len(items) + 2)
    replayed = [r for r in records if REPLAY_OF in r.headers]
    sent = [OcrRequest.model_validate_json(r.value or b"") for r in replayed]
    assert sorted((r.task_id, r.attempt) for r in sent) == [("in-1", 2), ("in-2", 5)]
    for record in replayed:  # the trace context goes along; other headers do not
        assert (record.headers[TRACEPARENT], record.headers[TRACESTATE]) == (
            TRACE[0][1], TRACE[1][1])
        assert "x" not in record.headers
    assert all(r.force is False for r in sent)


async def test_republish_argument_errors(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await replay.run(["republish", *flags(settings)]) == EXIT_USAGE
    assert "--from-dlq or --since" in capsys.readouterr().err
    assert await replay.run(["republish", "--since", iso(T0_MS), "--until", iso(T0_MS - 1),
                             *flags(settings)]) == EXIT_USAGE
    assert "later than" in capsys.readouterr().err
    assert await replay.run(["republish", "--since", "yesterday", *flags(settings)]) == EXIT_USAGE
    assert "ISO 8601" in capsys.readouterr().err


# side-by-side -----------------------------------------------------------------------------


@pytest.fixture
async def side_prefix(settings: Settings, run_id: str) -> AsyncIterator[str]:
    prefix = f"cmp-{run_id}"
    yield prefix
    await delete_topics(settings, list(settings.topic_names.with_prefix(prefix)))


async def _topic_names(settings: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_side_by_side_copies_requests_and_prints_overrides(
    settings: Settings, side_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    items = [
        (b"old", request("old").model_dump_json().encode(), None, T0_MS),
        (b"new-1", request("new-1").model_dump_json().encode(), None, T0_MS + 5000),
        (b"new-2", request("new-2").model_dump_json().encode(), None, T0_MS + 6000),
    ]
    await produce(settings, settings.topic_requests, items,
                  headers=[("content-type", b"application/json"), *TRACE])
    args = ["side-by-side", "--target-prefix", side_prefix, "--since", iso(T0_MS + 1000),
            "--target-model", "deepseek-ai/DeepSeek-OCR", "--target-resolution-mode", "base",
            *flags(settings)]
    side_requests = f"{side_prefix}.{settings.topic_requests}"

    rc = await replay.run(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "dry run" in out
    assert side_requests not in await _topic_names(settings)

    rc = await replay.run([*args, "--execute"])
    out = capsys.readouterr().out
    assert rc == 0, out
    topics = await _topic_names(settings)
    for topic in (settings.topic_requests, settings.topic_results, settings.topic_progress,
                  settings.topic_timing, settings.topic_dlq):
        assert f"{side_prefix}.{topic}" in topics
    env = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.splitlines() if line.startswith("export ")
    )
    assert env["OCR_TOPIC_REQUESTS"] == side_requests
    assert env["OCR_TOPIC_RESULTS"] == f"{side_prefix}.{settings.topic_results}"
    assert env["OCR_TOPIC_PROGRESS"] == f"{side_prefix}.{settings.topic_progress}"
    assert env["OCR_TOPIC_TIMING"] == f"{side_prefix}.{settings.topic_timing}"
    assert env["OCR_GROUP_ID"] == f"{side_prefix}.{settings.group_id}"
    assert env["OCR_MODEL"] == "deepseek-ai/DeepSeek-OCR"
    assert env["OCR_RESOLUTION_MODE"] == "base"
    assert env["OCR_REDIS_KEY_PREFIX"].startswith(side_prefix)
    # Its events name the comparison group, not production's deployment.
    assert env["OCR_EVENT_SOURCE"] == f"ocr-stream/{side_prefix}.{settings.group_id}"
    # Every printed override is a real setting and parses.
    Settings.model_validate({k.removeprefix("OCR_").lower(): v for k, v in env.items()})

    side = settings.model_copy(update={"topic_requests": side_requests})
    records = await read_all(side, side_requests, 2)
    copied = {r.key: r for r in records}
    assert set(copied) == {"new-1", "new-2"}
    assert copied["new-1"].value == items[1][1]  # bytes copied unchanged
    assert copied["new-1"].headers["content-type"] == b"application/json"
    assert copied["new-1"].headers[TRACEPARENT] == PARENT  # headers are copied as they are

    # A consumer started with exactly those overrides (the engine apart: a test double)
    # works the copies and answers on the side topics, the main ones untouched.
    overrides = {
        name.removeprefix("OCR_").lower(): value for name, value in env.items()
        if name not in ("OCR_MODEL", "OCR_RESOLUTION_MODE")
    }
    side_consumer = settings.model_copy(update={**overrides, "metrics_port": 0})
    async with (
        running_app(side_consumer, ScriptedEngine()),
        TopicReader(side_consumer, side_consumer.topic_progress) as reader,
    ):
        await reader.wait_for(
            lambda r: all(r.final(side_consumer, t) for t in ("new-1", "new-2"))
        )
    assert {e.task_id for e in reader.progress(side_consumer)} == {"new-1", "new-2"}


async def test_side_by_side_refuses_a_bad_mode(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = await replay.run(["side-by-side", "--target-prefix", "x", "--target-resolution-mode",
                           "huge", *flags(settings)])
    assert rc == EXIT_USAGE and "not one of" in capsys.readouterr().err
