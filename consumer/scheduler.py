"""The in-flight page budget, shared fairly between tasks.

A page holds a slot from the moment it starts rendering until its result is published, so
the budget bounds memory (rendered images) and engine queue depth together. When a slot
frees, it goes to the waiting task that holds the fewest slots (ties: the longest waiting),
so a 1-page task submitted behind a 300-page task gets the very next free slot instead of
queueing behind 300 pages.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


class SchedulerClosed(Exception):
    """The scheduler is shutting down: no new page may start."""


@dataclass(eq=False)
class _Waiter:
    ticket: int
    task_id: str = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class PageScheduler:
    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError("page budget must be at least 1")
        self._budget = budget
        self._in_use = 0
        self._held: Counter[str] = Counter()
        self._waiters: list[_Waiter] = []
        self._tickets = itertools.count()
        self._closed = False

    @property
    def budget(self) -> int:
        return self._budget

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def held_by(self, task_id: str) -> int:
        return self._held[task_id]

    async def acquire(self, task_id: str) -> None:
        if self._closed:
            raise SchedulerClosed("scheduler is closed")
        if self._in_use < self._budget and not self._waiters:
            self._grant(task_id)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(next(self._tickets), task_id, future)
        self._waiters.append(waiter)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted and cancelled in the same tick: hand the slot on.
                self.release(task_id)
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, task_id: str) -> None:
        self._in_use -= 1
        self._held[task_id] -= 1
        if self._held[task_id] <= 0:
            del self._held[task_id]
        self._wake()

    @asynccontextmanager
    async def slot(self, task_id: str) -> AsyncIterator[None]:
        await self.acquire(task_id)
        try:
            yield
        finally:
            self.release(task_id)

    def close(self) -> None:
        """Refuse new pages; waiters get SchedulerClosed. Pages holding slots go on."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(SchedulerClosed("scheduler is closed"))
        self._waiters.clear()

    def _grant(self, task_id: str) -> None:
        self._in_use += 1
        self._held[task_id] += 1

    def _wake(self) -> None:
        while self._in_use < self._budget and self._waiters:
            # Holdings change while waiters wait, so rank on current holdings.
            best = min(self._waiters, key=lambda w: (self._held[w.task_id], w.ticket))
            self._waiters.remove(best)
            if best.future.done():
                continue
            self._grant(best.task_id)
            best.future.set_result(None)
