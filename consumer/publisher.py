"""Publishing results, progress, timing and dead letters, with keys and CloudEvents headers.

Every record about a task lands on the partition of its task id: page results are keyed
`task_id/page` (so a compacted results topic keeps the latest result of each page), and the
partitioner hashes only the part before the '/', so they sit beside the task's progress and
timing records and stay in order with them.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
)
from aiokafka.partitioner import murmur2
from pydantic import BaseModel

from consumer.config import Settings
from consumer.kafka_clients import producer_kwargs
from consumer.log import get_logger
from consumer.records import RequestRecord
from schemas.cloudevents import (
    CE_TYPE_DLQ,
    CE_TYPE_PROGRESS,
    CE_TYPE_RESULT,
    CE_TYPE_TIMING,
    Headers,
    ce_headers,
)
from schemas.common import MAX_TASK_ID_LENGTH, ErrorCode
from schemas.dlq import (
    DLQ_HEADER_CODE,
    DLQ_HEADER_MESSAGE,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_TOPIC,
    DlqEnvelope,
)
from schemas.progress import ProgressEvent
from schemas.request import MAX_REQUEST_RECORD_BYTES
from schemas.result import PageResult
from schemas.timing import TimingEvent

log = get_logger(__name__)


def task_partition(key: bytes, partition_count: int) -> int:
    """Kafka's default murmur2 partitioning, applied to the task id part of the key."""
    task_id = key.split(b"/", 1)[0]
    hashed: int = murmur2(task_id)
    return (hashed & 0x7FFFFFFF) % partition_count


class TaskPartitioner:
    """aiokafka partitioner hook: same partition for `task` and `task/page` keys."""

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return (available or all_partitions)[0]
        ordered = sorted(all_partitions)
        return ordered[task_partition(key, len(ordered))]


def result_key(task_id: str, page: int) -> str:
    return f"{task_id}/{page}"


def event_run_tag(force: bool, partition: int, offset: int) -> str:
    """The part of a task's event ids that tells runs apart.

    Event ids are deterministic, so that a record re-delivered after a crash republishes
    the same ids and id-based de-duplication downstream works. Replays raise `attempt`,
    which is in the id. A forced recomputation keeps the attempt but is new work: its ids
    name the request record that asked for it.
    """
    return f"/forced@{partition}.{offset}" if force else ""


_MAX_DLQ_MESSAGE = 4096


def dead_letter_envelope(
    *, code: ErrorCode, message: str, topic: str, partition: int, offset: int,
    timestamp_ms: int | None, key: bytes | None, value: bytes | None, task_id: str | None,
    consumer_id: str,
) -> DlqEnvelope:
    """The envelope of a refused record, always within the contract's bounds: one that
    failed validation would leave its offset unfinished and stall the partition for good."""
    cut = [
        f"{what} cut to its first {MAX_REQUEST_RECORD_BYTES} of {len(raw)} bytes"
        for what, raw in (("key", key), ("value", value))
        if raw is not None and len(raw) > MAX_REQUEST_RECORD_BYTES
    ]
    note = f" [dead letter: {'; '.join(cut)}]" if cut else ""
    room = _MAX_DLQ_MESSAGE - len(note)
    # The note must survive: the message gives way before it.
    shown = message if len(message) <= room else message[: room - 3] + "..."
    if key is not None:
        key = key[:MAX_REQUEST_RECORD_BYTES]
    return DlqEnvelope(
        error_code=code,
        error_message=shown + note,
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        original_timestamp=(
            datetime.fromtimestamp(timestamp_ms / 1000, UTC) if timestamp_ms else None
        ),
        original_key_base64=base64.b64encode(key).decode() if key is not None else None,
        original_value_base64=base64.b64encode(
            (value or b"")[:MAX_REQUEST_RECORD_BYTES]
        ).decode(),
        task_id=task_id if task_id is None or len(task_id) <= MAX_TASK_ID_LENGTH else None,
        consumer_id=consumer_id[:128],
        failed_at=datetime.now(UTC),
    )


class EventPublisher:
    """One idempotent producer for all output topics; every send waits for the broker ack."""

    def __init__(self, settings: Settings, source: str) -> None:
        self._settings = settings
        self._source = source
        self._producer = AIOKafkaProducer(
            **producer_kwargs(settings),
            client_id=f"ocr-stream-{source}",
            acks="all",
            enable_idempotence=settings.kafka_idempotence,
            linger_ms=5,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=30_000,
            partitioner=TaskPartitioner(),
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def _send(
        self, topic: str, key: str, event: BaseModel, event_id: str, ce_type: str,
        subject: str, extra_headers: Headers | None = None,
    ) -> None:
        headers = ce_headers(
            event_id=event_id, event_type=ce_type, source=self._source, subject=subject
        )
        if extra_headers:
            headers.extend(extra_headers)
        value = event.model_dump_json().encode()
        delay = 0.5
        while True:
            try:
                await self._producer.send_and_wait(
                    topic, value=value, key=key.encode(), headers=headers
                )
                return
            except (KafkaTimeoutError, KafkaConnectionError, NotLeaderForPartitionError,
                    RequestTimedOutError) as exc:
                # The broker is away (restart, leader move): keep the page's work and retry;
                # keys make a duplicate harmless, a dropped record would be loss.
                log.warning("publish_retry", topic=topic, error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # `run_tag` (see event_run_tag) keeps the event ids of a forced recomputation apart from
    # the first run's: consumers that drop CloudEvents by id would otherwise drop its results.

    async def result(self, result: PageResult, *, run_tag: str = "") -> None:
        await self._send(
            self._settings.topic_results,
            result_key(result.task_id, result.page),
            result,
            f"{result.task_id}/{result.page}/{result.attempt}{run_tag}",
            CE_TYPE_RESULT,
            result.task_id,
        )

    async def progress(self, event: ProgressEvent, *, run_tag: str = "") -> None:
        await self._send(
            self._settings.topic_progress,
            event.task_id,
            event,
            f"{event.task_id}/{event.attempt}/{event.status.value}/{event.pages_done}"
            f"{'/replay' if event.replayed else ''}{run_tag}",
            CE_TYPE_PROGRESS,
            event.task_id,
        )

    async def timing(self, event: TimingEvent, *, run_tag: str = "") -> None:
        suffix = f"page/{event.page}" if event.page is not None else "task"
        await self._send(
            self._settings.topic_timing,
            event.task_id,
            event,
            f"{event.task_id}/{event.attempt}/{suffix}{run_tag}",
            CE_TYPE_TIMING,
            event.task_id,
        )

    async def dead_letter(
        self, record: RequestRecord, *, code: ErrorCode, message: str, task_id: str | None
    ) -> None:
        """The request record, refused: its envelope on the dead-letter topic."""
        topic, partition, offset, key = record.topic, record.partition, record.offset, record.key
        envelope = dead_letter_envelope(
            code=code, message=message, topic=topic, partition=partition, offset=offset,
            timestamp_ms=record.timestamp_ms, key=key, value=record.value, task_id=task_id,
            consumer_id=self._source,
        )
        task_id = envelope.task_id
        dlq_key = task_id or (key.decode("utf-8", "replace") if key else f"{partition}:{offset}")
        await self._send(
            self._settings.topic_dlq,
            dlq_key,
            envelope,
            f"{topic}/{partition}/{offset}",
            CE_TYPE_DLQ,
            task_id or dlq_key,
            extra_headers=[
                (DLQ_HEADER_CODE, code.value.encode()),
                (DLQ_HEADER_MESSAGE, message[:1024].encode("utf-8", "replace")),
                (DLQ_HEADER_TOPIC, topic.encode()),
                (DLQ_HEADER_PARTITION, str(partition).encode()),
                (DLQ_HEADER_OFFSET, str(offset).encode()),
            ],
        )
