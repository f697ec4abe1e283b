"""The consumer loop's bookkeeping of received offsets, without a broker.

The loop's Kafka client is never started here: records are handed to `_admit` as a poll
would, and the offset tracker shows what a commit would send. The end-to-end versions of
these guarantees run on the real stack in tests/integration/test_loop_guarantees.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from consumer import loop as loop_module
from consumer.config import Settings
from consumer.loop import ConsumerLoop
from consumer.metrics import ConsumerMetrics
from consumer.records import RequestRecord
from consumer.scheduler import PageScheduler
from consumer.tasks import TaskInterrupted
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


class StubRunner:
    """Plays the task runner: each task waits for its release, then ends as scripted."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int, int]] = []  # (task id, partition, offset)
        self.events: list[str] = []  # "start t@0", "cancelled t@0", in order
        self.release: dict[str, asyncio.Event] = {}
        self.outcomes: dict[str, list[str]] = {}  # per task: "ok", "raise", "interrupt"

    async def run(self, request: OcrRequest, record: RequestRecord) -> None:
        self.started.append((request.task_id, record.partition, record.offset))
        name = f"{request.task_id}@{record.offset}"
        self.events.append(f"start {name}")
        try:
            await self.release.setdefault(request.task_id, asyncio.Event()).wait()
        except asyncio.CancelledError:
            self.events.append(f"cancelled {name}")
            await asyncio.sleep(0.02)  # a run takes a moment to wind down (lease release)
            self.events.append(f"ended {name}")
            raise
        outcomes = self.outcomes.get(request.task_id, [])
        outcome = outcomes.pop(0) if outcomes else "ok"
        if outcome == "interrupt":
            raise TaskInterrupted("test")
        if outcome == "raise":
            raise RuntimeError("task bug")

    async def fail_internal(self, request: OcrRequest, record: RequestRecord, exc: Any) -> None:
        raise ConnectionError("progress topic unreachable")  # the report fails as well

    async def reject_conflict(self, request: OcrRequest, record: RequestRecord) -> None:
        return None


def _value(task_id: str, **extra: object) -> bytes:
    request = {"task_id": task_id, "source": {"uri": "file:///srv/ocr-blobs/a.pdf"}, **extra}
    return OcrRequest.model_validate(request, strict=False).model_dump_json().encode()


async def _positions(loop: ConsumerLoop, expected: dict[int, int | None]) -> dict[int, int | None]:
    got: dict[int, int | None] = {}
    for _ in range(200):
        got = {p: loop._resume_offset(TopicPartition(TOPIC, p)) for p in expected}
        if got == expected:
            break
        await asyncio.sleep(0.01)
    return got


@pytest.fixture
async def loop_and_runner() -> Any:
    runner = StubRunner()
    loop = ConsumerLoop(
        settings=Settings(), runner=runner,  # type: ignore[arg-type]
        scheduler=PageScheduler(4), metrics=ConsumerMetrics(), consumer_id="unit",
    )
    await loop.partitions_assigned({TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)})
    yield loop, runner
    for task in list(loop._work):
        task.cancel()
    await asyncio.sleep(0)
    await loop._consumer.stop()  # never started; closes what its constructor opened


def _admit(loop: ConsumerLoop, partition: int, offset: int, value: bytes) -> None:
    loop._admit(TopicPartition(TOPIC, partition), _Record(TOPIC, partition, offset, value))


async def test_a_copy_on_another_partition_finishes_there(loop_and_runner: Any) -> None:
    loop, runner = loop_and_runner
    _admit(loop, 0, 0, _value("t"))
    _admit(loop, 1, 0, _value("t"))  # the same request under another key
    await asyncio.sleep(0.01)
    assert [started[0] for started in runner.started] == ["t"], "the copy does not run"
    assert await _positions(loop, {0: 0, 1: 0}) == {0: 0, 1: 0}
    runner.release["t"].set()
    assert await _positions(loop, {0: 1, 1: 1}) == {0: 1, 1: 1}


async def test_an_interrupted_run_hands_its_copy_over(loop_and_runner: Any) -> None:
    loop, runner = loop_and_runner
    runner.outcomes["t"] = ["interrupt", "ok"]
    _admit(loop, 0, 0, _value("t"))
    _admit(loop, 1, 0, _value("t"))
    await asyncio.sleep(0.01)
    runner.release["t"].set()
    # The copy on partition 1 runs itself; partition 0's offset stays for its next reader.
    assert await _positions(loop, {0: 0, 1: 1}) == {0: 0, 1: 1}
    assert runner.started == [("t", 0, 0), ("t", 1, 0)]


async def test_work_that_raises_is_retried_not_dropped(
    loop_and_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_module, "RETRY_FIRST_S", 0.01)
    loop, runner = loop_and_runner
    runner.outcomes["t"] = ["raise", "raise", "ok"]
    runner.release["t"] = asyncio.Event()
    runner.release["t"].set()
    _admit(loop, 0, 0, _value("t"))
    _admit(loop, 0, 1, _value("u"))
    runner.release["u"] = asyncio.Event()
    runner.release["u"].set()
    # Offset 1 finished at once, but the commit position waits for offset 0's retries.
    assert await _positions(loop, {0: 2}) == {0: 2}
    assert [s for s in runner.started if s[0] == "t"] == [("t", 0, 0)] * 3


async def test_a_forced_copy_waits_for_the_run_it_replaces(loop_and_runner: Any) -> None:
    loop, runner = loop_and_runner
    _admit(loop, 0, 0, _value("t"))
    await asyncio.sleep(0.01)
    _admit(loop, 0, 1, _value("t", force=True))
    await asyncio.sleep(0.05)
    assert runner.events == ["start t@0", "cancelled t@0", "ended t@0", "start t@1"]
    runner.release["t"].set()
    assert await _positions(loop, {0: 2}) == {0: 2}


async def test_a_failed_run_on_a_lost_partition_hands_its_copy_over(
    loop_and_runner: Any,
) -> None:
    loop, runner = loop_and_runner
    runner.outcomes["t"] = ["raise", "ok"]
    _admit(loop, 0, 0, _value("t"))
    _admit(loop, 1, 0, _value("t"))
    await asyncio.sleep(0.01)
    loop._assigned.discard(TopicPartition(TOPIC, 0))  # revoked while the run was failing
    runner.release["t"].set()
    # Partition 0 is not retried here (its next reader does it); the copy runs itself.
    assert await _positions(loop, {1: 1}) == {1: 1}
    assert runner.started == [("t", 0, 0), ("t", 1, 0)]
