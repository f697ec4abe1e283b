"""Reading the requests topic so that no batch can stop it: the consumer's poll, with every
error from fetching or decoding a batch caught, classified (consumer/read_errors.py), logged
with its partition and offset, and counted.

What it guarantees:
- An UNREADABLE batch (corrupt, a codec we cannot read, a payload that does not decompress)
  costs the offsets it holds, never the partition: the reader finds the partition and the
  offset that fail and hands them to the loop as `Unreadable` (which dead-letters each one
  without its bytes, since aiokafka never hands them over, and commits past it), then seeks
  past it. A batch of n records is skipped in n steps, one fetch each: aiokafka raises with
  neither partition nor offset, and a fetch from any offset inside a batch returns the whole
  batch, so there is no shorter safe way past it.
- Nothing is lost on the way: aiokafka advances the position of every partition it drained
  in a `getmany()` that then raised, and drops those records. After such an error every
  assigned partition is sought back to the first offset the loop has not received
  (`next_offset`), or to its committed offset when it received none.
- A FATAL error raises `KafkaRefused` (the process exits 5); so does a requests topic that
  is missing (checked at start, and again whenever nothing is assigned).
- TRANSIENT errors are retried with a backoff of 0.1 s doubling to 5 s, counted and logged
  each time.

What it does not guarantee: a record inside an unreadable batch is gone for this consumer
group; its dead letter holds where it was (topic, partition, offset), not its bytes. The
offsets between the last record handed over and an unreadable batch may hold transaction
markers or an aborted transaction's records: each gets a dead letter of its own, since
aiokafka's error does not say where the failing batch starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, RecordTooLargeError

from consumer.log import get_logger
from consumer.metrics import ConsumerMetrics
from consumer.read_errors import (
    Identity,
    KafkaRefused,
    ReadError,
    ReadErrorKind,
    classify,
    topic_missing,
)

log = get_logger(__name__)

# After an unreadable batch, partitions are read one record at a time, each on its own,
# until no read error came for this long: that finds the partition and offset that fail.
ISOLATE_S = 2.0
# A partition stepping past an unreadable batch waits this long for each refetch.
STEP_WAIT_MS = 100
TRANSIENT_FIRST_S = 0.1
TRANSIENT_MAX_S = 5.0
# With nothing assigned, whether the topic still exists is asked at most this often.
TOPIC_CHECK_S = 10.0
# Read positions being reset (out of range) are waited for at most this long in all:
# the poll loop must get back to getmany() within its 200 ms.
POSITION_WAIT_S = 0.05


class Consumer(Protocol):
    """The part of AIOKafkaConsumer the reader uses."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]: ...

    def assignment(self) -> set[TopicPartition]: ...

    def paused(self) -> set[TopicPartition]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool: ...

    async def position(self, partition: TopicPartition) -> int: ...

    async def committed(self, partition: TopicPartition) -> int | None: ...

    async def topics(self) -> set[str]: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An offset whose record no read can return: skipped, to be dead-lettered bare."""

    partition: TopicPartition
    offset: int
    error: ReadError


@dataclass(slots=True)
class Batch:
    records: dict[TopicPartition, list[Any]] = field(default_factory=dict)
    unreadable: list[Unreadable] = field(default_factory=list)
    # From one poll that raised nothing, not a one-at-a-time read after an unreadable
    # batch: once its records are received, each partition's read position is past nothing
    # the loop lacks (see `read_positions`).
    clean: bool = False


class BatchReader:
    def __init__(
        self, consumer: Consumer, who: Identity, *,
        next_offset: Callable[[TopicPartition], int | None], metrics: ConsumerMetrics,
    ) -> None:
        """`next_offset(tp)`: the first offset of `tp` the loop has not received yet, or
        None when it received none since the partition was assigned."""
        self._consumer = consumer
        self._who = who
        self._next_offset = next_offset
        self._metrics = metrics
        self._isolate_until: float | None = None
        self._stepping: set[TopicPartition] = set()
        self._rewind_due = False
        self._transient_delay = TRANSIENT_FIRST_S
        self._topic_checked = 0.0
        self._slow_positions: set[TopicPartition] = set()

    async def ensure_topic(self, wait_s: float) -> None:
        """Raise KafkaRefused unless the requests topic exists within `wait_s` (it may be
        created by a job started beside the consumer)."""
        deadline = time.monotonic() + wait_s
        while self._who.topic not in await self._consumer.topics():
            if time.monotonic() >= deadline:
                self._refuse(topic_missing(self._who), None)
            await asyncio.sleep(1.0)
        self._topic_checked = time.monotonic()

    async def read(self, *, timeout_ms: int, max_records: int) -> Batch:
        """The next records (at most `max_records`), and offsets found unreadable."""
        if self._rewind_due:
            await self._rewind()
            if self._rewind_due:
                # Not every partition is back where the loop left it: a read now would hand
                # over later offsets and the records aiokafka dropped would be committed past.
                return Batch()
        if not self._consumer.assignment():
            await self._check_topic()
        if self._isolate_until is not None:
            return await self._isolate(max_records)
        try:
            records = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except Exception as exc:  # every error of a poll is classified, none escapes as is
            return await self._failed(exc)
        self._transient_delay = TRANSIENT_FIRST_S
        return Batch(records, clean=True)

    async def read_positions(self) -> dict[TopicPartition, int]:
        """The read position of each assigned partition that fetched since its assignment.

        Only meaningful right after the records of a `clean` batch were received, before
        the next `read`: a position then lies past no record the loop lacks, only past
        offsets with no record for us (transaction markers, aborted transactions, offsets
        compacted away), which aiokafka steps over without handing anything out.

        A valid position is returned without a suspension, so in the normal case nothing
        else runs between the poll and these reads. Only a position being reset (out of
        range) waits; a rebalance meanwhile is caught by the caller's epoch check, and a
        partition no longer assigned is skipped."""
        positions: dict[TopicPartition, int] = {}
        # A partition whose position had to be waited for goes last: one being reset
        # must not keep the others from reporting theirs, call after call.
        ordered = sorted(self._consumer.assignment(),
                         key=lambda tp: (tp in self._slow_positions, tp.partition))
        asking: TopicPartition | None = None
        try:
            async with asyncio.timeout(POSITION_WAIT_S):
                for partition in ordered:
                    if partition not in self._consumer.assignment():
                        continue  # reassigned while an earlier position was awaited
                    asking = partition
                    try:
                        if self._consumer.highwater(partition) is None:
                            continue  # no fetch yet: its position may still be looked up
                        positions[partition] = await self._consumer.position(partition)
                    except (IllegalStateError, AssertionError):
                        continue  # aiokafka's word for "not assigned (any more)"
                    except Exception as exc:
                        # position() raises what the coordinator queued for the consumer:
                        # the same errors a poll would, judged the same way.
                        error = classify(exc, self._who)
                        self._metrics.read_error(error.kind.value)
                        if error.kind is ReadErrorKind.FATAL:
                            self._refuse(error, exc)
                        log.warning("kafka_position_retry", error=error.message)
                        break
                    self._slow_positions.discard(partition)
        except TimeoutError:  # those found so far are valid
            if asking is not None:
                self._slow_positions.add(asking)
        return positions

    # -- errors --------------------------------------------------------------------------

    async def _failed(self, exc: Exception) -> Batch:
        error = classify(exc, self._who)
        self._metrics.read_error(error.kind.value)
        if error.kind is ReadErrorKind.FATAL:
            self._refuse(error, exc)
        if error.kind is ReadErrorKind.TRANSIENT:
            delay = self._transient_delay
            self._transient_delay = min(delay * 2, TRANSIENT_MAX_S)
            log.warning("kafka_read_retry", error=error.message, retry_in=delay)
            await asyncio.sleep(delay)
            return Batch()
        too_large = _too_large_at(exc)
        if too_large is not None:
            # aiokafka names the place and has already moved past it (never with a broker
            # that speaks fetch v3 or later, which returns oversized batches whole).
            partition, offset = too_large
            return Batch(unreadable=[self._skipped(partition, offset, error)])
        log.warning(
            "kafka_batch_unreadable", cause=error.cause, error=error.message,
            action="reading each partition on its own to find the offset",
        )
        self._isolate_until = time.monotonic() + ISOLATE_S
        await self._rewind()
        return Batch()

    def _refuse(self, error: ReadError, exc: BaseException | None) -> None:
        log.error(
            "kafka_refused", cause=error.cause, message=error.message,
            error=repr(exc) if exc is not None else None,
        )
        raise KafkaRefused(error) from exc

    def _skipped(self, partition: TopicPartition, offset: int, error: ReadError) -> Unreadable:
        self._metrics.record_skipped("unreadable_batch")
        log.error(
            "request_unreadable", topic=partition.topic, partition=partition.partition,
            offset=offset, cause=error.cause, error=error.message,
        )
        return Unreadable(partition, offset, error)

    # -- finding the offset that fails ---------------------------------------------------

    async def _isolate(self, max_records: int) -> Batch:
        """One partition at a time, one record at a time: an error now names its place."""
        assert self._isolate_until is not None
        if time.monotonic() > self._isolate_until:
            log.info("kafka_read_errors_over", stepped=len(self._stepping))
            self._isolate_until = None
            self._stepping.clear()
            return Batch()
        batch = Batch()
        room = max_records
        paused = self._consumer.paused()
        readable = sorted(self._consumer.assignment() - paused, key=lambda tp: tp.partition)
        for partition in readable:
            wait_ms = STEP_WAIT_MS if partition in self._stepping else 0
            try:
                while room > 0:
                    got = await self._consumer.getmany(
                        partition, timeout_ms=wait_ms, max_records=1
                    )
                    records = got.get(partition, [])
                    if not records:
                        break
                    self._stepping.discard(partition)  # past the unreadable batch
                    batch.records.setdefault(partition, []).extend(records)
                    room -= len(records)
                    wait_ms = 0
            except Exception as exc:
                error = classify(exc, self._who)
                self._metrics.read_error(error.kind.value)
                if error.kind is ReadErrorKind.FATAL:
                    self._refuse(error, exc)
                if error.kind is ReadErrorKind.TRANSIENT:
                    log.warning("kafka_read_retry", error=error.message)
                    return batch
                skipped = await self._step_past(partition, exc, error)
                if skipped is not None:
                    batch.unreadable.append(skipped)
                return batch
        if not batch.records:
            await asyncio.sleep(STEP_WAIT_MS / 1000)
        return batch

    async def _step_past(
        self, partition: TopicPartition, exc: Exception, error: ReadError
    ) -> Unreadable | None:
        """The offset that failed, skipped; None when the partition was revoked meanwhile
        (its next owner meets the batch and skips it the same way)."""
        too_large = _too_large_at(exc)
        if too_large is not None:
            return self._skipped(*too_large, error)
        # Read one at a time, the partition's position is the first offset not handed
        # over: the unreadable batch starts there.
        try:
            offset = await self._consumer.position(partition)
            self._consumer.seek(partition, offset + 1)
        except IllegalStateError:
            log.info("kafka_step_past_revoked", partition=partition.partition)
            return None
        self._stepping.add(partition)
        self._isolate_until = time.monotonic() + ISOLATE_S
        return self._skipped(partition, offset, error)

    async def _rewind(self) -> None:
        """Every assigned partition back to the first offset the loop has not received; on
        any failure (a coordinator away) `_rewind_due` stays set and `read` tries again
        before reading anything. Offsets the loop knows are sought first, without awaiting:
        one partition's failure must not leave the others where aiokafka put them."""
        self._rewind_due = True
        failed: list[str] = []
        unknown: list[TopicPartition] = []
        for partition in self._consumer.assignment():
            offset = self._next_offset(partition)
            if offset is None:
                unknown.append(partition)
                continue
            try:
                self._consumer.seek(partition, offset)
            except Exception as exc:
                failed.append(repr(exc))
        for partition in unknown:
            try:
                committed = await self._consumer.committed(partition)
                if committed is None:
                    await self._consumer.seek_to_beginning(partition)
                else:
                    self._consumer.seek(partition, committed)
            except Exception as exc:
                failed.append(repr(exc))
        if failed:
            log.warning("kafka_rewind_retry", errors=failed[:3], failed=len(failed))
            await asyncio.sleep(TRANSIENT_FIRST_S)
            return
        self._rewind_due = False

    async def _check_topic(self) -> None:
        if time.monotonic() - self._topic_checked < TOPIC_CHECK_S:
            return
        self._topic_checked = time.monotonic()
        try:
            topics = await self._consumer.topics()
        except Exception as exc:  # the broker away: asked again later
            log.warning("kafka_metadata_retry", error=repr(exc))
            return
        if self._who.topic not in topics:
            self._refuse(topic_missing(self._who), None)


def _too_large_at(exc: BaseException) -> tuple[TopicPartition, int] | None:
    """aiokafka's RecordTooLargeError carries (message, partition, offset, fetch size)."""
    if isinstance(exc, RecordTooLargeError) and len(exc.args) >= 3:
        partition, offset = exc.args[1], exc.args[2]
        if isinstance(partition, TopicPartition) and isinstance(offset, int):
            return partition, offset
    return None
