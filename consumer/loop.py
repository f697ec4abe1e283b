"""The Kafka side of the consumer: poll, decode, pause/resume, rebalance, commit.

What becomes of a record's work is decided by the pure `WorkBook` (consumer/workbook.py,
where the bookkeeping's invariants are written down); this adapter carries its decisions
out with asyncio tasks and the Kafka consumer it is given.

Invariants of the adapter:
- `getmany()` is called at least every ~200 ms whatever the load, so the group never
  evicts us for not polling; backpressure is `pause()`, never "stop polling".
- No record or batch stops a partition: polls go through the BatchReader
  (consumer/batches.py), which turns every read error into a skipped, dead-lettered offset,
  a retry, or `KafkaRefused` (exit 5); a record that cannot be decoded, for whatever reason,
  is dead-lettered with its bytes.
- Pause state is re-applied on every iteration because a rebalance forgets it.
- Every event reaches the book in the order the loop saw it, and every decision is carried
  out before the next event: runs are started and cancelled only on the book's word.
- On an eager rebalance, runs keep going until the new assignment is known: partitions we
  get back keep their runs (records re-delivered from the committed offset are recognised
  and skipped); runs of partitions that moved away are cancelled and stay resumable from
  the pages Redis recorded.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from consumer import tracing
from consumer.batches import BatchReader, Unreadable
from consumer.config import Settings
from consumer.errors import RecordTooLarge
from consumer.lag import LagReporter
from consumer.log import get_logger
from consumer.metrics import ConsumerMetrics
from consumer.read_errors import Identity, KafkaRefused, ReadErrorKind, classify
from consumer.records import RequestRecord
from consumer.scheduler import PageScheduler
from consumer.settings.kafka import client_kwargs
from consumer.settings.service import IsolationLevel
from consumer.tasks import TaskInterrupted
from consumer.workbook import Decision, Reason, Request, Start, Work, WorkBook, WorkKind
from schemas.common import ErrorCode
from schemas.control import CancelRequest
from schemas.decode import RequestDecodeError, decode_record
from schemas.request import OcrRequest

log = get_logger(__name__)

POLL_TIMEOUT_MS = 200
REVOKE_WAIT_S = 10.0
# At start, how long the requests topic may take to appear (a job creating it beside us).
TOPIC_WAIT_S = 30.0


class TaskHandler(Protocol):
    """What the loop asks of the task runner (consumer.tasks.TaskRunner)."""

    async def run(self, request: OcrRequest, record: RequestRecord) -> object: ...

    async def fail_internal(
        self, request: OcrRequest, record: RequestRecord, exc: BaseException
    ) -> None: ...

    async def reject_conflict(self, request: OcrRequest, record: RequestRecord) -> None: ...

    async def cancel(self, cancel: CancelRequest, record: RequestRecord) -> None: ...

    async def dead_letter(
        self, record: RequestRecord, *, code: ErrorCode, message: str, task_id: str | None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Job:
    """The loop's payload of a work: the record and what decoding made of it."""

    record: RequestRecord
    request: OcrRequest | CancelRequest | RequestDecodeError


def request_consumer(settings: Settings, consumer_id: str) -> AIOKafkaConsumer:
    """The requests topic's consumer, as `ConsumerLoop` wants it injected."""
    return AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=settings.group_id,
        group_instance_id=settings.group_instance_id,
        client_id=f"ocr-stream-{consumer_id}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(settings.session_timeout_ms // 10, 1000),
        max_poll_interval_ms=settings.max_poll_interval_ms,
        isolation_level=settings.isolation_level.value,
        # Requests are small claim checks; a generous record limit avoids refetches.
        max_partition_fetch_bytes=max(settings.max_request_bytes * 2, 1024 * 1024),
        fetch_max_bytes=max(settings.max_request_bytes * 4, 50 * 1024 * 1024),
    )


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
        consumer: AIOKafkaConsumer,
        settings: Settings,
        runner: TaskHandler,
        scheduler: PageScheduler,
        metrics: ConsumerMetrics,
        book: WorkBook[TopicPartition, Job] | None = None,
        topic_wait_s: float | None = None,
    ) -> None:
        """`consumer` is not started yet (see `request_consumer`); `start()` starts it."""
        self._consumer = consumer
        self._settings = settings
        self._runner = runner
        self._scheduler = scheduler
        self._metrics = metrics
        self._book: WorkBook[TopicPartition, Job] = book if book is not None else WorkBook()
        self._runs: dict[int, asyncio.Task[None]] = {}  # the book's runs, as asyncio tasks
        self._stopping = asyncio.Event()
        self._broken: Exception | None = None  # bookkeeping failed: run() raises it
        self._joined = asyncio.Event()
        self._last_commit = 0.0
        self._topic_wait_s = TOPIC_WAIT_S if topic_wait_s is None else topic_wait_s
        self._identity = Identity(
            settings.topic_requests, settings.group_id, settings.group_instance_id
        )
        self._reader = BatchReader(
            consumer, self._identity, next_offset=self._book.next_offset, metrics=metrics,
        )
        self._lag = LagReporter(
            self._consumer, metrics, assigned=lambda: set(self._book.owned),
            resume_offset=self._book.resume_offset,
            read_committed=settings.isolation_level is IsolationLevel.READ_COMMITTED,
        )

    # -- life cycle ----------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return self._joined.is_set()

    @property
    def inflight_tasks(self) -> int:
        return self._book.runs

    async def start(self) -> None:
        """Raises KafkaRefused when the requests topic does not exist."""
        await self._consumer.start()
        self._consumer.subscribe(
            topics=[self._settings.topic_requests], listener=_RebalanceListener(self)
        )
        try:
            await self._reader.ensure_topic(self._topic_wait_s)
        except BaseException:
            await self._consumer.stop()
            raise

    def stop(self) -> None:
        self._stopping.set()
        self._book.stop()

    async def run(self) -> None:
        """Poll until stop(); then drain within the shutdown grace and commit. Raises
        KafkaRefused when Kafka refuses us for good (after the drain)."""
        lag = asyncio.create_task(self._lag.run())
        try:
            while not self._stopping.is_set():
                self._apply_backpressure()
                batch = await self._reader.read(
                    timeout_ms=POLL_TIMEOUT_MS, max_records=self._room()
                )
                for partition, records in batch.records.items():
                    for record in records:
                        self._admit(partition, record)
                for unreadable in batch.unreadable:
                    self._admit_unreadable(unreadable)
                await self._maybe_commit(read_positions=batch.clean)
                self._metrics.set_inflight(self._scheduler.in_use, self._book.runs)
            if self._broken is not None:
                raise self._broken
        finally:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
            await self._drain()

    async def _drain(self) -> None:
        grace = self._settings.shutdown_grace_s
        log.info("consumer_draining", tasks=self._book.runs, grace_s=grace)
        # Whether stop() was called or run() is leaving through an exception, the book
        # stops here: no run starts from now on (no retry, no hand-over to a copy).
        left = self._book.drain()
        self._consumer.pause(*self._consumer.assignment())
        # Pages in the engine finish and are recorded; no new page starts.
        self._scheduler.close()
        if self._runs:
            await asyncio.wait(list(self._runs.values()), timeout=grace)
        await self._cancel([self._runs[run] for run in left if run in self._runs])
        await self._commit(force=True)
        await self._consumer.stop()
        log.info("consumer_stopped")

    # -- admission -----------------------------------------------------------------------

    def _room(self) -> int:
        return max(self._settings.max_inflight_tasks - self._book.runs, 1)

    def _apply_backpressure(self) -> None:
        assignment = self._consumer.assignment()
        full = self._book.runs >= self._settings.max_inflight_tasks
        paused = self._consumer.paused()
        if full:
            to_pause = [tp for tp in assignment if tp not in paused]
            if to_pause:
                self._consumer.pause(*to_pause)
        elif paused:
            self._consumer.resume(*paused)
        self._metrics.set_paused(len(self._consumer.paused()))

    def _admit(self, partition: TopicPartition, record: Any) -> None:
        """One polled record (aiokafka's ConsumerRecord) to the book, decoded."""
        if not self._book.wants(partition, record.offset):
            return  # fetched just before a revoke, or re-delivered after a rebalance
        received = RequestRecord(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=record.key,
            value=record.value,
            headers=tuple((name, value or b"") for name, value in record.headers or ()),
        )
        try:
            request = decode_record(record.value, max_bytes=self._settings.max_request_bytes)
            about = (
                None if isinstance(request, CancelRequest)
                else Request(request.task_id, request.content_fingerprint(), request.force)
            )
        except RequestDecodeError as exc:
            self._dead_letter(partition, received, exc)
            return
        except Exception as exc:
            # A decoder failure nobody foresaw: the record is refused, never the consumer
            # (an exception here used to end the process on every redelivery).
            log.exception("request_decode_crashed", partition=record.partition,
                          offset=record.offset)
            self._dead_letter(partition, received, RequestDecodeError(
                ErrorCode.REQUEST_INVALID,
                f"request could not be read ({type(exc).__name__}: {str(exc)[:200]}); send "
                "a JSON object as the request schema describes",
            ))
            return
        if about is None:  # a control record (cancel)
            self._carry_out(
                self._book.receive_control(partition, record.offset, Job(received, request))
            )
            return
        self._carry_out(self._book.receive(partition, record.offset, about, Job(received, request)))

    def _admit_unreadable(self, unreadable: Unreadable) -> None:
        """An offset whose batch no read returns: dead-lettered without its bytes."""
        partition, offset, error = unreadable.partition, unreadable.offset, unreadable.error
        if not self._book.wants(partition, offset):
            return
        received = RequestRecord(
            topic=partition.topic, partition=partition.partition, offset=offset,
            timestamp_ms=None, key=None, value=None,
        )
        self._dead_letter(partition, received, RequestDecodeError(
            ErrorCode.REQUEST_UNREADABLE,
            f"the record at offset {offset} could not be read: its batch is {error.cause} "
            f"({error.message}); the consumer skipped it, so this dead letter holds no "
            "value: re-send the request, and check the producer's compression codec (the "
            "offsets before an unreadable batch may instead hold transaction markers or an "
            "aborted transaction's records, which need nothing)",
        ))

    def _dead_letter(
        self, partition: TopicPartition, received: RequestRecord, refusal: RequestDecodeError
    ) -> None:
        self._carry_out(
            self._book.receive(partition, received.offset, None, Job(received, refusal))
        )

    # -- carrying out the book's decisions -----------------------------------------------

    def _carry_out(self, decision: Decision[TopicPartition, Job]) -> None:
        for run in decision.cancel:
            self._runs[run].cancel()
        if decision.start is not None:
            self._launch(decision.start)

    def _launch(self, start: Start[TopicPartition, Job]) -> None:
        after = [self._runs[run] for run in start.after if run in self._runs]
        task = asyncio.create_task(self._perform(start, after))
        self._runs[start.run] = task
        task.add_done_callback(functools.partial(self._ended, start.run))

    async def _perform(
        self, start: Start[TopicPartition, Job], after: list[asyncio.Task[None]]
    ) -> None:
        if after:
            await asyncio.wait(after)  # runs of the same task must have released it
        if start.delay_s:
            await asyncio.sleep(start.delay_s)
        await self._do(start.work)

    def _ended(self, run: int, task: asyncio.Task[None]) -> None:
        try:
            self._account(run, task)
        except Exception as exc:
            # asyncio would log an exception of a done callback and go on, and the run's
            # offset would stay pending for good: a silent stall. End the loop instead (a
            # bug escaped: exit 1); the restart reads the unfinished work again.
            log.exception("loop_bookkeeping_failed", run=run)
            self._broken = exc
            self._stopping.set()

    def _account(self, run: int, task: asyncio.Task[None]) -> None:
        del self._runs[run]
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or isinstance(error, TaskInterrupted):
            self._carry_out(self._book.interrupted(run))
            return
        if error is None:
            self._carry_out(self._book.finished(run))
            return
        work = self._book.work(run)
        decision = self._book.raised(run)
        log.error(
            "work_failed", task_id=work.task_id, partition=work.partition.partition,
            offset=work.offset, kind=work.kind.value, failures=work.failures,
            error=repr(error), next=decision.reason.value,
        )
        self._metrics.work_failed(work.kind.value, decision.reason.value)
        if decision.reason is Reason.GAVE_UP:
            cancel = work.kind is WorkKind.CANCEL
            log.error(
                "cancel_given_up" if cancel else "dead_letter_given_up",
                partition=work.partition.partition, offset=work.offset,
                attempts=work.failures,
                message=(
                    "the cancel is not carried out (send it again once the error above is "
                    "fixed); its offset is committed" if cancel else
                    "the record is skipped without a dead letter; its offset is committed"
                ),
            )
        self._carry_out(decision)

    async def _do(self, work: Work[TopicPartition, Job]) -> None:
        """The work itself, from the beginning, every time it runs."""
        record, request = work.job.record, work.job.request
        tracing.follow(record)  # what is published for this work carries the request's trace
        try:
            if isinstance(request, RequestDecodeError):
                log.warning(
                    "request_dead_lettered", partition=record.partition, offset=record.offset,
                    code=request.code.value, message=request.message,
                )
                await self._runner.dead_letter(
                    record, code=request.code, message=request.message, task_id=request.task_id
                )
            elif isinstance(request, CancelRequest):
                await self._runner.cancel(request, record)
            elif work.kind is WorkKind.CONFLICT:
                await self._runner.reject_conflict(request, record)
            else:
                await self._run_task(request, record)
        except RecordTooLarge as exc:
            if work.kind not in (WorkKind.DEAD_LETTER, WorkKind.CONFLICT):
                raise
            # The DLQ refuses this dead letter for good (the envelope is bounded to what
            # the topic takes as ocr-topics makes it; this one is configured smaller):
            # sending it again cannot help, and its offset must not stall the partition.
            log.error(
                "dead_letter_dropped", partition=record.partition, offset=record.offset,
                error=exc.message,
                message="the record is skipped without a dead letter; its offset is committed",
            )
            self._metrics.record_skipped("dead_letter")

    async def _run_task(self, request: OcrRequest, record: RequestRecord) -> None:
        try:
            await self._runner.run(request, record)
        except TaskInterrupted:
            log.info("task_interrupted", task_id=request.task_id)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # Cancelled (revoke, shutdown) while a shielded page publish raised: the
                # TaskGroup raises that error instead. Interrupted, so resumable, not failed.
                log.warning("task_interrupted_with_error", task_id=request.task_id,
                            error=repr(exc))
                raise asyncio.CancelledError() from exc
            log.exception("task_crashed", task_id=request.task_id)
            await self._runner.fail_internal(request, record, exc)

    # -- rebalance -----------------------------------------------------------------------

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions_revoked", partitions=sorted(str(tp) for tp in revoked))
        self._joined.clear()
        await self._commit(force=True)
        self._book.revoked(revoked)

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=sorted(str(tp) for tp in assigned))
        change = self._book.assigned(assigned)
        for start in change.start:
            self._launch(start)  # work parked since the revoke, its partition still ours
        await self._cancel([self._runs[run] for run in change.cancel])
        for partition in change.lost:
            self._metrics.forget_partition(partition.topic, partition.partition)
        self._apply_backpressure()
        self._joined.set()
        self._lag.poke()

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=REVOKE_WAIT_S)

    # -- commits -------------------------------------------------------------------------

    async def _maybe_commit(self, *, read_positions: bool) -> None:
        """`read_positions`: every record of a clean poll was just received, so the read
        positions may move the commit past offsets that hold no record (a transaction's
        marker): the lag of a partition ending in one is 0, as with Kafka's own clients."""
        if time.monotonic() - self._last_commit >= self._settings.commit_interval_s:
            if read_positions:
                epoch = self._book.epoch
                self._book.read_to(await self._reader.read_positions(), epoch=epoch)
            await self._commit(force=False)

    async def _commit(self, *, force: bool) -> None:
        self._last_commit = time.monotonic()
        positions = self._book.to_commit(force=force)
        if not positions:
            return
        try:
            await self._consumer.commit(
                {tp: OffsetAndMetadata(position, "") for tp, position in positions.items()}
            )
        except (CommitFailedError, KafkaError) as exc:
            error = classify(exc, self._identity)
            if error.kind is ReadErrorKind.FATAL and self._broken is None:
                # Fenced (another live consumer took our static id) or refused for good:
                # the heartbeat may never see it while the two keep rejoining, the commit
                # does. run() drains, then raises it (exit 5).
                log.error("kafka_refused", cause=error.cause, message=error.message,
                          error=repr(exc))
                self._broken = KafkaRefused(error)
                self._stopping.set()
                return
            # Nothing is lost: the same positions are retried on the next commit.
            log.warning("commit_failed", error=repr(exc))
            return
        self._book.committed(positions)
