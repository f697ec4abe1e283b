"""Offsets and task ownership under copies, forced requests and a dying engine, on the real
broker and Redis: every received offset ends committed exactly when its work is done."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consumer.app import EXIT_ENGINE_DEAD, App
from consumer.config import Settings
from schemas.cloudevents import parse_ce_headers
from schemas.keys import task_partition
from schemas.progress import TaskStatus
from schemas.result import PageStatus
from schemas.timing import TimingEvent, TimingKind
from tests.support.apps import running_app
from tests.support.documents import file_request, make_pdf
from tests.support.engines import ScriptedEngine
from tests.support.kafka import (
    TopicReader,
    committed_offsets,
    produce_raw,
    produce_requests,
    wait_until,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6  # the `topics` fixture's default


def _key_elsewhere(task_id: str) -> tuple[bytes, int]:
    """A record key that lands on another partition than the task id does."""
    home = task_partition(task_id.encode(), PARTITIONS)
    for i in range(1000):
        key = f"other-{i}".encode()
        if (partition := task_partition(key, PARTITIONS)) != home:
            return key, partition
    raise AssertionError("no other partition found")


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    # One page at a time, so a task is surely still running when its copy arrives.
    return stack_settings.model_copy(
        update={
            "file_roots": [tmp_path], "metrics_port": 0, "commit_interval_s": 0.2,
            "max_inflight_pages": 1,
        }
    )


async def _committed_soon(settings: Settings, expected: dict[int, int]) -> dict[int, int]:
    """The committed positions of the partitions `expected` names once they equal it, or
    what they are after 10 s. The other partitions, which got no request, may be committed
    at their read position, 0 here, as Kafka's own clients commit (never past it)."""
    committed: dict[int, int] = {}
    for _ in range(50):
        committed = await committed_offsets(settings)
        if {p: committed.get(p) for p in expected} == expected:
            break
        await asyncio.sleep(0.2)
    idle = {p: o for p, o in committed.items() if p not in expected}
    assert set(idle.values()) <= {0}, idle
    return {p: o for p, o in committed.items() if p in expected}


async def test_a_copy_on_another_partition_is_committed_with_the_run(
    settings: Settings, tmp_path: Path
) -> None:
    """A copy of a running request that arrived under another key (another partition) waits
    for the run and is committed on its own partition when the run finishes."""
    request = file_request("copy-1", make_pdf(tmp_path / "copy.pdf", pages=3))
    home = task_partition(b"copy-1", PARTITIONS)
    key, elsewhere = _key_elsewhere("copy-1")
    engine = ScriptedEngine(delay_s=0.5, concurrency=1)
    async with running_app(settings, engine):
        async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
            await produce_requests(settings, [request])
            await reader.wait_for(lambda r: len(r.results(settings)) >= 1)
            await produce_raw(settings, request.model_dump_json().encode(), key=key)
            await reader.wait_for(lambda r: bool(r.final(settings, "copy-1")))
        committed = await _committed_soon(settings, {home: 1, elsewhere: 1})
    assert committed == {home: 1, elsewhere: 1}
    assert set(engine.calls.values()) == {1}, "each page computed once"
    [final] = reader.final(settings, "copy-1")
    assert final.status is TaskStatus.COMPLETED and final.pages_done == 3


async def test_a_forced_request_replaces_the_run_of_its_task(
    settings: Settings, tmp_path: Path
) -> None:
    """force=true for a task running here stops that run and recomputes from scratch once:
    one final status, every page of the forced run published with its own event ids, and
    both request offsets committed."""
    pdf = make_pdf(tmp_path / "forced.pdf", pages=4)
    engine = ScriptedEngine(delay_s=0.4, concurrency=1)
    async with running_app(settings, engine):
        async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
            await produce_requests(settings, [file_request("forced-1", pdf)])
            await reader.wait_for(lambda r: len(r.results(settings)) >= 1)
            await produce_requests(settings, [file_request("forced-1", pdf, force=True)])
            await reader.wait_for(lambda r: bool(r.final(settings, "forced-1")))
            # A second run, if one were going, would end meanwhile.
            deadline = asyncio.get_running_loop().time() + 2.0
            while asyncio.get_running_loop().time() < deadline:
                await reader.poll()
        home = task_partition(b"forced-1", PARTITIONS)
        committed = await _committed_soon(settings, {home: 2})
    [final] = reader.final(settings, "forced-1")
    assert final.status is TaskStatus.COMPLETED and final.pages_done == 4
    assert committed == {home: 2}
    ids = [
        parse_ce_headers(list(record.headers.items())).id
        for record in reader.on(settings.topic_results)
    ]
    forced = [event_id for event_id in ids if "/forced@" in event_id]
    assert len(forced) == 4, ids
    assert len(set(ids)) == len(ids), "a recomputed page must not reuse the first run's id"
    # The first run stopped: its pages after the replacement were computed by the new run.
    assert max(engine.calls.values()) <= 2 and sum(engine.calls.values()) < 8


async def test_a_dead_engine_leaves_the_task_resumable_and_stops_the_consumer(
    settings: Settings, tmp_path: Path
) -> None:
    """Pages that meet a dead engine do not end as ENGINE_ERROR: the task stays unfinished
    and uncommitted, the consumer exits with EXIT_ENGINE_DEAD, and the next consumer
    finishes the task from the pages already published."""
    pdf = make_pdf(tmp_path / "dies.pdf", pages=5)
    dying = ScriptedEngine(delay_s=0.2, concurrency=1, die_after=2)
    async with TopicReader(
        settings, settings.topic_results, settings.topic_progress, settings.topic_timing
    ) as reader:
        app = App(settings, engine=dying)
        run = asyncio.create_task(app.run())
        await wait_until(lambda: app.ready or run.done(), 60)
        await produce_requests(settings, [file_request("dies-1", pdf)])
        await asyncio.wait_for(run, 60)  # stops by itself
        assert app.exit_code == EXIT_ENGINE_DEAD
        await reader.poll()
        assert reader.final(settings, "dies-1") == []
        assert all(r.status is PageStatus.OK for r in reader.results(settings))
        # Nothing past the unfinished request (nor past any other partition's start).
        assert set((await committed_offsets(settings)).values()) <= {0}

        healthy = ScriptedEngine()
        async with running_app(settings, healthy):
            await reader.wait_for(lambda r: bool(r.final(settings, "dies-1")))
    [final] = reader.final(settings, "dies-1")
    assert final.status is TaskStatus.COMPLETED and final.pages_failed == 0
    assert {r.page for r in reader.results(settings)} == set(range(1, 6))
    assert set(healthy.calls) == {("dies-1", page) for page in range(3, 6)}
    # Page timing events say when the page started, before its result existed.
    results = {r.page: r for r in reader.results(settings)}
    for record in reader.on(settings.topic_timing):
        event = TimingEvent.model_validate_json(record.value or b"")
        if event.kind is TimingKind.PAGE and event.page is not None:
            assert event.started_at <= results[event.page].produced_at <= event.finished_at


async def test_backpressure_holds_through_a_rebalance(settings: Settings, tmp_path: Path) -> None:
    """With its task budget full, a consumer keeps polling but pauses every partition it is
    given, and a rebalance (which forgets pause state) does not let records through: each of
    two members ends with exactly its one task and all its partitions paused."""
    pdf = make_pdf(tmp_path / "hung.pdf", pages=1)
    one_task = settings.model_copy(update={"max_inflight_tasks": 1, "shutdown_grace_s": 0.0})
    one_per_partition: dict[int, str] = {}
    for i in range(500):
        one_per_partition.setdefault(task_partition(f"held-{i}".encode(), PARTITIONS), f"held-{i}")
    assert len(one_per_partition) == PARTITIONS
    first_engine, second_engine = ScriptedEngine(delay_s=600), ScriptedEngine(delay_s=600)

    def settled(app: App) -> bool:
        loop = app._loop
        if loop is None or not loop.joined:
            return False
        assignment = loop._consumer.assignment()
        paused = loop._consumer.paused()
        return loop.inflight_tasks == 1 and bool(assignment) and paused == assignment

    async with running_app(one_task, first_engine) as first:
        await produce_requests(
            settings, [file_request(task_id, pdf) for task_id in one_per_partition.values()]
        )
        await wait_until(lambda: settled(first), 30)
        assert len(first._loop._consumer.assignment()) == PARTITIONS  # type: ignore[union-attr]
        second_settings = one_task.model_copy(update={"consumer_id": f"{settings.consumer_id}-b"})
        async with running_app(second_settings, second_engine) as second:
            await wait_until(lambda: settled(first) and settled(second), 60)
            await asyncio.sleep(2.0)  # polls go on; nothing more may be admitted
            assert settled(first) and settled(second)
            owned = [
                app._loop._consumer.assignment()  # type: ignore[union-attr]
                for app in (first, second)
            ]
            assert not owned[0] & owned[1] and len(owned[0] | owned[1]) == PARTITIONS
    assert sum(second_engine.calls.values()) == 1
    # The first member's task either stayed with it or was cancelled when its partition
    # moved, and then the first member took one more from a partition it kept.
    assert sum(first_engine.calls.values()) in (1, 2)
