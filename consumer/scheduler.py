"""The in-flight page budget, shared fairly between tasks.

A page holds a slot from the moment it starts rendering until its result is published, so
the budget bounds memory (rendered images) and engine queue depth together. It has two
limits, both of which a page must fit:

- pages (`budget`): the engine's queue depth;
- pixels (`budget_pixels`): memory. A rendered page costs about 5 bytes a pixel in the
  consumer (bench/page_memory.py: 3.4-5.8 on a US-letter page at 72-600 dpi), so a 600-dpi
  page weighs 17 times a 144-dpi one, and a count of pages alone cannot bound memory. A
  page's cost is its pixel count (`OpenedDocument.page_pixels`); callers that do not pass
  one are charged `DEFAULT_PAGE_PIXELS`, a letter page at the default 144 dpi.

A page larger than the whole pixel budget still runs, alone, rather than never.

When room frees, it goes to the waiting task that holds the fewest slots (ties: the
longest waiting), so a 1-page task submitted behind a 300-page task gets the very next free
slot instead of queueing behind 300 pages. And the last slot (and a default page's worth
of pixels) is kept for tasks that hold none: a task already holding pages cannot take it.
Without that reserve, a document whose pages are slow to render holds every slot while its
pages wait their turn in its render worker, and a new 1-page task waits for one of those
renders to end (seen: 85 s instead of 2 s).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

# US letter at 144 dpi (the request's default dpi): 1224 x 1584 pixels.
DEFAULT_PAGE_PIXELS: Final = 1224 * 1584
# Budgets this small have no slot to spare for a reserve.
RESERVE_FROM_BUDGET: Final = 3


class SchedulerClosed(Exception):
    """The scheduler is shutting down: no new page may start."""


@dataclass(eq=False)
class _Waiter:
    ticket: int
    task_id: str = field(compare=False)
    pixels: int = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class PageScheduler:
    def __init__(self, budget: int, *, budget_pixels: int | None = None) -> None:
        if budget < 1:
            raise ValueError("page budget must be at least 1")
        if budget_pixels is not None and budget_pixels < 1:
            raise ValueError("pixel budget must be at least 1")
        self._budget = budget
        self._budget_pixels = budget_pixels
        self._reserve = 1 if budget >= RESERVE_FROM_BUDGET else 0
        self._in_use = 0
        self._pixels = 0
        self._held: Counter[str] = Counter()
        self._waiters: list[_Waiter] = []
        self._tickets = itertools.count()
        self._closed = False

    @property
    def budget(self) -> int:
        return self._budget

    @property
    def budget_pixels(self) -> int | None:
        return self._budget_pixels

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def pixels_in_use(self) -> int:
        return self._pixels

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def held_by(self, task_id: str) -> int:
        return self._held[task_id]

    async def acquire(self, task_id: str, pixels: int | None = None) -> None:
        """Wait for room for one page of `pixels` (default DEFAULT_PAGE_PIXELS); release()
        it with the same `pixels`."""
        cost = DEFAULT_PAGE_PIXELS if pixels is None else max(pixels, 0)
        if self._closed:
            raise SchedulerClosed("scheduler is closed")
        if not self._waiters and self._fits(task_id, cost):
            self._grant(task_id, cost)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(next(self._tickets), task_id, cost, future)
        self._waiters.append(waiter)
        # Room held back from the others (the reserve) may be this newcomer's at once.
        self._wake()
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted and cancelled in the same tick: hand the slot on.
                self.release(task_id, cost)
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
                self._wake()  # it may have been the one the others waited behind
            raise

    def release(self, task_id: str, pixels: int | None = None) -> None:
        self._in_use -= 1
        self._pixels -= DEFAULT_PAGE_PIXELS if pixels is None else max(pixels, 0)
        self._held[task_id] -= 1
        if self._held[task_id] <= 0:
            del self._held[task_id]
        self._wake()

    @asynccontextmanager
    async def slot(self, task_id: str, pixels: int | None = None) -> AsyncIterator[None]:
        await self.acquire(task_id, pixels)
        try:
            yield
        finally:
            self.release(task_id, pixels)

    def close(self) -> None:
        """Refuse new pages; waiters get SchedulerClosed. Pages holding slots go on."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(SchedulerClosed("scheduler is closed"))
        self._waiters.clear()

    def _fits(self, task_id: str, pixels: int) -> bool:
        if self._in_use == 0:
            return True  # even a page larger than the pixel budget runs, alone
        holding = self._held[task_id] > 0
        reserve = self._reserve if holding else 0
        if self._in_use + 1 + reserve > self._budget:
            return False
        if self._budget_pixels is None:
            return True
        reserve_pixels = DEFAULT_PAGE_PIXELS if reserve else 0
        return self._pixels + pixels + reserve_pixels <= self._budget_pixels

    def _grant(self, task_id: str, pixels: int) -> None:
        self._in_use += 1
        self._pixels += pixels
        self._held[task_id] += 1

    def _wake(self) -> None:
        while self._waiters:
            # Holdings change while waiters wait, so rank on current holdings. Only the
            # best-ranked waiter may go: skipping it for a smaller page behind it could
            # starve a large page for ever.
            best = min(self._waiters, key=lambda w: (self._held[w.task_id], w.ticket))
            if best.future.done():
                self._waiters.remove(best)
                continue
            if not self._fits(best.task_id, best.pixels):
                return
            self._waiters.remove(best)
            self._grant(best.task_id, best.pixels)
            best.future.set_result(None)
