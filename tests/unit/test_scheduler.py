"""The page budget is shared fairly: a small task is not starved by a large one."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.scheduler import DEFAULT_PAGE_PIXELS, PageScheduler, SchedulerClosed

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


# -- the newcomers' reserve and the pixel budget -----------------------------------------


async def test_a_task_holding_pages_leaves_the_last_slot_to_newcomers() -> None:
    # A slow-rendering document's pages wait their turn in its render worker while they
    # hold slots; without the reserve a new 1-page task waited for one of those renders.
    scheduler = PageScheduler(budget=3)
    await scheduler.acquire("slow")
    await scheduler.acquire("slow")
    slow_third = asyncio.create_task(scheduler.acquire("slow"))
    await asyncio.sleep(0)
    assert not slow_third.done() and scheduler.in_use == 2
    await asyncio.wait_for(scheduler.acquire("small"), 0.1)  # at once, nobody released
    assert scheduler.held_by("small") == 1
    scheduler.release("small")
    await asyncio.sleep(0)
    assert not slow_third.done()  # the freed slot is the reserve again
    scheduler.release("slow")
    await asyncio.wait_for(slow_third, 1)


async def test_small_budgets_keep_no_reserve() -> None:
    scheduler = PageScheduler(budget=2)
    await scheduler.acquire("a")
    await asyncio.wait_for(scheduler.acquire("a"), 0.1)


async def test_pixels_bound_memory_whatever_the_page_count() -> None:
    page_600_dpi = 5100 * 6600  # 17x a default page
    scheduler = PageScheduler(budget=100, budget_pixels=3 * page_600_dpi)
    await scheduler.acquire("hi-res", page_600_dpi)
    await scheduler.acquire("hi-res", page_600_dpi)
    third = asyncio.create_task(scheduler.acquire("hi-res", page_600_dpi))
    await asyncio.sleep(0)
    # Two pages in use of a budget of 100, yet the third would pass the pixels (with the
    # reserve a newcomer keeps) and waits.
    assert not third.done() and scheduler.pixels_in_use == 2 * page_600_dpi
    await asyncio.wait_for(scheduler.acquire("newcomer"), 0.1)  # a default page fits
    scheduler.release("newcomer")
    scheduler.release("hi-res", page_600_dpi)
    await asyncio.wait_for(third, 1)
    assert scheduler.pixels_in_use == 2 * page_600_dpi


async def test_a_page_larger_than_the_pixel_budget_runs_alone() -> None:
    scheduler = PageScheduler(budget=4, budget_pixels=1_000)
    await asyncio.wait_for(scheduler.acquire("huge", 5_000), 0.1)
    other = asyncio.create_task(scheduler.acquire("other", 10))
    await asyncio.sleep(0)
    assert not other.done()
    scheduler.release("huge", 5_000)
    await asyncio.wait_for(other, 1)


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """Steps: ("acquire", task, pixels) or ("release", index into held pages, 0)."""
    steps = []
    for _ in range(draw(st.integers(1, 60))):
        if draw(st.booleans()):
            steps.append(("acquire", draw(st.integers(0, 4)), draw(st.sampled_from(
                [1, 1_000, 2_000_000, 8_000_000, 34_000_000]))))
        else:
            steps.append(("release", draw(st.integers(0, 1000)), 0))
    return steps


@settings(max_examples=150, deadline=None)
@given(schedules(), st.integers(1, 6), st.sampled_from([None, 10_000_000, 40_000_000]))
def test_budget_invariants_hold_on_any_schedule(
    steps: list[tuple[str, int, int]], budget: int, budget_pixels: int | None
) -> None:
    async def run() -> None:
        scheduler = PageScheduler(budget, budget_pixels=budget_pixels)
        waiting: list[tuple[asyncio.Task[None], str, int]] = []
        granted: list[tuple[str, int]] = []

        def settle() -> None:
            for entry in list(waiting):
                task, task_id, pixels = entry
                if task.done():
                    waiting.remove(entry)
                    granted.append((task_id, pixels))

        for kind, number, pixels in steps:
            if kind == "acquire":
                task_id = f"t{number}"
                waiting.append(
                    (asyncio.create_task(scheduler.acquire(task_id, pixels)), task_id, pixels)
                )
            elif granted:
                task_id, pixels = granted.pop(number % len(granted))
                scheduler.release(task_id, pixels)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            settle()
            assert scheduler.in_use == len(granted) <= budget
            if budget_pixels is not None and scheduler.in_use > 1:
                assert scheduler.pixels_in_use <= budget_pixels
            # No deadlock: with nothing in use, nobody waits.
            assert scheduler.in_use > 0 or not waiting
            # No idle room: a page waits only when the pages (but the reserve) or the
            # pixels are used up.
            if waiting:
                largest = max(p for _, _, p in waiting)
                assert scheduler.in_use >= budget - 1 or (
                    budget_pixels is not None
                    and scheduler.pixels_in_use + largest + DEFAULT_PAGE_PIXELS > budget_pixels
                )
        for task, _, _ in waiting:
            task.cancel()
        await asyncio.gather(*(task for task, _, _ in waiting), return_exceptions=True)

    asyncio.run(run())
