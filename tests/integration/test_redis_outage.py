"""Task state through Redis outages, failovers and data loss, on a real redis-server.

Each test runs its own redis-server (tests/support/redis_server.py) and kills it by PID,
so the stack's Redis, shared by the session, is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from consumer.config import Settings
from consumer.lease import TaskLease
from consumer.redis_outage import redis_waits_excluded
from consumer.state import TaskStateStore, redis_client
from schemas.common import ErrorCode, ErrorInfo
from schemas.headers import DLQ_ERROR_CODE
from schemas.progress import ProgressEvent, TaskStatus
from schemas.result import PageStatus
from tests.support.apps import running_app
from tests.support.documents import file_request, make_pdf
from tests.support.engines import ScriptedEngine
from tests.support.kafka import TopicReader, committed_offsets, produce_requests
from tests.support.redis_server import RedisServer, free_port, own_redis

pytestmark = pytest.mark.integration


class Outages:
    """An OutageListener that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def redis_unavailable(self) -> None:
        self.events.append(("down", 0.0))

    def redis_available(self, down_s: float) -> None:
        self.events.append(("up", down_s))


def store_on(server: RedisServer, outages: Outages | None = None) -> TaskStateStore:
    # task_timeout_s small: the store used to give up waiting after it.
    settings = Settings(
        redis_url=server.url, redis_key_prefix="t:", state_ttl_s=600, lease_ttl_s=5,
        task_timeout_s=1.0,
    )
    return TaskStateStore(redis_client(settings), settings, outages=outages)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with own_redis(tmp_path / "redis") as started:
        yield started


@pytest.fixture
async def outages() -> Outages:
    return Outages()


@pytest.fixture
async def store(server: RedisServer, outages: Outages) -> AsyncIterator[TaskStateStore]:
    made = store_on(server, outages)
    yield made
    await made.close()


async def test_operations_wait_out_an_outage_longer_than_the_task_timeout(
    server: RedisServer, store: TaskStateStore, outages: Outages
) -> None:
    await store.begin("w1", fingerprint="f", attempt=0, owner="c", reset_pages=True)
    await server.kill()
    with capture_logs() as logs:
        waiting = [
            asyncio.create_task(store.page_done("w1", page, PageStatus.OK)) for page in (1, 2, 3)
        ]
        await asyncio.sleep(3.0)  # three times the task timeout
        assert not any(task.done() for task in waiting), "an operation gave up during the outage"
        assert store.redis_down
        await server.start()
        await asyncio.wait_for(asyncio.gather(*waiting), 20)
    state = await store.load("w1")
    assert state is not None and state.pages == {1: "ok", 2: "ok", 3: "ok"}
    # One line and one listener call per outage, not one per operation or retry.
    events = [entry["event"] for entry in logs]
    assert events.count("redis_unavailable") == 1 and events.count("redis_available") == 1
    assert [kind for kind, _ in outages.events] == ["down", "up"]
    assert outages.events[1][1] >= 3.0
    assert not store.redis_down


async def test_a_final_status_is_never_overwritten(store: TaskStateStore) -> None:
    await store.begin("f1", fingerprint="f", attempt=0, owner="c", reset_pages=True)
    assert await store.finish("f1", TaskStatus.COMPLETED, None) is True
    # What a crash reported after completion would write: refused.
    error = ErrorInfo(code=ErrorCode.INTERNAL, message="boom")
    assert await store.finish("f1", TaskStatus.FAILED, error) is False
    # A copy that raced the finished run may not reopen it either...
    reopened = await store.begin("f1", fingerprint="f", attempt=0, owner="d", reset_pages=False)
    assert reopened is False
    state = await store.load("f1")
    assert state is not None and state.status is TaskStatus.COMPLETED and state.error is None
    assert state.owner == "c"
    # ... but force (reset_pages) recomputes it, and its own end is recorded.
    assert await store.begin("f1", fingerprint="g", attempt=1, owner="d", reset_pages=True)
    assert await store.finish("f1", TaskStatus.FAILED, error)
    state = await store.load("f1")
    assert state is not None and state.status is TaskStatus.FAILED and state.fingerprint == "g"


async def test_release_during_a_failover_cannot_fail_a_finished_task(
    server: RedisServer, store: TaskStateStore
) -> None:
    # A primary demoted to replica (what a failover does to it) answers writes with
    # READONLY. The replica's primary is a port nobody listens on: it stays read-only.
    async with TaskLease(store, "r1", "c", ttl_s=30):
        await store.begin("r1", fingerprint="f", attempt=0, owner="c", reset_pages=True)
        await store.finish("r1", TaskStatus.COMPLETED, None)
        server.command("REPLICAOF", "127.0.0.1", str(free_port()))
    # Leaving the lease raised ReadOnlyError, which the loop reported as an INTERNAL failure.
    state = await store.load("r1")
    assert state is not None and state.status is TaskStatus.COMPLETED
    # A write during the failover waits for it to end instead of raising.
    pending = asyncio.create_task(store.page_done("r1", 9, PageStatus.OK))
    await asyncio.sleep(1.0)
    assert not pending.done()
    server.command("REPLICAOF", "NO", "ONE")
    await asyncio.wait_for(pending, 20)


async def test_finish_keeps_the_fingerprint_when_redis_lost_the_task(
    tmp_path: Path,
) -> None:
    async with own_redis(tmp_path / "volatile", persistent=False) as server:
        store = store_on(server)
        try:
            await store.begin("lost-1", fingerprint="content-a", attempt=2, owner="c",
                              reset_pages=True)
            await store.set_pages_total("lost-1", 7)
            await server.kill()
            await server.start()  # empty: everything about the task is gone
            await store.page_done("lost-1", 1, PageStatus.OK)
            await store.finish("lost-1", TaskStatus.COMPLETED, None)
            state = await store.load("lost-1")
        finally:
            await store.close()
    # finish() wrote only status and time: the task had no fingerprint, so a later
    # request reusing the id for other content was announced as a duplicate.
    assert state is not None and state.status is TaskStatus.COMPLETED
    assert (state.fingerprint, state.attempt, state.pages_total) == ("content-a", 2, 7)


async def test_redis_waits_do_not_count_against_the_task_budget(
    server: RedisServer, store: TaskStateStore
) -> None:
    await store.begin("b1", fingerprint="f", attempt=0, owner="c", reset_pages=True)
    started = time.monotonic()
    async with asyncio.timeout(2.0) as budget:
        with redis_waits_excluded(budget) as clock:
            await server.kill()

            async def restart_later() -> None:
                await asyncio.sleep(4.0)
                await server.start()

            restarting = asyncio.create_task(restart_later())
            try:
                await store.page_done("b1", 1, PageStatus.OK)  # waits ~4 s of a 2 s budget
                await restarting
            finally:
                # A failure above must not leave a restart pending: it would start a
                # redis-server after the fixture stopped its own.
                restarting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await restarting
            await asyncio.sleep(0.5)  # the budget has time left again
    assert time.monotonic() - started > 4.0
    assert clock.waited_s > 3.0


# -- the consumer through an outage (real Kafka, own Redis, the scripted engine) ----------

TASK_TIMEOUT_S = 2.0


@pytest.fixture
async def app_settings(
    stack_settings: Settings, server: RedisServer, tmp_path: Path
) -> Settings:
    return stack_settings.model_copy(
        update={
            "redis_url": server.url, "file_roots": [tmp_path], "metrics_port": 0,
            "commit_interval_s": 0.2, "task_timeout_s": TASK_TIMEOUT_S,
            "shutdown_grace_s": 1.0,
        }
    )


def finals(reader: TopicReader, settings: Settings, task_id: str) -> list[ProgressEvent]:
    return reader.final(settings, task_id)


async def test_redis_down_before_a_task_longer_than_its_timeout(
    app_settings: Settings, server: RedisServer, tmp_path: Path
) -> None:
    pdf = make_pdf(tmp_path / "two.pdf", pages=2)
    async with (
        running_app(app_settings, ScriptedEngine()),
        TopicReader(app_settings, app_settings.topic_progress) as reader,
    ):
        await server.kill()
        await produce_requests(app_settings, [file_request("before-1", pdf)])
        await asyncio.sleep(3 * TASK_TIMEOUT_S)
        await reader.poll()
        # It failed INTERNAL ("please report it") here, and was committed as such.
        assert finals(reader, app_settings, "before-1") == []
        assert sum((await committed_offsets(app_settings)).values()) == 0
        await server.start()
        await reader.wait_for(lambda r: bool(finals(r, app_settings, "before-1")), timeout=60)
    [final] = finals(reader, app_settings, "before-1")
    assert final.status is TaskStatus.COMPLETED and final.pages_done == 2


async def test_redis_that_stays_away_leaves_the_task_unfinished_and_uncommitted(
    app_settings: Settings, server: RedisServer, tmp_path: Path
) -> None:
    pdf = make_pdf(tmp_path / "one.pdf", pages=1)
    async with TopicReader(app_settings, app_settings.topic_progress) as reader:
        app = running_app(app_settings, ScriptedEngine())
        async with app:
            await server.kill()
            await produce_requests(app_settings, [file_request("away-1", pdf)])
            await asyncio.sleep(4 * TASK_TIMEOUT_S)
        # The App stopped (within the fixture's 60 s) with the task still waiting.
        await reader.poll()
    assert finals(reader, app_settings, "away-1") == []
    assert sum((await committed_offsets(app_settings)).values()) == 0


async def test_redis_down_mid_task_longer_than_its_timeout(
    app_settings: Settings, server: RedisServer, tmp_path: Path
) -> None:
    pdf = make_pdf(tmp_path / "four.pdf", pages=4)
    engine = ScriptedEngine(delay_s=0.3, concurrency=1)
    settings = app_settings.model_copy(update={"max_inflight_pages": 1})
    async with (
        running_app(settings, engine),
        TopicReader(settings, settings.topic_progress) as reader,
    ):
        await produce_requests(settings, [file_request("mid-1", pdf)])
        await reader.wait_for(
            lambda r: any(e.status is TaskStatus.PAGE_DONE for e in r.progress(settings))
        )
        await server.kill()
        await asyncio.sleep(2 * TASK_TIMEOUT_S)
        await server.start()
        await reader.wait_for(lambda r: bool(finals(r, settings, "mid-1")), timeout=60)
    [final] = finals(reader, settings, "mid-1")
    assert final.status is TaskStatus.COMPLETED, final.error


async def test_a_reused_task_id_is_a_conflict_after_redis_lost_the_task(
    stack_settings: Settings, tmp_path: Path
) -> None:
    first = make_pdf(tmp_path / "first.pdf", pages=3)
    other = make_pdf(tmp_path / "other.pdf", pages=2)
    async with own_redis(tmp_path / "volatile", persistent=False) as volatile:
        settings = stack_settings.model_copy(
            update={"redis_url": volatile.url, "file_roots": [tmp_path], "metrics_port": 0,
                    "commit_interval_s": 0.2, "max_inflight_pages": 1}
        )
        engine = ScriptedEngine(delay_s=0.5, concurrency=1)
        async with (
            running_app(settings, engine),
            TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader,
        ):
            await produce_requests(settings, [file_request("reused-1", first)])
            await reader.wait_for(
                lambda r: any(e.status is TaskStatus.PAGE_DONE for e in r.progress(settings))
            )
            await volatile.kill()
            await volatile.start()  # empty: the task's state is gone mid-run
            await reader.wait_for(lambda r: bool(finals(r, settings, "reused-1")), timeout=60)
            # The same id for a different document: a conflict, not a "replayed" duplicate.
            await produce_requests(settings, [file_request("reused-1", other)])
            await reader.wait_for(lambda r: bool(r.on(settings.topic_dlq)), timeout=30)
    [final] = finals(reader, settings, "reused-1")
    assert final.status is TaskStatus.COMPLETED and not final.replayed
    [dead] = reader.on(settings.topic_dlq)
    assert dead.headers[DLQ_ERROR_CODE] == ErrorCode.TASK_ID_CONFLICT.value.encode()
