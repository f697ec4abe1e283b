"""Consumer lag per assigned partition, measured against the log end offset.

aiokafka's `highwater()` comes from fetch responses, so it stops moving for a paused
partition: under backpressure, exactly when lag grows, the gauge would freeze. The log end
is therefore asked for (`end_offsets()`, one ListOffsets round trip for all assigned
partitions) in a task of its own, on a fixed interval: the poll loop never waits on it, and
a slow or failing broker only delays the next figure, logged, never raised.

Lag is measured from the offset the group would resume at: the oldest unfinished record of
the partition (what the next commit will say), or the consumer's fetch position on a
partition it has not received a record from yet. With read_committed (the default) the log
end is the last stable offset, so what lies beyond it is reported apart: records held back
by transactions still open (`ocr_consumer_unstable_records`) and how long the last stable
offset has not moved while records wait (`ocr_consumer_unstable_seconds`). Those come from
the latest fetch response, so they are not reported for a paused partition (frozen there).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from consumer.log import get_logger
from consumer.metrics import ConsumerMetrics

log = get_logger(__name__)

LAG_INTERVAL_S = 5.0
# ListOffsets answers in milliseconds on a healthy cluster; a broker that takes longer is
# asked again on the next round instead of leaving a query hanging for aiokafka's 40 s.
LAG_QUERY_TIMEOUT_S = 10.0


@dataclass
class _Stable:
    offset: int
    since: float


class StableOffsetWatch:
    """How long each partition's last stable offset has not moved while records wait past
    it. A healthy transactional producer commits every few hundred milliseconds, so its
    partition always has a little past the stable offset but the offset keeps moving: 0
    here. A transaction left open holds it still: the seconds grow."""

    def __init__(self) -> None:
        self._stable: dict[TopicPartition, _Stable] = {}

    def observe(self, partition: TopicPartition, stable: int, beyond: int, now: float) -> float:
        if beyond <= 0:
            self._stable.pop(partition, None)  # nothing waits: the next wait counts from 0
            return 0.0
        seen = self._stable.get(partition)
        if seen is None or seen.offset != stable:
            self._stable[partition] = _Stable(stable, now)
            return 0.0
        return now - seen.since

    def forget(self, partition: TopicPartition) -> None:
        self._stable.pop(partition, None)


class LagReporter:
    """Sets `ocr_consumer_lag` for every assigned partition every `interval_s` seconds.

    `assigned()` names the partitions this consumer owns now and `resume_offset(tp)` the
    offset its group would resume at (None when nothing was received on it yet); both are
    read from the poll loop's own state, so they need no lock.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        metrics: ConsumerMetrics,
        *,
        assigned: Callable[[], set[TopicPartition]],
        resume_offset: Callable[[TopicPartition], int | None],
        read_committed: bool = False,
        interval_s: float = LAG_INTERVAL_S,
        timeout_s: float = LAG_QUERY_TIMEOUT_S,
    ) -> None:
        """`read_committed`: the consumer's isolation level; only then are records past the
        last stable offset waited for, and reported."""
        self._consumer = consumer
        self._metrics = metrics
        self._assigned = assigned
        self._resume_offset = resume_offset
        self._interval_s = interval_s
        self._read_committed = read_committed
        self._stable = StableOffsetWatch()
        self._timeout_s = timeout_s
        self._wake = asyncio.Event()
        self._failing = False

    def poke(self) -> None:
        """Report soon (a new assignment), instead of up to one interval later."""
        self._wake.set()

    async def run(self) -> None:
        """Report until cancelled."""
        while True:
            try:
                await self.report()
            except Exception:  # a bug here must cost the lag figure, not the consumer
                log.exception("consumer_lag_report_crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()

    async def report(self) -> None:
        """One round: query the log ends, set the gauge; errors are logged, not raised."""
        partitions = sorted(self._assigned())
        if not partitions:
            return
        if self._read_committed:
            self._report_unstable(set(partitions))
        try:
            async with asyncio.timeout(self._timeout_s):
                ends: dict[TopicPartition, int] = await self._consumer.end_offsets(partitions)
                resume = {tp: await self._resume_at(tp) for tp in partitions}
        except (KafkaError, TimeoutError, OSError) as exc:
            if not self._failing:
                log.warning("consumer_lag_query_failed", error=repr(exc))
            self._failing = True
            return
        if self._failing:
            log.info("consumer_lag_query_recovered")
            self._failing = False
        # Partitions revoked while the query ran belong to another consumer now; their series
        # were removed on the revoke and must not come back.
        owned = self._assigned()
        for tp, end in ends.items():
            offset = resume.get(tp)
            if tp in owned and offset is not None:
                self._metrics.set_lag(tp.topic, tp.partition, end - offset)

    def _report_unstable(self, owned: set[TopicPartition]) -> None:
        """Records past the last stable offset: with read_committed, the log end of the lag
        is that offset, so a transaction left open holds its partition while the lag says
        0. Both offsets come with each fetch response: a paused partition's are frozen, so
        it is not reported until it reads again."""
        assigned, paused = self._consumer.assignment(), self._consumer.paused()
        now = time.monotonic()
        for tp in owned:
            high = stable = None
            if tp in assigned and tp not in paused:
                with contextlib.suppress(AssertionError):  # aiokafka's "not assigned"
                    high = self._consumer.highwater(tp)
                    stable = self._consumer.last_stable_offset(tp)
            if high is None or stable is None or stable < 0:
                self._stable.forget(tp)
                self._metrics.forget_unstable(tp.topic, tp.partition)
                continue
            seconds = self._stable.observe(tp, stable, high - stable, now)
            self._metrics.set_unstable(tp.topic, tp.partition, high - stable, seconds)

    async def _resume_at(self, tp: TopicPartition) -> int | None:
        offset = self._resume_offset(tp)
        if offset is not None:
            return offset
        try:
            # Nothing received here yet: the fetch position is the committed offset (or the
            # reset one). It waits only while the consumer is still looking that up.
            position: int = await self._consumer.position(tp)
        except IllegalStateError:
            return None  # revoked meanwhile
        return position
