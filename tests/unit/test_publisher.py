"""What the publisher does besides sending the event: count every record it had to send
again. The producer is an in-memory double here."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.errors import KafkaConnectionError, RequestTimedOutError

from consumer.config import Settings
from consumer.metrics import ConsumerMetrics
from consumer.publisher import EventPublisher
from schemas.progress import ProgressEvent, TaskStatus


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
        self.sent.append((topic, key, dict(headers)))


async def publisher(producer: FakeProducer, *, metrics: ConsumerMetrics) -> EventPublisher:
    made = EventPublisher(Settings(group_id="ocr-prod"), "ocr-stream/host-7",
                          on_retry=metrics.publish_retry)
    await made.stop()  # its real producer, never started, is not needed
    made._producer = producer
    made.retry_delay_s = 0.0
    return made


def progress(task_id: str = "t-1") -> ProgressEvent:
    return ProgressEvent(
        task_id=task_id, status=TaskStatus.STARTED, pages_done=0, consumer_id="host-7",
        emitted_at=datetime.now(UTC),
    )


async def test_records_sent_again_are_counted_by_topic() -> None:
    metrics = ConsumerMetrics()
    producer = FakeProducer([KafkaConnectionError("away"), RequestTimedOutError()])
    await (await publisher(producer, metrics=metrics)).progress(progress())
    assert len(producer.sent) == 1
    assert metrics.registry.get_sample_value(
        "ocr_publish_retries_total", {"topic": "ocr.progress"}
    ) == 2
