"""Publishing results, progress, timing and dead letters, with keys and CloudEvents headers.

The wire rules (keys and the partitioner, event ids, header names) are the contract's, in
schemas/keys.py, schemas/event_ids.py and schemas/headers.py; this module sends by them.
Every record carries the deployment's `ce_source` (OCR_EVENT_SOURCE), this consumer's id as
the `ce_ocrconsumer` extension, and the trace context of the request it answers
(consumer/tracing.py; a dead letter's from the refused record itself).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
)
from pydantic import BaseModel

from consumer import tracing
from consumer.config import Settings
from consumer.log import get_logger
from consumer.records import RequestRecord, kafka_time
from consumer.settings.kafka import producer_kwargs
from schemas import headers as header_names
from schemas.cloudevents import (
    CE_EXTENSION_CONSUMER,
    CE_TYPE_DLQ,
    CE_TYPE_PROGRESS,
    CE_TYPE_RESULT,
    CE_TYPE_TIMING,
    Headers,
    ce_headers,
)
from schemas.common import MAX_TASK_ID_LENGTH, ErrorCode
from schemas.dlq import DlqEnvelope, dead_letter_key, fit_originals
from schemas.event_ids import (
    dead_letter_event_id,
    progress_event_id,
    result_event_id,
    timing_event_id,
)
from schemas.keys import TaskPartitioner, result_key
from schemas.progress import ProgressEvent
from schemas.result import PageResult
from schemas.timing import TimingEvent

log = get_logger(__name__)


_MAX_DLQ_MESSAGE = 4096


def dead_letter_envelope(
    *, code: ErrorCode, message: str, topic: str, partition: int, offset: int,
    timestamp_ms: int | None, key: bytes | None, value: bytes | None, task_id: str | None,
    consumer_id: str,
) -> DlqEnvelope:
    """The envelope of a refused record, always within the contract's bounds and, with its
    key and headers, within MAX_DLQ_RECORD_BYTES: one that failed validation, or that the
    producer or broker refused as too large, would never be published (issue 16, defect 2:
    a 1.9 MiB key and a 2 MiB value made a 6.5 MB record)."""
    originals = fit_originals(key, value)
    note = f" [dead letter: {'; '.join(originals.cut)}]" if originals.cut else ""
    room = _MAX_DLQ_MESSAGE - len(note)
    # The note must survive: the message gives way before it.
    shown = message if len(message) <= room else message[: room - 3] + "..."
    return DlqEnvelope(
        error_code=code,
        error_message=shown + note,
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        original_timestamp=kafka_time(timestamp_ms),
        original_key_base64=(
            base64.b64encode(originals.key).decode() if originals.key is not None else None
        ),
        original_value_base64=base64.b64encode(originals.value).decode(),
        task_id=task_id if task_id is None or len(task_id) <= MAX_TASK_ID_LENGTH else None,
        consumer_id=consumer_id[:128],
        failed_at=datetime.now(UTC),
    )


class EventPublisher:
    """One idempotent producer for all output topics; every send waits for the broker ack."""

    # The first wait before sending again to a broker that is away; it doubles up to 10 s.
    retry_delay_s = 0.5

    def __init__(
        self, settings: Settings, *, consumer_id: str,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        """`on_retry(topic)` is told of every record sent again (the consumer counts them:
        ocr_publish_retries_total)."""
        self._settings = settings
        self._source = settings.ce_source
        self._consumer_id = consumer_id
        self._on_retry = on_retry
        self._producer = AIOKafkaProducer(
            **producer_kwargs(settings),
            client_id=f"ocr-stream-{consumer_id}",
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
        subject: str, *, trace: Headers, extra_headers: Headers | None = None,
    ) -> None:
        headers = ce_headers(
            event_id=event_id, event_type=ce_type, source=self._source, subject=subject,
            extensions={CE_EXTENSION_CONSUMER: self._consumer_id},
        )
        if extra_headers:
            headers.extend(extra_headers)
        headers.extend(trace)
        value = event.model_dump_json().encode()
        delay = self.retry_delay_s
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
                if self._on_retry is not None:
                    self._on_retry(topic)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # `run_tag` (schemas.event_ids.event_run_tag) keeps the event ids of a forced
    # recomputation apart from the first run's: consumers that drop CloudEvents by id would
    # otherwise drop its results.

    async def result(self, result: PageResult, *, run_tag: str = "") -> None:
        await self._send(
            self._settings.topic_results,
            result_key(result.task_id, result.page),
            result,
            result_event_id(result, run_tag),
            CE_TYPE_RESULT,
            result.task_id,
            trace=tracing.current(),
        )

    async def progress(self, event: ProgressEvent, *, run_tag: str = "") -> None:
        await self._send(
            self._settings.topic_progress,
            event.task_id,
            event,
            progress_event_id(event, run_tag),
            CE_TYPE_PROGRESS,
            event.task_id,
            trace=tracing.current(),
        )

    async def timing(self, event: TimingEvent, *, run_tag: str = "") -> None:
        await self._send(
            self._settings.topic_timing,
            event.task_id,
            event,
            timing_event_id(event, run_tag),
            CE_TYPE_TIMING,
            event.task_id,
            trace=tracing.current(),
        )

    async def dead_letter(
        self, record: RequestRecord, *, code: ErrorCode, message: str, task_id: str | None
    ) -> None:
        """The request record, refused: its envelope on the dead-letter topic."""
        topic, partition, offset, key = record.topic, record.partition, record.offset, record.key
        envelope = dead_letter_envelope(
            code=code, message=message, topic=topic, partition=partition, offset=offset,
            timestamp_ms=record.timestamp_ms, key=key, value=record.value, task_id=task_id,
            consumer_id=self._consumer_id,
        )
        task_id = envelope.task_id
        dlq_key = dead_letter_key(task_id, key, partition, offset)
        await self._send(
            self._settings.topic_dlq,
            dlq_key,
            envelope,
            dead_letter_event_id(topic, partition, offset),
            CE_TYPE_DLQ,
            task_id or dlq_key,
            trace=record.trace_context,
            extra_headers=[
                (header_names.DLQ_ERROR_CODE, code.value.encode()),
                (header_names.DLQ_ERROR_MESSAGE, message[:1024].encode("utf-8", "replace")),
                (header_names.DLQ_ORIGINAL_TOPIC, topic.encode()),
                (header_names.DLQ_ORIGINAL_PARTITION, str(partition).encode()),
                (header_names.DLQ_ORIGINAL_OFFSET, str(offset).encode()),
            ],
        )
