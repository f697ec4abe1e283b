"""What the lag reporter (consumer/lag.py) says about records past the last stable offset:
the pure watch of a stuck stable offset, and the gauges around a fake consumer."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition

from consumer.lag import LagReporter, StableOffsetWatch
from consumer.metrics import ConsumerMetrics

TP = TopicPartition("ocr.requests", 0)


def test_a_stable_offset_that_keeps_moving_is_never_stuck() -> None:
    # An exactly-once producer committing every 100 ms: always a little past the stable
    # offset, never for long.
    watch = StableOffsetWatch()
    assert [watch.observe(TP, stable, 3, now) for now, stable in
            [(0.0, 10), (5.0, 14), (10.0, 19), (15.0, 25)]] == [0.0, 0.0, 0.0, 0.0]


def test_a_transaction_left_open_shows_as_growing_seconds() -> None:
    watch = StableOffsetWatch()
    assert watch.observe(TP, 10, 1, 0.0) == 0.0
    assert watch.observe(TP, 10, 4, 5.0) == 5.0  # more records arrive behind it
    assert watch.observe(TP, 10, 9, 300.0) == 300.0
    assert watch.observe(TP, 19, 0, 305.0) == 0.0  # committed: nothing past it any more
    assert watch.observe(TP, 19, 2, 310.0) == 0.0  # a new transaction starts the count
    watch.forget(TP)
    assert watch.observe(TP, 19, 2, 400.0) == 0.0


@dataclass
class FakeConsumer:
    high: int = 12
    stable: int = 10
    paused_now: set[TopicPartition] = field(default_factory=set)

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_now)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.stable

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, self.stable)

    async def position(self, tp: TopicPartition) -> int:
        return self.stable


def _reporter(consumer: FakeConsumer, metrics: ConsumerMetrics, *, committed: bool) -> LagReporter:
    return LagReporter(consumer, metrics, assigned=lambda: {TP},  # type: ignore[arg-type]
                       resume_offset=lambda tp: None, read_committed=committed)


async def test_records_past_the_stable_offset_are_reported_only_when_waited_for() -> None:
    labels = {"topic": TP.topic, "partition": "0"}
    committed, metrics = FakeConsumer(), ConsumerMetrics()
    await _reporter(committed, metrics, committed=True).report()
    sample = metrics.registry.get_sample_value
    assert sample("ocr_consumer_unstable_records", labels) == 2
    assert sample("ocr_consumer_unstable_seconds", labels) == 0
    assert sample("ocr_consumer_lag", labels) == 0

    # read_uncommitted reads past open transactions: nothing waits, nothing reported.
    uncommitted_metrics = ConsumerMetrics()
    await _reporter(FakeConsumer(), uncommitted_metrics, committed=False).report()
    assert uncommitted_metrics.registry.get_sample_value(
        "ocr_consumer_unstable_records", labels) is None


async def test_a_paused_partition_is_not_reported_from_frozen_offsets() -> None:
    labels = {"topic": TP.topic, "partition": "0"}
    consumer, metrics = FakeConsumer(), ConsumerMetrics()
    reporter = _reporter(consumer, metrics, committed=True)
    await reporter.report()
    assert metrics.registry.get_sample_value("ocr_consumer_unstable_records", labels) == 2
    consumer.paused_now = {TP}
    await reporter.report()
    assert metrics.registry.get_sample_value("ocr_consumer_unstable_records", labels) is None
    assert metrics.registry.get_sample_value("ocr_consumer_unstable_seconds", labels) is None
