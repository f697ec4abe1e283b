"""What the publisher puts on every record besides the event: the deployment's `ce_source`,
the consumer as the `ce_ocrconsumer` extension, the request's trace context, and a count
of every record it had to send again. The producer is an in-memory double here; the same
headers on the real broker are checked in tests/integration/test_trace_context.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    LeaderNotAvailableError,
    OutOfOrderSequenceNumber,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from consumer import tracing
from consumer.config import Settings
from consumer.metrics import ConsumerMetrics
from consumer.publisher import EventPublisher
from consumer.records import RequestRecord
from schemas.cloudevents import parse_ce_headers
from schemas.common import ErrorCode
from schemas.progress import ProgressEvent, TaskStatus

PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class FakeProducer:
    """send_and_wait as aiokafka's, recording each record; the first `failures` sends fail
    as a broker that is away fails them."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []
        self.failures = failures or []

    async def send_and_wait(self, topic: str, *, value: bytes, key: bytes,
                            headers: list[tuple[str, bytes]]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        assert len({name for name, _ in headers}) == len(headers), "a header given twice"
        self.sent.append((topic, key, dict(headers)))


async def publisher(
    producer: FakeProducer, *, consumer_id: str = "host-7", metrics: ConsumerMetrics | None = None,
    **settings: Any,
) -> EventPublisher:
    made = EventPublisher(
        Settings(**{"group_id": "ocr-prod", **settings}), consumer_id=consumer_id,
        on_retry=metrics.publish_retry if metrics is not None else None,
    )
    await made.stop()  # its real producer, never started, is not needed
    made._producer = producer
    made.retry_delay_s = 0.0
    return made


def progress(task_id: str = "t-1") -> ProgressEvent:
    return ProgressEvent(
        task_id=task_id, status=TaskStatus.STARTED, pages_done=0, consumer_id="host-7",
        emitted_at=datetime.now(UTC),
    )


def record(headers: tuple[tuple[str, bytes], ...] = ()) -> RequestRecord:
    return RequestRecord(topic="ocr.requests", partition=2, offset=41, timestamp_ms=None,
                         key=b"t-1", value=b"{not json", headers=headers)


async def test_every_consumer_of_a_deployment_says_the_same_source() -> None:
    one, other = FakeProducer(), FakeProducer()
    await (await publisher(one, consumer_id="host-1")).progress(progress())
    await (await publisher(other, consumer_id="host-2-9876")).progress(progress())
    [(_, _, first)], [(_, _, second)] = one.sent, other.sent
    assert first["ce_source"] == second["ce_source"] == b"ocr-stream/ocr-prod"
    assert (first["ce_ocrconsumer"], second["ce_ocrconsumer"]) == (b"host-1", b"host-2-9876")
    assert first["ce_id"] == second["ce_id"]  # so (source, id) is one event, whoever sent it
    assert parse_ce_headers(list(first.items())).source == "ocr-stream/ocr-prod"


async def test_the_source_setting_wins_over_the_group() -> None:
    producer = FakeProducer()
    await (await publisher(producer, event_source="urn:acme:ocr:eu")).progress(progress())
    assert producer.sent[0][2]["ce_source"] == b"urn:acme:ocr:eu"


async def test_outputs_carry_the_trace_of_the_work_they_answer() -> None:
    producer = FakeProducer()
    sink = await publisher(producer)
    await sink.progress(progress("untraced"))  # outside any work: no trace

    async def work() -> None:
        tracing.follow(record((("traceparent", PARENT), ("tracestate", b"k=v"),
                                ("x-other", b"y"))))
        await sink.progress(progress("traced"))

    await asyncio.create_task(work())
    await sink.progress(progress("after"))  # the work's context did not leak out
    by_task = {key.decode(): headers for _, key, headers in producer.sent}
    assert "traceparent" not in by_task["untraced"] and "traceparent" not in by_task["after"]
    assert by_task["traced"]["traceparent"] == PARENT
    assert by_task["traced"]["tracestate"] == b"k=v"
    assert "x-other" not in by_task["traced"]


async def test_a_dead_letter_carries_the_trace_of_the_record_it_refuses() -> None:
    producer = FakeProducer()
    await (await publisher(producer)).dead_letter(
        record((("traceparent", PARENT),)), code=ErrorCode.REQUEST_NOT_JSON,
        message="not JSON", task_id=None,
    )
    [(topic, _, headers)] = producer.sent
    assert topic == "ocr.requests.dlq"
    assert headers["traceparent"] == PARENT and headers["ce_ocrconsumer"] == b"host-7"
    assert headers["ocr_error_code"] == b"REQUEST_NOT_JSON"


async def test_records_sent_again_are_counted_by_topic() -> None:
    metrics = ConsumerMetrics()
    producer = FakeProducer([KafkaConnectionError("away"), RequestTimedOutError()])
    await (await publisher(producer, metrics=metrics)).progress(progress())
    assert len(producer.sent) == 1
    assert metrics.registry.get_sample_value(
        "ocr_publish_retries_total", {"topic": "ocr.progress"}
    ) == 2


async def test_a_topic_missing_while_the_broker_restarts_is_retried() -> None:
    """make chaos, kafka scenario: UnknownTopicOrPartition (retriable in Kafka) while the
    broker came back ended the task INTERNAL; a refusal for good still raises."""
    producer = FakeProducer([UnknownTopicOrPartitionError(), LeaderNotAvailableError()])
    await (await publisher(producer)).progress(progress())
    assert len(producer.sent) == 1
    refusing = FakeProducer([TopicAuthorizationFailedError()])
    with pytest.raises(TopicAuthorizationFailedError):
        await (await publisher(refusing)).progress(progress())


class StartingProducer(FakeProducer):
    """A replacement producer whose start fails as a broker that is away fails it."""

    def __init__(self, start_error: Exception | None) -> None:
        super().__init__()
        self.start_error = start_error
        self.started = False

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self) -> None:
        pass


async def test_a_replacement_producer_is_put_in_place_only_once_started() -> None:
    """Review of issue 16: a replacement whose start() failed was put in place anyway, and
    every later send on it hung. Now the start is retried, counted, until one starts."""
    metrics = ConsumerMetrics()
    made = await publisher(FakeProducer([OutOfOrderSequenceNumber()]), metrics=metrics)
    replacements = [
        StartingProducer(KafkaConnectionError("Unable to bootstrap from 127.0.0.1:9092")),
        StartingProducer(KafkaConnectionError("Unable to bootstrap from 127.0.0.1:9092")),
        StartingProducer(None),
    ]
    made._new_producer = lambda: replacements.pop(0)  # type: ignore[assignment,return-value]
    await made.progress(progress())
    assert not replacements
    assert made._producer.started and len(made._producer.sent) == 1  # type: ignore[attr-defined]
    assert metrics.registry.get_sample_value(
        "ocr_publish_retries_total", {"topic": "ocr.progress"}
    ) == 2


async def test_the_asyncapi_document_lists_every_header_the_publisher_sends() -> None:
    from schemas import export
    from schemas.result import (
        EngineIdentity,
        FinishReason,
        PageImageInfo,
        PageResult,
        PageStatus,
    )
    from schemas.timing import StageDurations, TimingEvent, TimingKind

    producer = FakeProducer()
    sink = await publisher(producer)
    now = datetime.now(UTC)
    engine = EngineIdentity(name="scripted", model="m", version="1")

    async def work() -> None:
        tracing.follow(record((("traceparent", PARENT), ("tracestate", b"k=v"))))
        await sink.result(PageResult(
            task_id="t-1", page=1, page_count=1, status=PageStatus.OK, engine=engine,
            finish_reason=FinishReason.STOP, image=PageImageInfo(width_px=1, height_px=1, dpi=72),
            produced_at=now,
        ))
        await sink.progress(progress())
        await sink.timing(TimingEvent(
            task_id="t-1", kind=TimingKind.TASK, queued_at=now, started_at=now,
            finished_at=now, stages=StageDurations(), engine=engine, consumer_id="host-7",
        ))
        await sink.dead_letter(record((("traceparent", PARENT), ("tracestate", b"k=v"))),
                               code=ErrorCode.REQUEST_NOT_JSON, message="x", task_id=None)

    await asyncio.create_task(work())
    messages = export.asyncapi_document()["components"]["messages"]
    by_topic = {"ocr.results": "PageResult", "ocr.progress": "Progress",
                "ocr.timing": "Timing", "ocr.requests.dlq": "Dlq"}
    assert sorted(topic for topic, _, _ in producer.sent) == sorted(by_topic)
    for topic, _, headers in producer.sent:
        documented = messages[by_topic[topic]]["headers"]
        assert set(headers) <= set(documented["properties"]), topic
        assert set(documented["required"]) <= set(headers), topic
