"""The consumer loop as an adapter: it polls, carries out the work book's decisions with
asyncio tasks, and commits, here around an in-memory consumer (the loop receives its
consumer by injection). What the decisions are is tested in tests/unit/test_workbook.py;
the end-to-end versions of these guarantees run on the real stack in
tests/integration/test_loop_guarantees.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.errors import CommitFailedError

import consumer.loop
from consumer import tracing
from consumer.config import Settings
from consumer.errors import RecordTooLarge
from consumer.loop import ConsumerLoop
from consumer.metrics import ConsumerMetrics
from consumer.read_errors import FencedInstanceIdError, KafkaRefused
from consumer.records import RequestRecord
from consumer.scheduler import PageScheduler
from consumer.tasks import TaskInterrupted
from consumer.workbook import WorkBook
from schemas.common import ErrorCode
from schemas.control import CancelRequest
from schemas.request import OcrRequest

TOPIC = "ocr.requests"


@dataclass
class _Record:  # what the loop reads of aiokafka's ConsumerRecord
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp: int = 0
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass
class FakeConsumer:
    """The part of AIOKafkaConsumer the loop uses, in memory: `feed()` queues records for
    the next poll, `commits` holds what commits said per partition."""

    assigned: set[TopicPartition] = field(default_factory=set)
    paused_now: set[TopicPartition] = field(default_factory=set)
    commits: dict[int, int] = field(default_factory=dict)
    polls: int = 0
    fail_next: list[Exception] = field(default_factory=list)  # raised by the next polls
    fail_commits: list[Exception] = field(default_factory=list)  # by the next commits
    # Read positions: past every record handed out, and past markers `step_over` fed.
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    _markers: dict[TopicPartition, int] = field(default_factory=dict)
    _queue: list[_Record] = field(default_factory=list)
    _fed: asyncio.Event = field(default_factory=asyncio.Event)

    def feed(
        self, partition: int, offset: int, value: bytes,
        headers: tuple[tuple[str, bytes | None], ...] = (),
    ) -> None:
        self._queue.append(_Record(TOPIC, partition, offset, value, headers=headers))
        self._fed.set()

    def step_over(self, partition: int, position: int) -> None:
        """Offsets up to `position` hold no record (a transaction's marker): the next poll
        moves the read position there and hands nothing out for them."""
        self._markers[TopicPartition(TOPIC, partition)] = position
        self._fed.set()

    async def start(self) -> None:
        return None

    def subscribe(self, *, topics: list[str], listener: Any) -> None:
        return None

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, Any]:
        self.polls += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        if not self._queue:
            try:
                await asyncio.wait_for(self._fed.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
        self._fed.clear()
        batch: dict[TopicPartition, list[_Record]] = {}
        ready = [
            r for r in self._queue if TopicPartition(TOPIC, r.partition) not in self.paused_now
        ]
        for record in ready[:max_records]:
            self._queue.remove(record)
            tp = TopicPartition(TOPIC, record.partition)
            batch.setdefault(tp, []).append(record)
            self.positions[tp] = max(self.positions.get(tp, 0), record.offset + 1)
        if not self._queue:
            for tp, position in self._markers.items():
                self.positions[tp] = max(self.positions.get(tp, 0), position)
            self._markers.clear()
        return batch

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.positions.get(tp)

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.positions.get(tp)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_now)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_now |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_now -= set(partitions)

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.fail_commits:
            raise self.fail_commits.pop(0)
        self.commits.update({tp.partition: meta.offset for tp, meta in offsets.items()})

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.commits.get(tp.partition)

    async def topics(self) -> set[str]:
        return {TOPIC}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    async def stop(self) -> None:
        return None


class StubRunner:
    """Plays the task runner: each task waits for its release, then ends as scripted."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int, int]] = []  # (task id, partition, offset)
        self.events: list[str] = []  # "start t@0", "cancelled t@0", in order
        self.release: dict[str, asyncio.Event] = {}
        self.outcomes: dict[str, list[str]] = {}  # per task: "ok", "raise", "interrupt"
        self.dead_letters: list[tuple[int, int, ErrorCode]] = []
        # The trace context each run saw: in the run, then in a task it started (a page).
        self.traces: dict[str, tuple[object, object]] = {}

    def let_go(self, task_id: str) -> None:
        self.release.setdefault(task_id, asyncio.Event()).set()

    async def run(self, request: OcrRequest, record: RequestRecord) -> None:
        self.started.append((request.task_id, record.partition, record.offset))
        name = f"{request.task_id}@{record.offset}"
        self.events.append(f"start {name}")
        page = asyncio.create_task(asyncio.sleep(0, tracing.current()))
        self.traces[request.task_id] = (tracing.current(), await page)
        try:
            await self.release.setdefault(request.task_id, asyncio.Event()).wait()
        except asyncio.CancelledError:
            self.events.append(f"cancelled {name}")
            await asyncio.sleep(0.02)  # a run takes a moment to wind down (lease release)
            self.events.append(f"ended {name}")
            if "error when cancelled" in self.outcomes.get(request.task_id, []):
                # A shielded page publish raised meanwhile: the TaskGroup raises it instead.
                raise RuntimeError("publish failed while cancelled") from None
            raise
        outcomes = self.outcomes.get(request.task_id, [])
        outcome = outcomes.pop(0) if outcomes else "ok"
        if outcome == "interrupt":
            raise TaskInterrupted("test")
        if outcome == "raise":
            raise RuntimeError("task bug")

    async def fail_internal(self, request: OcrRequest, record: RequestRecord, exc: Any) -> None:
        self.events.append(f"failed {request.task_id}@{record.offset}")
        raise ConnectionError("progress topic unreachable")  # the report fails as well

    async def reject_conflict(self, request: OcrRequest, record: RequestRecord) -> None:
        return None

    async def cancel(self, cancel: CancelRequest, record: RequestRecord) -> None:
        self.events.append(f"cancel {cancel.task_id}@{record.offset}")

    async def dead_letter(
        self, record: RequestRecord, *, code: ErrorCode, message: str, task_id: str | None
    ) -> None:
        if record.value == b"refused by the DLQ":
            raise RecordTooLarge("t.ocr.requests.dlq refused a record of 6000000 bytes")
        self.dead_letters.append((record.partition, record.offset, code))
        self.traces[f"dead@{record.offset}"] = (tracing.current(), record.trace_context)


def _value(task_id: str, **extra: object) -> bytes:
    request = {"task_id": task_id, "source": {"uri": "file:///srv/ocr-blobs/a.pdf"}, **extra}
    return OcrRequest.model_validate(request, strict=False).model_dump_json().encode()


@dataclass
class Running:
    loop: ConsumerLoop
    consumer: FakeConsumer
    runner: StubRunner
    task: asyncio.Task[None]

    async def committed(self, expected: dict[int, int]) -> dict[int, int]:
        """The committed positions once they equal `expected` (or after ~2 s)."""
        for _ in range(200):
            got = {p: self.consumer.commits.get(p, -1) for p in expected}
            if got == expected:
                break
            await asyncio.sleep(0.01)
        return got


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    consumer, runner = FakeConsumer(), StubRunner()
    loop = ConsumerLoop(
        consumer=consumer,
        settings=Settings(commit_interval_s=0.01, shutdown_grace_s=0.0),
        runner=runner, scheduler=PageScheduler(4), metrics=ConsumerMetrics(),
        book=WorkBook(retry_first_s=0.01),
    )
    await loop.start()
    partitions = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
    consumer.assigned = partitions
    await loop.partitions_assigned(partitions)  # as the rebalance listener would
    task = asyncio.create_task(loop.run())
    yield Running(loop, consumer, runner, task)
    loop.stop()
    await asyncio.wait([task], timeout=5)


async def test_a_copy_on_another_partition_finishes_there(running: Running) -> None:
    running.consumer.feed(0, 0, _value("t"))
    running.consumer.feed(1, 0, _value("t"))  # the same request under another key
    assert await running.committed({0: 0, 1: 0}) == {0: 0, 1: 0}
    assert [started[0] for started in running.runner.started] == ["t"], "the copy does not run"
    running.runner.let_go("t")
    assert await running.committed({0: 1, 1: 1}) == {0: 1, 1: 1}


async def test_commits_pass_transaction_markers_once_the_work_before_is_done(
    running: Running,
) -> None:
    # A transaction of two requests at 0-1 and its commit marker at 2: the commit stops at
    # the unfinished work, then reaches 3 (not 2, a lag of 1 for good).
    running.consumer.feed(0, 0, _value("t"))
    running.consumer.feed(0, 1, _value("u"))
    running.consumer.step_over(0, 3)
    running.consumer.step_over(1, 5)  # an aborted transaction and its marker, read_committed
    assert await running.committed({0: 0, 1: 5}) == {0: 0, 1: 5}
    running.runner.let_go("u")
    assert await running.committed({0: 0}) == {0: 0}
    running.runner.let_go("t")
    assert await running.committed({0: 3}) == {0: 3}


async def test_an_interrupted_run_hands_its_copy_over(running: Running) -> None:
    running.runner.outcomes["t"] = ["interrupt", "ok"]
    running.consumer.feed(0, 0, _value("t"))
    running.consumer.feed(1, 0, _value("t"))
    assert await running.committed({0: 0, 1: 0}) == {0: 0, 1: 0}
    running.runner.let_go("t")
    # The copy on partition 1 runs itself; partition 0's offset stays for its next reader.
    assert await running.committed({0: 0, 1: 1}) == {0: 0, 1: 1}
    assert running.runner.started == [("t", 0, 0), ("t", 1, 0)]


async def test_work_that_raises_is_retried_not_dropped(running: Running) -> None:
    running.runner.outcomes["t"] = ["raise", "raise", "ok"]
    running.runner.let_go("t")
    running.runner.let_go("u")
    running.consumer.feed(0, 0, _value("t"))
    running.consumer.feed(0, 1, _value("u"))
    # Offset 1 finished at once, but the commit position waits for offset 0's retries.
    assert await running.committed({0: 2}) == {0: 2}
    assert [s for s in running.runner.started if s[0] == "t"] == [("t", 0, 0)] * 3


async def test_a_forced_copy_waits_for_the_run_it_replaces(running: Running) -> None:
    running.consumer.feed(0, 0, _value("t"))
    assert await running.committed({0: 0}) == {0: 0}
    running.consumer.feed(0, 1, _value("t", force=True))
    for _ in range(100):
        if len(running.runner.events) == 4:
            break
        await asyncio.sleep(0.01)
    assert running.runner.events == ["start t@0", "cancelled t@0", "ended t@0", "start t@1"]
    running.runner.let_go("t")
    assert await running.committed({0: 2}) == {0: 2}


async def test_a_failed_run_on_a_lost_partition_hands_its_copy_over(running: Running) -> None:
    running.runner.outcomes["t"] = ["raise", "ok"]
    running.consumer.feed(0, 0, _value("t"))
    running.consumer.feed(1, 0, _value("t"))
    assert await running.committed({0: 0, 1: 0}) == {0: 0, 1: 0}
    await running.loop.partitions_revoked({TopicPartition(TOPIC, 0)})  # raises in between
    running.runner.let_go("t")
    # Partition 0 is not retried here (its next reader does it); the copy runs itself.
    assert await running.committed({1: 1}) == {1: 1}
    assert running.runner.started == [("t", 0, 0), ("t", 1, 0)]


async def test_an_unreadable_record_is_dead_lettered_and_committed(running: Running) -> None:
    running.consumer.feed(1, 0, b"{not json")
    assert await running.committed({1: 1}) == {1: 1}
    assert running.runner.dead_letters == [(1, 0, ErrorCode.REQUEST_NOT_JSON)]


async def test_an_assignment_cancels_only_the_runs_of_lost_partitions(
    running: Running,
) -> None:
    running.consumer.feed(0, 0, _value("a"))
    running.consumer.feed(1, 0, _value("b"))
    assert await running.committed({0: 0, 1: 0}) == {0: 0, 1: 0}
    partitions = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
    await running.loop.partitions_revoked(partitions)
    running.consumer.assigned = {TopicPartition(TOPIC, 1)}
    await running.loop.partitions_assigned({TopicPartition(TOPIC, 1)})
    assert "cancelled a@0" in running.runner.events
    assert "cancelled b@0" not in running.runner.events
    assert running.loop.inflight_tasks == 1
    running.runner.let_go("b")
    assert await running.committed({1: 1}) == {1: 1}


async def test_a_run_that_raises_while_cancelled_is_interrupted_not_failed(
    running: Running,
) -> None:
    """Review of issue 16: a run cancelled by a revoke whose page publish then raised was
    reported failed INTERNAL (fail_internal) instead of left to resume elsewhere."""
    running.runner.outcomes["a"] = ["error when cancelled"]
    running.consumer.feed(0, 0, _value("a"))
    assert await running.committed({0: 0}) == {0: 0}
    partitions = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
    await running.loop.partitions_revoked(partitions)
    running.consumer.assigned = {TopicPartition(TOPIC, 1)}
    await running.loop.partitions_assigned({TopicPartition(TOPIC, 1)})
    for _ in range(100):
        if "ended a@0" in running.runner.events:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert "ended a@0" in running.runner.events
    assert "failed a@0" not in running.runner.events


async def test_a_cancel_record_runs_beside_its_task_and_commits_behind_it(
    running: Running,
) -> None:
    running.consumer.feed(0, 0, _value("t"))
    running.consumer.feed(0, 1, b'{"schema_version": 1, "action": "cancel", "task_id": "t"}')
    for _ in range(100):
        if "cancel t@1" in running.runner.events:
            break
        await asyncio.sleep(0.01)
    assert running.runner.events == ["start t@0", "cancel t@1"], "no wait for the run"
    assert await running.committed({0: 0}) == {0: 0}, "the task's offset is still open"
    running.runner.let_go("t")
    assert await running.committed({0: 2}) == {0: 2}


async def test_an_unknown_action_is_dead_lettered(running: Running) -> None:
    running.consumer.feed(1, 0, b'{"action": "pause", "task_id": "t"}')
    assert await running.committed({1: 1}) == {1: 1}
    assert running.runner.dead_letters == [(1, 0, ErrorCode.REQUEST_INVALID)]


PARENT_A = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PARENT_B = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_each_work_publishes_under_its_own_records_trace(running: Running) -> None:
    for task_id in ("a", "b", "plain"):
        running.runner.let_go(task_id)
    running.consumer.feed(0, 0, _value("a"), headers=(("traceparent", PARENT_A),
                                                      ("tracestate", b"k=v"), ("x", None)))
    running.consumer.feed(1, 0, _value("b"), headers=(("traceparent", PARENT_B),))
    running.consumer.feed(0, 1, _value("plain"))
    running.consumer.feed(1, 1, b"{not json", headers=(("traceparent", PARENT_B),))
    assert await running.committed({0: 2, 1: 2}) == {0: 2, 1: 2}
    traces = running.runner.traces
    # Concurrent runs each see their own, and so do the tasks they start (their pages).
    a = [("traceparent", PARENT_A), ("tracestate", b"k=v")]
    assert traces["a"] == (a, a)
    assert traces["b"] == ([("traceparent", PARENT_B)], [("traceparent", PARENT_B)])
    assert traces["plain"] == ([], [])
    assert traces["dead@1"] == ([("traceparent", PARENT_B)], [("traceparent", PARENT_B)])
    assert tracing.current() == [], "nothing leaks into the loop's own context"


async def test_a_decoder_crash_dead_letters_the_record_not_the_consumer(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16, defect 1: an exception the decoder did not turn into a refusal (a plain
    ValueError from json) ended the loop, and again on every redelivery."""
    decode = consumer.loop.decode_record

    def crashing(raw: bytes | None, *, max_bytes: int) -> OcrRequest | CancelRequest:
        if raw == b"crash":
            raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
        return decode(raw, max_bytes=max_bytes)

    monkeypatch.setattr(consumer.loop, "decode_record", crashing)
    running.runner.let_go("t")
    running.consumer.feed(0, 0, b"crash")
    running.consumer.feed(0, 1, _value("t"))
    assert await running.committed({0: 2}) == {0: 2}
    assert running.runner.dead_letters == [(0, 0, ErrorCode.REQUEST_INVALID)]


async def test_an_unreadable_record_is_dead_lettered_without_its_bytes(
    running: Running,
) -> None:
    running.consumer.fail_next = [
        kafka_errors.RecordTooLargeError("too large", TopicPartition(TOPIC, 1), 0, 1024)
    ]
    assert await running.committed({1: 1}) == {1: 1}
    assert running.runner.dead_letters == [(1, 0, ErrorCode.REQUEST_UNREADABLE)]


async def test_kafka_refusing_us_ends_the_loop_and_starts_nothing_more(
    running: Running,
) -> None:
    """The drain after a fatal error stops the book first: the cancelled run does not hand
    its copy over to a new run on its way out (it did when run() left by an exception)."""
    running.consumer.feed(0, 0, _value("t"))
    running.consumer.feed(1, 0, _value("t"))  # a copy, waiting for the run
    assert await running.committed({0: 0, 1: 0}) == {0: 0, 1: 0}
    running.consumer.fail_next = [kafka_errors.TopicAuthorizationFailedError(TOPIC)]
    with pytest.raises(KafkaRefused):
        await asyncio.wait_for(running.task, 5)
    assert running.runner.started == [("t", 0, 0)]
    assert running.loop.inflight_tasks == 0


async def test_a_commit_refused_as_fenced_ends_the_loop_as_refused(running: Running) -> None:
    """Two consumers with one static id can keep rejoining so that only their commits see
    FENCED_INSTANCE_ID (seen once in CI: both ran on for 70 s); a commit error that no
    retry fixes now ends the loop as a read error would (exit 5). Others are retried."""
    running.consumer.fail_commits = [
        CommitFailedError("the group has already rebalanced"),
        FencedInstanceIdError(),
    ]
    running.runner.let_go("t")
    running.consumer.feed(0, 0, _value("t"))
    with pytest.raises(KafkaRefused) as refused:
        await asyncio.wait_for(running.task, 5)
    assert refused.value.error.cause == "fenced"


async def test_a_dead_letter_the_dlq_refuses_is_dropped_and_committed(
    running: Running,
) -> None:
    """Issue 16, defect 2: a dead letter refused as too large was retried for ever and its
    partition committed nothing more."""
    running.consumer.feed(0, 0, b"refused by the DLQ")
    running.runner.let_go("t")
    running.consumer.feed(0, 1, _value("t"))
    assert await running.committed({0: 2}) == {0: 2}
    sample = running.loop._metrics.registry.get_sample_value
    assert sample("ocr_records_skipped_total", {"reason": "dead_letter"}) == 1
