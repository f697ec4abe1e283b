"""Waiting out Redis outages (consumer/redis_outage.py) with in-memory fakes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from consumer.lease import TaskLease
from consumer.redis_outage import (
    RETRY_MAX_S,
    OutageWaiter,
    RedisWaitClock,
    redis_waits_excluded,
)


class Flaky:
    """An operation that fails `failures` times with `error`, then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


class Listener:
    def __init__(self) -> None:
        self.events: list[str] = []

    def redis_unavailable(self) -> None:
        self.events.append("down")

    def redis_available(self, down_s: float) -> None:
        self.events.append(f"up {down_s:g}")


async def test_transient_errors_are_retried_with_a_bounded_backoff() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    now = [0.0]
    listener = Listener()
    waiter = OutageWaiter(listener, sleep=sleep, clock=lambda: now[0])
    flaky = Flaky(8, RedisConnectionError("refused"))
    assert await waiter.call("load", flaky) == "ok"
    assert flaky.calls == 9
    assert sleeps == [0.2, 0.4, 0.8, 1.6, 3.2, RETRY_MAX_S, RETRY_MAX_S, RETRY_MAX_S]
    assert listener.events == ["down", "up 0"]


async def test_a_failover_is_waited_out_and_other_errors_raise() -> None:
    async def sleep(seconds: float) -> None:
        return None

    waiter = OutageWaiter(sleep=sleep)
    assert await waiter.call("finish", Flaky(3, ReadOnlyError("READONLY"))) == "ok"
    # Refusals that last until an operator acts are waited out too, not failed tasks.
    oom = OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")
    assert await waiter.call("page_done", Flaky(2, oom)) == "ok"
    misconf = ResponseError("MISCONF Redis is configured to save RDB snapshots, but ...")
    assert await waiter.call("page_done", Flaky(2, misconf)) == "ok"
    with pytest.raises(ResponseError):
        await waiter.call("finish", Flaky(1, ResponseError("WRONGTYPE")))


async def test_one_outage_is_one_streak_whatever_waits_in_it() -> None:
    gate = asyncio.Event()
    listener = Listener()
    waiter = OutageWaiter(listener)

    def operation() -> Callable[[], Awaitable[str]]:
        async def attempt() -> str:
            if not gate.is_set():
                raise RedisConnectionError("down")
            return "ok"

        return attempt

    calls = [asyncio.create_task(waiter.call("page_done", operation())) for _ in range(5)]
    await asyncio.sleep(0.5)
    assert waiter.down and listener.events == ["down"]
    gate.set()
    assert await asyncio.gather(*calls) == ["ok"] * 5
    assert len(listener.events) == 2 and listener.events[1].startswith("up")
    assert not waiter.down


async def test_a_wait_freezes_the_task_budget_once_for_overlapping_waits() -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10.0) as budget:
        clock = RedisWaitClock(budget)
        deadline = budget.when()
        assert deadline is not None
        clock.wait_started()
        clock.wait_started()  # a second page waiting at the same time
        assert budget.when() is None  # suspended
        await asyncio.sleep(0.3)
        clock.wait_ended()
        assert budget.when() is None  # one wait is still on
        clock.wait_ended()
        resumed = budget.when()
        assert resumed is not None and resumed - deadline >= 0.29
        assert resumed - loop.time() == pytest.approx(deadline - (loop.time() - 0.3), abs=0.2)
    assert clock.waited_s >= 0.29


async def test_waits_inside_the_block_do_not_expire_the_budget() -> None:
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0.05)

    waiter = OutageWaiter(sleep=sleep)
    async with asyncio.timeout(0.3) as budget:
        with redis_waits_excluded(budget) as clock:
            # 12 failures x 50 ms of waiting: twice the budget, yet no TimeoutError.
            assert await waiter.call("page_done", Flaky(12, OSError("reset"))) == "ok"
    assert clock.waited_s >= 0.5
    # Outside the block, the same waits count: the budget expires.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await waiter.call("page_done", Flaky(12, OSError("reset")))


async def test_a_cancelled_caller_is_not_retried_even_when_told_connection_error() -> None:
    started = asyncio.Event()

    async def attempt() -> str:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            # What a client library may do: report the cut connection, not the cancel.
            raise RedisConnectionError("connection closed") from None
        return "never"

    waiter = OutageWaiter()
    call = asyncio.create_task(waiter.call("lease_refresh", attempt))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 2)
    assert not waiter.down


class SwallowingStore:
    """A state store whose lease refresh swallows a cancellation (as a misbehaving client
    library could): the lease must still stop its refresher and let the task end."""

    def __init__(self) -> None:
        self.refreshing = asyncio.Event()
        self.refreshes = 0
        self.released = False

    async def acquire_lease(self, task_id: str, owner: str) -> str | None:
        return None

    async def refresh_lease(self, task_id: str, owner: str) -> bool:
        self.refreshes += 1
        self.refreshing.set()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed
            await asyncio.sleep(0.5)
        return True

    async def release_lease(self, task_id: str, owner: str) -> None:
        self.released = True


async def test_leaving_a_lease_stops_a_refresher_that_swallowed_its_cancel() -> None:
    store = SwallowingStore()
    lease = TaskLease(store, "t", "me", ttl_s=3)  # type: ignore[arg-type]


    async def run_task() -> None:
        async with lease:
            await asyncio.wait_for(store.refreshing.wait(), 5)  # cancel lands mid-refresh

    # Before, leaving waited for the refresher forever and it kept refreshing.
    await asyncio.wait_for(run_task(), 10)
    assert store.released
    await asyncio.sleep(1.5)
    assert store.refreshes == 1
