"""The BatchReader (consumer/batches.py) around an in-memory consumer that fails as aiokafka
does: a `getmany()` that meets an unreadable batch raises with neither partition nor offset,
after advancing the positions of the partitions it drained before (whose records are lost
with the exception). The batches on the real broker are in
tests/integration/test_poison_batches.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors

import consumer.batches
from consumer.batches import BatchReader
from consumer.metrics import ConsumerMetrics
from consumer.read_errors import Identity, KafkaRefused

TOPIC = "ocr.requests"
WHO = Identity(TOPIC, "group", None)


def tp(partition: int) -> TopicPartition:
    return TopicPartition(TOPIC, partition)


@dataclass
class Record:
    partition: int
    offset: int


@dataclass
class FailingConsumer:
    ends: dict[TopicPartition, int]  # records 0 .. end-1 per partition
    bad: dict[TopicPartition, set[int]] = field(default_factory=dict)
    # Offsets holding no record for a reader (transaction markers): stepped over silently.
    markers: dict[TopicPartition, set[int]] = field(default_factory=dict)
    error: Exception = field(default_factory=lambda: RuntimeError("lz4: checksum invalid"))
    fail_next: list[Exception] = field(default_factory=list)  # raised by the next getmany
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    commits: dict[TopicPartition, int] = field(default_factory=dict)
    topic_names: set[str] = field(default_factory=lambda: {TOPIC})
    fetched: set[TopicPartition] = field(default_factory=set)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        if self.fail_next:
            raise self.fail_next.pop(0)
        room = max_records or 10**6
        drained: dict[TopicPartition, list[Any]] = {}
        for partition in sorted(partitions or self.ends, key=lambda p: p.partition):
            self.fetched.add(partition)
            position = self.positions.setdefault(partition, 0)
            records = []
            while position < self.ends[partition] and room:
                if position in self.bad.get(partition, set()):
                    raise self.error  # what was drained is lost, positions stay advanced
                if position not in self.markers.get(partition, set()):
                    records.append(Record(partition.partition, position))
                    room -= 1
                position += 1
            self.positions[partition] = position
            if records:
                drained[partition] = records
        return drained

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    def paused(self) -> set[TopicPartition]:
        return set()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool:
        for partition in partitions:
            self.positions[partition] = 0
        return True

    async def position(self, partition: TopicPartition) -> int:
        return self.positions.setdefault(partition, 0)

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.commits.get(partition)

    async def topics(self) -> set[str]:
        return set(self.topic_names)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.ends[partition] if partition in self.fetched else None

    def records(self, partition: TopicPartition) -> list[int]:
        """The offsets that hold a record (unreadable ones included)."""
        return [o for o in range(self.ends[partition])
                if o not in self.markers.get(partition, set())]


@dataclass
class Loop:
    """What the loop does with reads: records and skipped offsets, in order."""

    consumer: FailingConsumer
    received: dict[TopicPartition, list[int]] = field(default_factory=dict)
    skipped: list[tuple[int, int, str]] = field(default_factory=list)
    metrics: ConsumerMetrics = field(default_factory=ConsumerMetrics)
    read_to: dict[TopicPartition, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reader = BatchReader(
            self.consumer, WHO, next_offset=self.next_offset, metrics=self.metrics
        )

    def next_offset(self, partition: TopicPartition) -> int | None:
        seen = self.received.get(partition)
        return seen[-1] + 1 if seen else None

    async def read_all(self, reads: int = 60, max_records: int = 10) -> None:
        for _ in range(reads):
            batch = await self.reader.read(timeout_ms=0, max_records=max_records)
            for partition, records in batch.records.items():
                for record in records:
                    if record.offset >= (self.next_offset(partition) or 0):
                        self.received.setdefault(partition, []).append(record.offset)
            for unreadable in batch.unreadable:
                self.skipped.append((unreadable.partition.partition, unreadable.offset,
                                     unreadable.error.cause))
                self.received.setdefault(unreadable.partition, []).append(unreadable.offset)
            if batch.clean:
                self.check_read_positions(await self.reader.read_positions())

    def check_read_positions(self, positions: dict[TopicPartition, int]) -> None:
        """What the commit may use: a position past a record never received loses it."""
        for partition, position in positions.items():
            missing = [o for o in self.consumer.records(partition)
                       if o < position and o not in self.received.get(partition, [])]
            assert not missing, (partition, position, missing)
            self.read_to[partition] = position


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer.batches, "STEP_WAIT_MS", 0)
    monkeypatch.setattr(consumer.batches, "TRANSIENT_FIRST_S", 0.0)


async def test_an_unreadable_batch_is_skipped_and_nothing_around_it_lost() -> None:
    # Partition 0 is drained first in each poll, then partition 1 raises: without the
    # rewind, partition 0's records of that poll would be gone.
    failing = FailingConsumer({tp(0): 5, tp(1): 6}, bad={tp(1): {2, 3, 4}})
    loop = Loop(failing)
    await loop.read_all()
    assert loop.received == {tp(0): [0, 1, 2, 3, 4], tp(1): [0, 1, 2, 3, 4, 5]}
    assert loop.skipped == [(1, 2, "undecodable_batch"), (1, 3, "undecodable_batch"),
                            (1, 4, "undecodable_batch")]
    sample = loop.metrics.registry.get_sample_value
    assert sample("ocr_records_skipped_total", {"reason": "unreadable_batch"}) == 3
    assert (sample("ocr_kafka_read_errors_total", {"kind": "unreadable"}) or 0) >= 3


async def test_a_partition_that_received_nothing_rewinds_to_its_commit() -> None:
    failing = FailingConsumer({tp(0): 4, tp(1): 1}, bad={tp(1): {0}},
                              commits={tp(0): 2})
    failing.positions[tp(0)] = 2
    loop = Loop(failing)
    await loop.read_all()
    assert loop.received == {tp(0): [2, 3], tp(1): [0]}
    assert loop.skipped == [(1, 0, "undecodable_batch")]


@dataclass
class CoordinatorAway(FailingConsumer):
    """Its committed() fails `away` times first, as with the group coordinator away, while
    `produced` more records arrive on each partition."""

    away: int = 0
    produced: int = 0

    async def committed(self, partition: TopicPartition) -> int | None:
        if self.away:
            self.away -= 1
            for grown in self.ends:
                self.ends[grown] += self.produced
            self.produced = 0
            raise RuntimeError("coordinator not available")
        return await super().committed(partition)


async def test_nothing_is_read_until_the_rewind_has_succeeded() -> None:
    """Review of issue 16: a failed rewind was retried only at the next read, which then
    read on: partition 0's records drained by the failing poll were never handed over."""
    failing = CoordinatorAway({tp(0): 5, tp(1): 2}, bad={tp(1): {0}}, away=2, produced=3)
    loop = Loop(failing)
    await loop.read_all()
    assert loop.received == {tp(0): [0, 1, 2, 3, 4, 5, 6, 7], tp(1): [0, 1, 2, 3, 4]}
    assert loop.skipped == [(1, 0, "undecodable_batch")]


async def test_corrupt_records_and_unknown_codecs_are_skipped_alike() -> None:
    for error in (kafka_errors.CorruptRecordException("Invalid CRC"),
                  kafka_errors.UnsupportedCodecError("Libraries for zstd not found")):
        loop = Loop(FailingConsumer({tp(0): 3}, bad={tp(0): {1}}, error=error))
        await loop.read_all()
        assert loop.received == {tp(0): [0, 1, 2]}
        assert [skip[:2] for skip in loop.skipped] == [(0, 1)]


async def test_a_record_too_large_is_skipped_where_aiokafka_says() -> None:
    failing = FailingConsumer({tp(0): 3})
    failing.fail_next = [kafka_errors.RecordTooLargeError("too large", tp(0), 1, 1024)]
    failing.positions[tp(0)] = 0
    loop = Loop(failing)
    batch = await loop.reader.read(timeout_ms=0, max_records=10)
    assert [(u.partition, u.offset, u.error.cause) for u in batch.unreadable] == [
        (tp(0), 1, "record_too_large")
    ]


async def test_transient_errors_are_retried() -> None:
    failing = FailingConsumer({tp(0): 2})
    failing.fail_next = [kafka_errors.KafkaError("heartbeat"), kafka_errors.RequestTimedOutError()]
    loop = Loop(failing)
    await loop.read_all(reads=4)
    assert loop.received == {tp(0): [0, 1]} and loop.skipped == []
    sample = loop.metrics.registry.get_sample_value
    assert sample("ocr_kafka_read_errors_total", {"kind": "transient"}) == 2


@pytest.mark.parametrize("error", [
    kafka_errors.TopicAuthorizationFailedError(TOPIC),
    kafka_errors.GroupAuthorizationFailedError("group"),
    kafka_errors.KafkaError("FencedInstanceIdError()"),
])
async def test_errors_no_retry_fixes_raise_kafka_refused(error: Exception) -> None:
    failing = FailingConsumer({tp(0): 1})
    failing.fail_next = [error]
    with pytest.raises(KafkaRefused):
        await Loop(failing).reader.read(timeout_ms=0, max_records=10)


async def test_a_missing_topic_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer.batches, "TOPIC_CHECK_S", 0.0)
    failing = FailingConsumer({}, topic_names=set())
    reader = Loop(failing).reader
    with pytest.raises(KafkaRefused, match="does not exist"):
        await reader.ensure_topic(0.0)
    with pytest.raises(KafkaRefused, match="does not exist"):
        await reader.read(timeout_ms=0, max_records=1)


async def test_read_positions_step_over_transaction_markers() -> None:
    # Records 0-1, a commit marker at 2, records 3-4, a marker at 5 that ends the log.
    failing = FailingConsumer({tp(0): 6, tp(1): 2}, markers={tp(0): {2, 5}})
    loop = Loop(failing)
    await loop.read_all(reads=5)
    assert loop.received == {tp(0): [0, 1, 3, 4], tp(1): [0, 1]}
    assert loop.read_to == {tp(0): 6, tp(1): 2}


async def test_read_positions_never_pass_what_a_failed_poll_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every read is checked (Loop.check_read_positions): partition 0 is drained by the
    # polls that then raise on partition 1, and only clean polls may report positions.
    monkeypatch.setattr(consumer.batches, "ISOLATE_S", 0.05)
    failing = FailingConsumer({tp(0): 9, tp(1): 6}, bad={tp(1): {2, 3}},
                              markers={tp(0): {4, 8}, tp(1): {5}})
    loop = Loop(failing)
    await loop.read_all(max_records=3)
    await asyncio.sleep(0.06)  # the one-at-a-time reads are over: polls are clean again
    await loop.read_all(reads=3, max_records=3)
    assert loop.received == {tp(0): [0, 1, 2, 3, 5, 6, 7], tp(1): [0, 1, 2, 3, 4]}
    assert loop.read_to == {tp(0): 9, tp(1): 6}


async def test_a_partition_never_fetched_reports_no_position() -> None:
    failing = FailingConsumer({tp(0): 2, tp(1): 2})
    loop = Loop(failing)
    failing.fetched.add(tp(0))
    assert await loop.reader.read_positions() == {tp(0): 0}


@dataclass
class RevokedWhileStepping(FailingConsumer):
    """Its partition is revoked between the failing read and the look-up of its position."""

    async def position(self, partition: TopicPartition) -> int:
        raise kafka_errors.IllegalStateError(f"Partition {partition} is not assigned")


async def test_a_partition_revoked_while_stepping_past_is_left_to_its_next_owner() -> None:
    # Before: IllegalStateError escaped read() and ended the consumer (exit 1).
    failing = RevokedWhileStepping({tp(0): 3}, bad={tp(0): {1}})
    loop = Loop(failing)
    await loop.read_all(reads=10)
    assert loop.received == {tp(0): [0]}
    assert loop.skipped == []


@dataclass
class ShiftingConsumer(FailingConsumer):
    """aiokafka's behaviour around read positions: `highwater()` asserts the partition is
    assigned; the position of partition 0 must be waited for (being reset) and, while it
    is, the group takes partition 1 away; or `position()` raises what the coordinator
    queued; or it never becomes valid."""

    taken: set[TopicPartition] = field(default_factory=set)
    queued: Exception | None = None
    hang: bool = False

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends) - self.taken

    def highwater(self, partition: TopicPartition) -> int | None:
        assert partition in self.assignment(), "Partition is not assigned"
        return super().highwater(partition)

    async def position(self, partition: TopicPartition) -> int:
        if self.queued is not None:
            raise self.queued
        if partition == tp(0):
            if self.hang:
                await asyncio.sleep(3600)
            await asyncio.sleep(0)
            self.taken.add(tp(1))
        return await super().position(partition)


async def test_read_positions_survive_a_rebalance_while_one_is_awaited() -> None:
    # Review: highwater() of a partition taken away meanwhile raised AssertionError out of
    # the loop (exit 1).
    shifting = ShiftingConsumer({tp(0): 2, tp(1): 2, tp(2): 2})
    loop = Loop(shifting)
    await loop.reader.read(timeout_ms=0, max_records=10)
    positions = await loop.reader.read_positions()
    assert tp(1) not in positions and positions[tp(0)] == 2


async def test_read_positions_judge_what_the_coordinator_queued() -> None:
    shifting = ShiftingConsumer({tp(0): 1})
    loop = Loop(shifting)
    await loop.reader.read(timeout_ms=0, max_records=10)
    shifting.queued = kafka_errors.KafkaConnectionError("coordinator gone")
    assert await loop.reader.read_positions() == {}  # transient: asked again next time
    shifting.queued = kafka_errors.GroupAuthorizationFailedError()
    with pytest.raises(KafkaRefused):
        await loop.reader.read_positions()


async def test_a_position_never_valid_costs_at_most_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer.batches, "POSITION_WAIT_S", 0.05)
    shifting = ShiftingConsumer({tp(0): 1, tp(1): 1}, hang=True)
    loop = Loop(shifting)
    await loop.reader.read(timeout_ms=0, max_records=10)
    positions = await asyncio.wait_for(loop.reader.read_positions(), 1.0)
    assert tp(0) not in positions


async def test_a_marker_batch_without_its_record_is_skipped_not_retried_for_ever() -> None:
    # aiokafka raises a plain KafkaError for it, after draining partition 0: taken as
    # transient, partition 0's drained records were lost and partition 1 stuck for good.
    error = kafka_errors.KafkaError("Control batch did not contain any records")
    failing = FailingConsumer({tp(0): 4, tp(1): 3}, bad={tp(1): {1}}, error=error)
    loop = Loop(failing)
    await loop.read_all()
    assert loop.received == {tp(0): [0, 1, 2, 3], tp(1): [0, 1, 2]}
    assert loop.skipped == [(1, 1, "malformed_control_batch")]


async def test_a_position_being_reset_does_not_starve_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Review: with one wait for the whole set, partition 0 (first in order, never valid)
    # kept every later partition from reporting, call after call.
    monkeypatch.setattr(consumer.batches, "POSITION_WAIT_S", 0.05)
    shifting = ShiftingConsumer({tp(0): 1, tp(1): 1, tp(2): 1}, hang=True)
    loop = Loop(shifting)
    await loop.reader.read(timeout_ms=0, max_records=10)
    assert await loop.reader.read_positions() == {}  # partition 0 first, and it hangs
    assert await loop.reader.read_positions() == {tp(1): 1, tp(2): 1}
