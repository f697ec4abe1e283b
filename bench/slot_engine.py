"""A GPU in miniature for CPU benchmarks: `slots` pages at a time, each `latency_s` long.

Wraps the test suite's ScriptedEngine (tests/support/engines.py), which answers any number
of pages concurrently after a fixed delay. A GPU does not: its batch has a size, and pages
beyond it wait. This engine keeps that shape, so a closed loop of N pages on it runs at
min(N, slots) / latency_s pages/s, the ceiling the pipeline is compared with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from consumer.engines.base import EngineHealth, EngineOutput, EngineStats, PageRequest
from schemas.result import EngineIdentity
from tests.support.engines import ScriptedEngine


@dataclass
class SlotEngine:
    slots: int
    latency_s: float
    inner: ScriptedEngine = field(default_factory=ScriptedEngine)
    _gate: asyncio.Semaphore | None = None
    _waiting: int = 0
    _running: int = 0

    def __post_init__(self) -> None:
        self.inner.delay_s = self.latency_s
        self.inner.concurrency = self.slots

    @property
    def identity(self) -> EngineIdentity:
        return EngineIdentity(
            name="scripted", model=f"{self.slots} slots x {self.latency_s:g} s", version="0",
            mode="",
        )  # fmt: skip

    @property
    def suggested_inflight_pages(self) -> int:
        return self.slots

    async def start(self) -> None:
        self._gate = asyncio.Semaphore(self.slots)
        await self.inner.start()

    async def infer(self, request: PageRequest) -> EngineOutput:
        assert self._gate is not None, "start() first"
        self._waiting += 1
        try:
            await self._gate.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            return await self.inner.infer(request)
        finally:
            self._running -= 1
            self._gate.release()

    def stats(self) -> EngineStats:
        stats = self.inner.stats()
        stats.running, stats.waiting = self._running, self._waiting
        return stats

    def health(self) -> EngineHealth:
        return self.inner.health()

    async def close(self) -> None:
        await self.inner.close()
