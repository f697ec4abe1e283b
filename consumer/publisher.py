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
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from pydantic import BaseModel

from consumer import tracing
from consumer.config import Settings
from consumer.errors import RecordTooLarge
from consumer.log import get_logger
from consumer.records import RequestRecord, kafka_time
from consumer.settings.kafka import client_kwargs, producer_kwargs
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
from schemas.topics import TopicNames, topic_specs

log = get_logger(__name__)


_MAX_DLQ_MESSAGE = 4096
MAX_REQUEST_SIZE = 4 * 1024 * 1024  # the producer's max_request_size: our largest record
# A broker's default max.message.bytes, for a topic whose own setting cannot be read.
BROKER_DEFAULT_RECORD_BYTES = 1_048_588


def contract_record_limits(settings: Settings) -> dict[str, int]:
    """The largest record each output topic takes as `ocr-topics create` makes it
    (schemas/topics.py): what the publisher assumes until the broker says otherwise."""
    names = TopicNames(
        requests=settings.topic_requests, results=settings.topic_results,
        progress=settings.topic_progress, timing=settings.topic_timing, dlq=settings.topic_dlq,
    )
    return {
        spec.name: int(spec.configs.get("max.message.bytes", BROKER_DEFAULT_RECORD_BYTES))
        for spec in topic_specs(names, partitions=1, replication=1)
    }


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
    retry_max_s = 10.0

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
        self._producer = self._new_producer()
        self._replacing = asyncio.Lock()
        # The largest record each topic takes (max.message.bytes). A record the broker
        # refuses as too large leaves aiokafka's idempotent producer with a gap in its
        # sequence numbers (every later send fails OutOfOrderSequenceNumber), so records are
        # measured against these before they are sent.
        self._limits = contract_record_limits(settings)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **producer_kwargs(self._settings),
            client_id=f"ocr-stream-{self._consumer_id}",
            acks="all",
            enable_idempotence=self._settings.kafka_idempotence,
            linger_ms=5,
            max_request_size=MAX_REQUEST_SIZE,
            request_timeout_ms=30_000,
            partitioner=TaskPartitioner(),
        )

    async def start(self) -> None:
        await self._producer.start()
        await self._read_limits()

    async def stop(self) -> None:
        await self._producer.stop()

    async def _read_limits(self) -> None:
        """Each output topic's max.message.bytes as the broker has it."""
        admin = AIOKafkaAdminClient(**client_kwargs(self._settings))
        try:
            await admin.start()
            responses = await admin.describe_configs([
                ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
                for topic in self._limits
            ])
            for response in responses:
                for error_code, _, _, name, configs, *_ in response.resources:
                    for config, value, *_ in configs if error_code == 0 else ():
                        if config == "max.message.bytes" and value is not None:
                            self._limits[name] = int(value)
        except Exception as exc:  # no DescribeConfigs permission: the contract's figures
            log.warning("topic_limits_unread", error=repr(exc), assumed=self._limits)
        finally:
            await admin.close()

    async def _replace_producer(self, broken: AIOKafkaProducer, why: str, topic: str) -> None:
        """A new producer (new producer id, sequence numbers from 0) for a broken one."""
        async with self._replacing:
            if self._producer is not broken:
                return  # another send replaced it already
            log.error("producer_replaced", why=why)
            self._producer = await self._started_producer(topic)
        try:
            await broken.stop()
        except Exception as exc:  # its sender died with the error that broke it
            log.warning("producer_stop_failed", error=repr(exc))

    async def _back_off(
        self, event: str, counted_for: str, exc: Exception, delay: float, **fields: str
    ) -> float:
        """One retry logged (`event`) and counted against the topic `counted_for`, then a
        wait of `delay`; returns the next wait, doubled up to `retry_max_s`."""
        log.warning(event, error=repr(exc), retry_in=delay, **fields)
        if self._on_retry is not None:
            self._on_retry(counted_for)
        await asyncio.sleep(delay)
        return min(delay * 2, self.retry_max_s)

    async def _started_producer(self, topic: str) -> AIOKafkaProducer:
        """A new producer, started: while the broker cannot be reached (a restart), tried
        again with backoff, each try logged and counted. Only a started producer is put in
        place: sends on one that failed to start never return. Retries count against the
        `topic` whose send found the old one broken."""
        delay = self.retry_delay_s
        while True:
            fresh = self._new_producer()
            try:
                await fresh.start()
                return fresh
            except KafkaError as exc:
                with contextlib.suppress(Exception):
                    await fresh.stop()
                if not _retriable(exc):
                    raise
                delay = await self._back_off("producer_start_retry", topic, exc, delay)

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
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key.encode(), value, headers)
        limit = min(self._limits.get(topic, BROKER_DEFAULT_RECORD_BYTES), MAX_REQUEST_SIZE)
        if size > limit:
            raise RecordTooLarge(
                f"a record of {size} bytes is larger than {topic} takes ({limit} bytes: its "
                "max.message.bytes, at most the producer's 4 MiB)"
            )
        delay = self.retry_delay_s
        while True:
            producer = self._producer
            try:
                await producer.send_and_wait(
                    topic, value=value, key=key.encode(), headers=headers
                )
                return
            except MessageSizeTooLargeError as exc:
                # The producer measured it (a message in args), or the broker refused it
                # (its max.message.bytes shrank since start): then the producer's sequence
                # numbers have a gap and it is replaced. Resending cannot help either way.
                if not exc.args:
                    await self._replace_producer(producer, f"{topic} refused a record", topic)
                raise RecordTooLarge(
                    f"{topic} refused a record of {size} bytes as too large ({exc!r})"
                ) from exc
            except OutOfOrderSequenceNumber as exc:
                # Sent beside a record the broker refused: not this record's fault.
                await self._replace_producer(producer, repr(exc), topic)
            except KafkaError as exc:
                if _retriable(exc):
                    # The broker is away (restart, leader move, a topic's metadata not yet
                    # back after a restart): keep the page's work and retry; keys make a
                    # duplicate harmless, a dropped record would be loss. Unbounded like the
                    # outage, but every retry is logged and counted (publish_retries).
                    delay = await self._back_off("publish_retry", topic, exc, delay, topic=topic)
                elif producer is self._producer:
                    raise
                # Else caught in the replacement of a broken producer: sent again on the new
                # one.

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


def _retriable(exc: KafkaError) -> bool:
    """Errors Kafka itself calls retriable (UnknownTopicOrPartition while a broker
    restarts, NotLeader, RequestTimedOut, NotEnoughReplicas, a lost connection), and the
    producer's own timeout waiting for metadata or a reply."""
    return bool(exc.retriable) or isinstance(exc, KafkaTimeoutError)
