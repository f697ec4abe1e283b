"""The page budget is shared fairly: a small task is not starved by a large one."""

from __future__ import annotations

import asyncio

import pytest

from consumer.scheduler import PageScheduler, SchedulerClosed

PAGE_TIME = 0.01


async def _run_task(
    scheduler: PageScheduler, task_id: str, pages: int, finished: dict[str, float],
    start: float, page_time: float = PAGE_TIME,
) -> None:
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()

    async def page() -> None:
        try:
            await asyncio.sleep(page_time)
        finally:
            scheduler.release(task_id)

    for _ in range(pages):
        await scheduler.acquire(task_id)
        running.add(asyncio.create_task(page()))
    await asyncio.gather(*running)
    finished[task_id] = loop.time() - start


async def test_small_task_behind_large_task_finishes_within_few_page_times() -> None:
    scheduler = PageScheduler(budget=4)
    finished: dict[str, float] = {}
    start = asyncio.get_running_loop().time()
    big = asyncio.create_task(_run_task(scheduler, "big", 300, finished, start))
    await asyncio.sleep(PAGE_TIME * 3)  # the big task already owns the whole budget
    small_start = asyncio.get_running_loop().time()
    await _run_task(scheduler, "small", 1, finished, small_start)
    await big
    # With budget 4 and 10 ms pages the big task needs ~750 ms; the small one gets the next
    # free slot: one page-time of waiting plus its own page.
    assert finished["small"] < PAGE_TIME * 5
    assert finished["big"] > PAGE_TIME * 60


async def test_budget_is_never_exceeded() -> None:
    scheduler = PageScheduler(budget=3)
    peak = 0

    async def task(task_id: str, pages: int) -> None:
        nonlocal peak
        for _ in range(pages):
            async with scheduler.slot(task_id):
                peak = max(peak, scheduler.in_use)
                await asyncio.sleep(0.001)

    await asyncio.gather(*(task(f"t{i}", 5) for i in range(6)))
    assert peak <= 3
    assert scheduler.in_use == 0


async def test_slots_alternate_between_equal_tasks() -> None:
    scheduler = PageScheduler(budget=1)
    order: list[str] = []

    async def task(task_id: str) -> None:
        for _ in range(3):
            async with scheduler.slot(task_id):
                order.append(task_id)
                await asyncio.sleep(0.001)

    await asyncio.gather(task("a"), task("b"))
    # Neither task runs all its pages before the other starts.
    assert order[:2] in (["a", "b"], ["b", "a"])


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    scheduler = PageScheduler(budget=1)
    await scheduler.acquire("holder")
    waiter = asyncio.create_task(scheduler.acquire("late"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    scheduler.release("holder")
    assert scheduler.in_use == 0
    await asyncio.wait_for(scheduler.acquire("next"), 1)
    assert scheduler.in_use == 1


async def test_close_refuses_new_pages_and_wakes_waiters() -> None:
    scheduler = PageScheduler(budget=1)
    await scheduler.acquire("a")
    waiter = asyncio.create_task(scheduler.acquire("b"))
    await asyncio.sleep(0)
    scheduler.close()
    with pytest.raises(SchedulerClosed):
        await waiter
    with pytest.raises(SchedulerClosed):
        await scheduler.acquire("c")
    scheduler.release("a")
    assert scheduler.in_use == 0


async def test_free_slot_goes_to_task_holding_fewest() -> None:
    scheduler = PageScheduler(budget=2)
    await scheduler.acquire("big")
    await scheduler.acquire("big")
    big_waiter = asyncio.create_task(scheduler.acquire("big"))
    await asyncio.sleep(0)
    small_waiter = asyncio.create_task(scheduler.acquire("small"))
    await asyncio.sleep(0)
    scheduler.release("big")
    await asyncio.sleep(0)
    # FIFO would hand the slot to the earlier big waiter; fairness gives it to "small".
    assert small_waiter.done()
    assert not big_waiter.done()
    scheduler.release("big")
    await asyncio.wait_for(big_waiter, 1)
