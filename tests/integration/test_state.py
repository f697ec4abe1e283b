"""Task state and the ownership lease on the real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from consumer.config import Settings
from consumer.lease import TaskLease
from consumer.state import TaskStateStore, redis_client
from schemas.common import ErrorCode, ErrorInfo
from schemas.progress import TaskStatus
from schemas.result import PageStatus

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(stack: Settings, redis_prefix: str) -> AsyncIterator[TaskStateStore]:
    settings = stack.model_copy(
        update={"redis_key_prefix": redis_prefix, "state_ttl_s": 600, "lease_ttl_s": 3}
    )
    store = TaskStateStore(redis_client(settings), settings)
    yield store
    await store.close()


async def test_state_round_trip_and_every_key_expires(
    store: TaskStateStore, stack: Settings, redis_prefix: str
) -> None:
    await store.begin("s1", fingerprint="f", attempt=2, owner="c1", reset_pages=True)
    await store.set_pages_total("s1", 3)
    await store.page_done("s1", 1, PageStatus.OK)
    await store.page_done("s1", 3, PageStatus.FAILED)
    error = ErrorInfo(code=ErrorCode.PAGES_FAILED, message="1 of 2 pages failed")
    await store.finish("s1", TaskStatus.COMPLETED, error)
    assert await store.acquire_lease("s1", "c1") is None

    state = await store.load("s1")
    assert state is not None
    assert (state.status, state.fingerprint, state.attempt, state.owner) == (
        TaskStatus.COMPLETED, "f", 2, "c1"
    )
    assert state.pages_total == 3 and state.pages == {1: PageStatus.OK, 3: PageStatus.FAILED}
    assert state.error == error and state.pages_failed == 1
    assert await store.load("never-seen") is None

    client = redis_client(stack)
    try:
        keys = [key async for key in client.scan_iter(match=f"{redis_prefix}task:s1*")]
        assert len(keys) == 3  # task, pages, lease
        for key in keys:
            ttl_ms = await client.pttl(key)
            assert 0 < ttl_ms <= (3_000 if key.endswith(":lease") else 600_000), key
    finally:
        await client.aclose()


async def test_begin_with_reset_forgets_pages(store: TaskStateStore) -> None:
    await store.begin("s2", fingerprint="f", attempt=0, owner="c1", reset_pages=True)
    await store.page_done("s2", 1, PageStatus.OK)
    await store.begin("s2", fingerprint="f", attempt=0, owner="c2", reset_pages=False)
    assert (await store.load("s2")).pages == {1: PageStatus.OK}  # type: ignore[union-attr]
    await store.begin("s2", fingerprint="g", attempt=1, owner="c2", reset_pages=True)
    assert (await store.load("s2")).pages == {}  # type: ignore[union-attr]


async def test_lease_is_taken_only_when_free_or_ours(store: TaskStateStore) -> None:
    assert await store.acquire_lease("s3", "a") is None
    assert await store.acquire_lease("s3", "b") == "a"
    assert await store.acquire_lease("s3", "a") is None  # ours: extended
    assert await store.refresh_lease("s3", "b") is False
    await store.release_lease("s3", "b")  # not b's: stays
    assert await store.acquire_lease("s3", "b") == "a"
    await store.release_lease("s3", "a")
    assert await store.acquire_lease("s3", "b") is None


async def test_task_lease_waits_for_the_holder(store: TaskStateStore) -> None:
    assert await store.acquire_lease("s4", "old-owner") is None
    entered = asyncio.Event()

    async def take() -> None:
        async with TaskLease(store, "s4", "new-owner", ttl_s=3):
            entered.set()

    taker = asyncio.create_task(take())
    await asyncio.sleep(0.8)
    assert not entered.is_set()
    await store.release_lease("s4", "old-owner")
    await asyncio.wait_for(taker, 5)
    assert entered.is_set()
    assert await store.acquire_lease("s4", "third") is None, "released on the way out"


async def test_task_lease_is_retaken_after_redis_lost_it(
    store: TaskStateStore, stack: Settings, redis_prefix: str
) -> None:
    client = redis_client(stack)
    try:
        async with TaskLease(store, "s5", "owner", ttl_s=3):
            await client.delete(f"{redis_prefix}task:s5:lease")  # Redis restarted empty
            await asyncio.sleep(1.5)  # one refresh interval (ttl / 3, at least 1 s)
            assert await client.get(f"{redis_prefix}task:s5:lease") == "owner"
    finally:
        await client.aclose()


async def test_a_cancel_is_a_marker_that_expires_with_the_state_and_a_notice_to_all(
    store: TaskStateStore, stack: Settings, redis_prefix: str
) -> None:
    heard: list[tuple[str, str]] = []
    listeners = [
        asyncio.create_task(store.listen_for_cancels(lambda *notice: heard.append(notice)))
        for _ in range(2)  # two members
    ]
    try:
        await asyncio.sleep(0.5)  # subscribed
        client = redis_client(stack)
        await client.publish(f"{redis_prefix}cancels", "not json")  # ignored, not a crash
        await client.aclose()
        await store.request_cancel("c1", "sent by mistake")
        await store.request_cancel("c2", "")
        for _ in range(100):
            if len(heard) == 4:
                break
            await asyncio.sleep(0.02)
    finally:
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
    assert sorted(heard) == [("c1", "sent by mistake")] * 2 + [("c2", "")] * 2
    assert await store.cancel_reasons(["c1", "c2", "c3"]) == {"c1": "sent by mistake", "c2": ""}
    assert await store.cancel_reasons([]) == {}
    client = redis_client(stack)
    try:
        ttl_ms = await client.pttl(f"{redis_prefix}task:c1:cancel")
        assert 590_000 < ttl_ms <= 600_000  # state_ttl_s, like the task's own keys
    finally:
        await client.aclose()
    await store.clear_cancel("c1")
    assert await store.cancel_reasons(["c1", "c2"]) == {"c2": ""}
    assert await store.lease_holder("c1") is None
    assert await store.acquire_lease("c1", "member-a") is None
    assert await store.lease_holder("c1") == "member-a"
