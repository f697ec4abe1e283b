"""Cancelling tasks: the cancel scope, the members' watch, and the runner's side, on
in-memory fakes (tests/support/task_fakes.py). The whole path on the real broker and Redis,
with two members, runs in tests/integration/test_cancel.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from consumer.cancel import CancelScope, CancelWatch, RunningTasks, TaskCancelled
from consumer.config import Settings
from consumer.engines.base import EngineOutput, PageRequest
from consumer.metrics import ConsumerMetrics
from consumer.scheduler import PageScheduler
from consumer.state import TaskState
from consumer.tasks import TaskRunner
from schemas.common import ErrorCode
from schemas.control import CancelRequest, ControlAction
from schemas.progress import TaskStatus
from schemas.request import OcrRequest
from schemas.result import PageResult, PageStatus
from tests.support.engines import ScriptedEngine
from tests.support.task_fakes import MemoryDocuments, MemorySink, MemoryStore, record


def _request(task_id: str = "t", **extra: object) -> OcrRequest:
    body = {"task_id": task_id, "source": {"uri": "file:///srv/ocr-blobs/a.pdf"}, **extra}
    return OcrRequest.model_validate(body, strict=False)


def _cancel(task_id: str = "t", reason: str = "sent by mistake") -> CancelRequest:
    return CancelRequest(action=ControlAction.CANCEL, task_id=task_id, reason=reason)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.005)


class CountingEngine(ScriptedEngine):
    """The scripted engine answering pages up to `answered` at once and holding the later
    ones until cancelled; it says which pages were aborted (cancelled inside infer)."""

    def __init__(self, answered: int = 4) -> None:
        super().__init__()
        self.answered = answered
        self.entered: list[int] = []
        self.aborted: list[int] = []

    async def infer(self, request: PageRequest) -> EngineOutput:
        self.entered.append(request.page.page)
        try:
            if request.page.page > self.answered:
                await asyncio.Event().wait()
            return await super().infer(request)
        except asyncio.CancelledError:
            self.aborted.append(request.page.page)
            raise


@dataclass
class Member:
    """One consumer's runner, and what it talks to."""

    engine: CountingEngine = field(default_factory=CountingEngine)
    store: MemoryStore = field(default_factory=MemoryStore)
    sink: MemorySink = field(default_factory=MemorySink)
    documents: MemoryDocuments = field(default_factory=MemoryDocuments)
    scheduler: PageScheduler = field(default_factory=lambda: PageScheduler(3))
    running: RunningTasks = field(default_factory=RunningTasks)
    metrics: ConsumerMetrics = field(default_factory=ConsumerMetrics)

    def __post_init__(self) -> None:
        self.runner = TaskRunner(
            settings=Settings(lease_ttl_s=5), engine=self.engine, scheduler=self.scheduler,
            store=self.store, events=self.sink, metrics=self.metrics, consumer_id="unit",
            documents=self.documents, running=self.running,
        )

    def results(self, task_id: str = "t") -> list[PageResult]:
        return [r for r in self.sink.results if r.task_id == task_id]


# --- the scope ----------------------------------------------------------------------------


async def test_a_cancelled_scope_stops_its_body_and_says_why() -> None:
    scope = CancelScope()
    body_cancelled = asyncio.Event()

    async def body() -> None:
        async with scope:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                body_cancelled.set()
                raise

    running = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    assert scope.cancel("why") and not scope.cancel("again")
    with pytest.raises(TaskCancelled) as stopped:
        await running
    assert stopped.value.reason == "why" and body_cancelled.is_set()
    assert running.cancelling() == 0, "the scope took back its own cancellation"


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    scope = CancelScope()

    async def body() -> None:
        async with scope:
            await asyncio.sleep(60)

    running = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    scope.cancel("why")
    running.cancel()  # a revoke at the same moment: the run is interrupted, not ended
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_scope_cancelled_before_it_is_entered_does_not_run_its_body() -> None:
    scope = CancelScope()
    scope.cancel("early")
    ran = False
    with pytest.raises(TaskCancelled):
        async with scope:
            ran = True
    assert not ran


async def test_a_scope_cancelled_after_its_block_cancels_nothing() -> None:
    scope = CancelScope()
    async with scope:
        pass
    assert scope.cancel("late")
    await asyncio.sleep(0)  # this task was not cancelled: it gets here


# --- the watch ----------------------------------------------------------------------------


@dataclass
class Signals:
    markers: dict[str, str] = field(default_factory=dict)
    listeners: list[Callable[[str, str], None]] = field(default_factory=list)
    checks: int = 0

    async def cancel_reasons(self, task_ids: Sequence[str]) -> dict[str, str]:
        self.checks += 1
        return {t: self.markers[t] for t in task_ids if t in self.markers}

    async def listen_for_cancels(self, notice: Callable[[str, str], None]) -> None:
        self.listeners.append(notice)
        await asyncio.Event().wait()


async def test_the_watch_cancels_on_a_notice_and_on_a_marker() -> None:
    signals, running = Signals(), RunningTasks()
    watch = asyncio.create_task(CancelWatch(signals, running, interval_s=0.01).run())
    try:
        with running.running("a") as a, running.running("b") as b:
            await _until(lambda: bool(signals.listeners))
            signals.listeners[0]("a", "by notice")
            signals.listeners[0]("elsewhere", "not here")  # another member's task
            assert a.reason == "by notice" and b.reason is None
            signals.markers["b"] = "by marker"  # a notice this member missed
            await _until(lambda: b.reason is not None)
            assert b.reason == "by marker"
        checks = signals.checks
        await asyncio.sleep(0.05)
        assert signals.checks == checks, "no running task, nothing to check"
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


async def test_the_watch_survives_a_bug_in_its_listener() -> None:
    class Buggy(Signals):
        async def listen_for_cancels(self, notice: Callable[[str, str], None]) -> None:
            if not self.listeners:
                self.listeners.append(notice)
                raise RuntimeError("bug")
            await super().listen_for_cancels(notice)

    signals, running = Buggy(), RunningTasks()
    watch = asyncio.create_task(CancelWatch(signals, running, interval_s=0.01).run())
    try:
        with running.running("a") as a:
            await _until(lambda: len(signals.listeners) == 2)
            signals.listeners[-1]("a", "after the restart")
            assert a.reason == "after the restart"
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


async def test_a_marker_read_for_an_ended_run_does_not_cancel_its_successor() -> None:
    running = RunningTasks()
    successor: list[CancelScope] = []

    class Slow(Signals):
        async def cancel_reasons(self, task_ids: Sequence[str]) -> dict[str, str]:
            reasons = await super().cancel_reasons(task_ids)
            # While the marker was read, the run ended and a forced run took its place.
            scope.__exit__(None, None, None)
            successor.append(running.running("t").__enter__())
            return reasons

    signals = Slow(markers={"t": "old cancel"})
    scope = running.running("t")
    first = scope.__enter__()
    watch = asyncio.create_task(CancelWatch(signals, running, interval_s=0.01).run())
    await _until(lambda: bool(successor))
    await asyncio.sleep(0.01)
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    assert first.reason == "old cancel"
    assert successor[0].reason is None


# --- the runner ---------------------------------------------------------------------------


async def test_a_cancel_stops_a_running_task_which_keeps_its_published_pages() -> None:
    member = Member()
    member.documents.pages["t"] = 40
    run = asyncio.create_task(member.runner.run(_request(), record(0, 0)))
    # Pages 1-4 published; 5 and 6 hold two of the three slots, in the engine (the third
    # is kept for a task holding none: PageScheduler's reserve).
    await _until(lambda: len(member.results()) == 4 and len(member.engine.entered) == 6)
    await member.runner.cancel(_cancel(), record(0, 1))
    status = await asyncio.wait_for(run, 2)
    assert status is TaskStatus.CANCELLED
    assert member.scheduler.in_use == 0, "every slot is free again"
    assert sorted(member.engine.aborted) == [5, 6], "pages in the engine were aborted"
    assert len(member.engine.entered) == 6, "no page started after the cancel"
    published = {r.page for r in member.results()}
    assert published == {1, 2, 3, 4}
    assert member.store.states["t"].pages == dict.fromkeys(published, PageStatus.OK)
    final = member.sink.progress_events[-1]
    assert (final.status, final.pages_done, final.pages_total) == (
        TaskStatus.CANCELLED, len(published), 40,
    )
    assert final.error is not None and final.error.code is ErrorCode.TASK_CANCELLED
    assert final.error.message == "sent by mistake"
    assert final.message.startswith(f"cancelled after {len(published)} of 40 pages in ")
    assert final.message.endswith(": sent by mistake")
    assert member.store.calls[-2:] == ["cancel t", "finish t cancelled"]
    assert not member.store.leases
    assert member.metrics.registry.get_sample_value(
        "ocr_tasks_total", {"status": "cancelled"}
    ) == 1


async def test_a_page_being_published_is_published_and_recorded_whole() -> None:
    member = Member()
    member.documents.pages["t"] = 3
    gate = asyncio.Event()
    entered = asyncio.Event()
    publish = member.sink.result

    async def slow_result(result: PageResult, *, run_tag: str = "") -> None:
        entered.set()
        await gate.wait()
        await publish(result, run_tag=run_tag)

    member.sink.result = slow_result  # type: ignore[method-assign]
    run = asyncio.create_task(member.runner.run(_request(), record()))
    await entered.wait()
    await member.runner.cancel(_cancel(), record(0, 1))
    await asyncio.sleep(0.05)
    assert not run.done(), "the run waits for the page it is publishing"
    gate.set()
    assert await asyncio.wait_for(run, 2) is TaskStatus.CANCELLED
    published = {r.page for r in member.results()}
    assert published and set(member.store.states["t"].pages) == published
    assert member.sink.progress_events[-1].pages_done == len(published)


async def test_a_cancel_sent_before_the_run_ends_it_before_any_page() -> None:
    member = Member()
    member.store.cancels["t"] = "too late to stop it elsewhere"
    assert await member.runner.run(_request(), record()) is TaskStatus.CANCELLED
    assert not member.engine.calls and not member.results()
    assert member.sink.statuses == ["queued", "cancelled"]


async def test_a_cancel_of_a_finished_task_announces_it_again() -> None:
    member = Member()
    await member.runner.run(_request(), record(0, 0))
    await member.runner.cancel(_cancel(), record(0, 1))
    announced = member.sink.progress_events[-1]
    assert announced.replayed and announced.status is TaskStatus.COMPLETED
    assert announced.request_offset == 1
    assert "t" not in member.store.cancels, "nothing to mark"


async def test_a_cancel_of_an_unknown_task_records_it_cancelled() -> None:
    member = Member()
    await member.runner.cancel(_cancel(reason=""), record(0, 0))
    [event] = member.sink.progress_events
    assert (event.status, event.pages_done, event.replayed) == (TaskStatus.CANCELLED, 0, False)
    assert event.error is not None and "no reason given" in event.error.message
    assert member.store.states["t"].status is TaskStatus.CANCELLED
    # Its request, arriving later, is answered; with force it runs after all.
    assert await member.runner.run(_request(), record(0, 1)) is None
    assert member.sink.progress_events[-1].replayed
    assert member.sink.progress_events[-1].status is TaskStatus.CANCELLED
    assert await member.runner.run(_request(force=True), record(0, 2)) is TaskStatus.COMPLETED
    assert "clear cancel t" in member.store.calls and "t" not in member.store.cancels
    assert len(member.results()) == 3


async def test_a_cancel_of_a_task_held_elsewhere_leaves_it_to_its_owner() -> None:
    member = Member()
    member.store.states["t"] = TaskState("t", TaskStatus.STARTED, pages={1: PageStatus.OK})
    member.store.leases["t"] = "other-member"
    await member.runner.cancel(_cancel(), record(0, 1))
    assert member.store.cancels == {"t": "sent by mistake"}
    assert member.store.states["t"].status is TaskStatus.STARTED
    assert member.sink.progress_events == []


async def test_a_cancel_of_an_interrupted_task_nobody_runs_ends_it_with_its_pages() -> None:
    member = Member()
    member.store.states["t"] = TaskState(
        "t", TaskStatus.STARTED, pages_total=5, pages={1: PageStatus.OK, 2: PageStatus.OK},
    )
    await member.runner.cancel(_cancel(), record(0, 1))
    [event] = member.sink.progress_events
    assert (event.status, event.pages_done, event.pages_total) == (TaskStatus.CANCELLED, 2, 5)
    assert member.store.states["t"].status is TaskStatus.CANCELLED
