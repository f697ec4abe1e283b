"""The Kafka side of the consumer: poll, admit, pause/resume, rebalance, commit.

Invariants:
- `getmany()` is called at least every ~200 ms whatever the load, so the group never
  evicts us for not polling; backpressure is `pause()`, never "stop polling".
- Pause state is re-applied on every iteration because a rebalance forgets it.
- A partition's committed offset never passes an unfinished task (OffsetTracker).
- On an eager rebalance, tasks keep running until the new assignment is known: partitions
  we get back keep their tasks (records re-delivered from the committed offset are
  recognised and skipped); tasks of partitions that moved away are cancelled and stay
  resumable from the pages Redis recorded.
- One task id runs at most once at a time in this process. A copy of a running request
  (same content) follows it: its offset, on whatever partition it came, is finished when
  the run finishes; if the run is interrupted instead, the first copy on a partition still
  ours runs in its place. A `force` copy replaces the run once it has stopped.
- Every received offset ends finished or stays pending until its partition is revoked: work
  that raised (a publish that kept failing, a bug) is retried with backoff, never dropped,
  so a partition's commits cannot stall behind a record nobody will finish.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from consumer.config import Settings
from consumer.kafka_clients import client_kwargs
from consumer.lag import LagReporter
from consumer.log import get_logger
from consumer.metrics import ConsumerMetrics
from consumer.offsets import OffsetTracker
from consumer.records import RequestRecord
from consumer.scheduler import PageScheduler
from consumer.tasks import TaskInterrupted, TaskRunner
from schemas.decode import RequestDecodeError, decode_request
from schemas.request import OcrRequest

log = get_logger(__name__)

POLL_TIMEOUT_MS = 200
REVOKE_WAIT_S = 10.0
# Work that raised is tried again after 1, 2, 4 ... seconds, at most a minute apart.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


@dataclass(slots=True)
class _Work:
    """One received record's work (a task, a dead letter, a conflict report)."""

    partition: TopicPartition
    offset: int
    task_id: str | None
    start: Callable[[], Awaitable[None]]  # does the work from the beginning, every time
    fingerprint: str = ""  # the request's content, to tell copies from conflicts
    # Copies of the request received while this runs, finished when it finishes.
    followers: list[_Work] = field(default_factory=list)
    failures: int = 0  # times the work raised; the retry delay grows with it


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._loop.partitions_assigned(set(assigned))


class ConsumerLoop:
    def __init__(
        self,
        *,
        settings: Settings,
        runner: TaskRunner,
        scheduler: PageScheduler,
        metrics: ConsumerMetrics,
        consumer_id: str,
    ) -> None:
        self._settings = settings
        self._runner = runner
        self._scheduler = scheduler
        self._metrics = metrics
        self._consumer_id = consumer_id
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(settings),
            group_id=settings.group_id,
            group_instance_id=settings.group_instance_id,
            client_id=f"ocr-stream-{consumer_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(settings.session_timeout_ms // 10, 1000),
            max_poll_interval_ms=settings.max_poll_interval_ms,
            # Requests are small claim checks; a generous record limit avoids refetches.
            max_partition_fetch_bytes=max(settings.max_request_bytes * 2, 1024 * 1024),
            fetch_max_bytes=max(settings.max_request_bytes * 4, 50 * 1024 * 1024),
        )
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._work: dict[asyncio.Task[None], _Work] = {}
        self._by_task_id: dict[str, asyncio.Task[None]] = {}
        self._orphans: set[TopicPartition] = set()
        self._assigned: set[TopicPartition] = set()
        self._stopping = asyncio.Event()
        self._joined = asyncio.Event()
        self._last_commit = 0.0
        self._lag = LagReporter(
            self._consumer, metrics, assigned=lambda: set(self._assigned),
            resume_offset=self._resume_offset,
        )

    # -- life cycle ----------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return self._joined.is_set()

    @property
    def inflight_tasks(self) -> int:
        return len(self._work)

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe(
            topics=[self._settings.topic_requests], listener=_RebalanceListener(self)
        )

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Poll until stop(); then drain within the shutdown grace and commit."""
        lag = asyncio.create_task(self._lag.run())
        try:
            while not self._stopping.is_set():
                self._apply_backpressure()
                batch = await self._consumer.getmany(
                    timeout_ms=POLL_TIMEOUT_MS, max_records=self._room()
                )
                for partition, records in batch.items():
                    for record in records:
                        self._admit(partition, record)
                await self._maybe_commit()
                self._metrics.set_inflight(self._scheduler.in_use, len(self._work))
        finally:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
            await self._drain()

    async def _drain(self) -> None:
        grace = self._settings.shutdown_grace_s
        log.info("consumer_draining", tasks=len(self._work), grace_s=grace)
        self._consumer.pause(*self._consumer.assignment())
        # Pages in the engine finish and are recorded; no new page starts.
        self._scheduler.close()
        if self._work:
            await asyncio.wait(list(self._work), timeout=grace)
        await self._cancel([task for task in self._work if not task.done()])
        await self._commit(force=True)
        await self._consumer.stop()
        log.info("consumer_stopped")

    # -- admission -----------------------------------------------------------------------

    def _room(self) -> int:
        return max(self._settings.max_inflight_tasks - len(self._work), 1)

    def _apply_backpressure(self) -> None:
        assignment = self._consumer.assignment()
        full = len(self._work) >= self._settings.max_inflight_tasks
        paused = self._consumer.paused()
        if full:
            to_pause = [tp for tp in assignment if tp not in paused]
            if to_pause:
                self._consumer.pause(*to_pause)
        elif paused:
            self._consumer.resume(*paused)
        self._metrics.set_paused(len(self._consumer.paused()))

    def _admit(self, partition: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        if partition not in self._assigned:
            return  # fetched just before a revoke; the new owner reads it again
        if not self._tracker.received(partition, record.offset):
            return  # re-delivered after a rebalance: already running or finished here
        request_record = RequestRecord(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=record.key,
            value=record.value,
        )
        try:
            request = decode_request(record.value, max_bytes=self._settings.max_request_bytes)
        except RequestDecodeError as exc:
            self._spawn(_Work(
                partition, record.offset, None,
                functools.partial(self._dead_letter, request_record, exc),
            ))
            return
        fingerprint = request.content_fingerprint()
        work = _Work(
            partition, record.offset, request.task_id,
            functools.partial(self._run_task, request, request_record), fingerprint,
        )
        running = self._by_task_id.get(request.task_id)
        if running is None:
            self._spawn(work)
            return
        leader = self._work[running]
        if request.force:
            self._replace(running, work)
        elif leader.fingerprint != fingerprint:
            self._spawn(_Work(
                partition, record.offset, None,
                functools.partial(self._runner.reject_conflict, request, request_record),
            ))
        else:
            leader.followers.append(work)

    def _spawn(self, work: _Work, *, after: asyncio.Task[None] | None = None) -> None:
        task = asyncio.create_task(self._start(work, after))
        self._work[task] = work
        if work.task_id is not None:
            self._by_task_id[work.task_id] = task
        task.add_done_callback(self._work_done)

    async def _start(self, work: _Work, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.wait([after])  # the replaced run must have released the task
        if work.failures:
            await asyncio.sleep(min(RETRY_FIRST_S * 2.0 ** (work.failures - 1), RETRY_MAX_S))
        await work.start()

    def _replace(self, running: asyncio.Task[None], work: _Work) -> None:
        """A forced request for a task running here: the run stops (it stays resumable)
        and the forced one starts from scratch once it has; the stopped run's offset and
        its followers finish with the new run."""
        replaced = self._work[running]
        work.followers = [replaced, *replaced.followers]
        replaced.followers = []
        running.cancel()
        self._spawn(work, after=running)

    def _work_done(self, task: asyncio.Task[None]) -> None:
        work = self._work.pop(task)
        if work.task_id is not None and self._by_task_id.get(work.task_id) is task:
            del self._by_task_id[work.task_id]
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or isinstance(error, TaskInterrupted):
            # Unfinished and resumable: offsets stay pending. Copies waiting on it, on
            # partitions still ours, would otherwise wait for nothing: the first one runs.
            self._hand_over(work.followers)
            return
        if error is not None:
            self._retry(work, error)
            return
        for finished in (work, *work.followers):
            self._tracker.done(finished.partition, finished.offset)

    def _hand_over(self, followers: list[_Work]) -> None:
        if self._stopping.is_set():
            return  # uncommitted, so read again after the restart
        waiting = [copy for copy in followers if copy.partition in self._assigned]
        if waiting:
            leader, *rest = waiting
            leader.followers = rest
            self._spawn(leader)

    def _retry(self, work: _Work, error: BaseException) -> None:
        work.failures += 1
        log.error(
            "work_failed", task_id=work.task_id, partition=work.partition.partition,
            offset=work.offset, failures=work.failures, error=repr(error),
        )
        if self._stopping.is_set() or work.partition not in self._assigned:
            # Its own offset stays uncommitted for the partition's next reader; copies
            # waiting on it elsewhere must not wait for a retry that will not come.
            self._hand_over(work.followers)
            return
        self._spawn(work)

    async def _run_task(self, request: OcrRequest, record: RequestRecord) -> None:
        try:
            await self._runner.run(request, record)
        except TaskInterrupted:
            log.info("task_interrupted", task_id=request.task_id)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("task_crashed", task_id=request.task_id)
            await self._runner.fail_internal(request, record, exc)

    async def _dead_letter(self, record: RequestRecord, exc: RequestDecodeError) -> None:
        log.warning(
            "request_dead_lettered", partition=record.partition, offset=record.offset,
            code=exc.code.value, message=exc.message,
        )
        await self._runner.dead_letter(
            record, code=exc.code, message=exc.message, task_id=exc.task_id
        )

    # -- rebalance -----------------------------------------------------------------------

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions_revoked", partitions=sorted(str(tp) for tp in revoked))
        self._joined.clear()
        await self._commit(force=True)
        self._assigned -= revoked
        self._orphans |= revoked

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=sorted(str(tp) for tp in assigned))
        lost = self._orphans - assigned
        self._orphans.clear()
        self._assigned = set(assigned)
        for partition in lost:
            await self._cancel(
                [task for task, work in self._work.items() if work.partition == partition]
            )
            self._tracker.revoke(partition)
            self._metrics.forget_partition(partition.topic, partition.partition)
        for partition in assigned:
            self._tracker.assign(partition)
        self._apply_backpressure()
        self._joined.set()
        self._lag.poke()

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=REVOKE_WAIT_S)

    # -- commits and lag -----------------------------------------------------------------

    async def _maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self._settings.commit_interval_s:
            await self._commit(force=False)

    async def _commit(self, *, force: bool) -> None:
        self._last_commit = time.monotonic()
        positions = {
            tp: position
            for tp, position in self._tracker.to_commit().items()
            if tp in self._assigned or force
        }
        if not positions:
            return
        try:
            await self._consumer.commit(
                {tp: OffsetAndMetadata(position, "") for tp, position in positions.items()}
            )
        except (CommitFailedError, KafkaError) as exc:
            # Nothing is lost: the same positions are retried on the next commit.
            log.warning("commit_failed", error=repr(exc))
            return
        self._tracker.committed(positions)

    def _resume_offset(self, tp: TopicPartition) -> int | None:
        offsets = self._tracker.get(tp)
        return offsets.position() if offsets is not None else None
