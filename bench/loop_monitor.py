"""Measures how long the event loop is blocked: the lateness of a 10 ms ticker."""

from __future__ import annotations

import asyncio
import time

TICK_S = 0.01


class LoopStallMonitor:
    def __init__(self) -> None:
        self.longest_stall_ms = 0.0
        self.stalls_over_50ms = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            late_ms = (time.perf_counter() - before - TICK_S) * 1000
            self.longest_stall_ms = max(self.longest_stall_ms, late_ms)
            if late_ms > 50:
                self.stalls_over_50ms += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
