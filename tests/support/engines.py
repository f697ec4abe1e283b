"""Engines for tests.

`ScriptedEngine` is the test double standing in for the vLLM engine on machines without a
GPU (the only component a test may replace): it answers instantly with DeepSeek-style
grounded output derived from the page, so pipeline tests run fast and can assert exactly
which pages were computed. Given `grounded`, it answers with that raw model output instead
and post-processes it exactly as the vLLM engine does (blocks, figure crops, raw_text):
the way to put `image` blocks through the real pipeline on a CPU. `FaultyEngine` wraps
any engine (the real RapidOCR one included) to raise or hang on chosen pages, for fault
tests.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from consumer.engines.base import (
    Engine,
    EngineHealth,
    EngineOutput,
    EngineStats,
    PageImage,
    PageRequest,
)
from consumer.errors import EngineError
from consumer.postprocess.page import deepseek_page_text
from schemas.result import Block, EngineIdentity, FinishReason


@dataclass
class ScriptedEngine:
    delay_s: float = 0.0
    concurrency: int = 8
    calls: Counter[tuple[str, int]] = field(default_factory=Counter)
    started: bool = False
    closed: bool = False
    dead: str | None = None  # set to a reason to play an engine that died
    start_gate: asyncio.Event | None = None  # start() waits for it: an engine still loading
    die_after: int | None = None  # pages answered before the engine dies (then every call fails)
    # Raw DeepSeek-OCR output for a page (grounding tags, `image` spans), post-processed as
    # the vLLM engine does; figures are cut when `crop_figures` (a store is configured).
    grounded: Callable[[PageImage], str] | None = None
    crop_figures: bool = True

    @property
    def identity(self) -> EngineIdentity:
        return EngineIdentity(name="scripted", model="test-double", version="0", mode="")

    @property
    def suggested_inflight_pages(self) -> int:
        return self.concurrency

    async def start(self) -> None:
        if self.start_gate is not None:
            await self.start_gate.wait()
        self.started = True

    async def infer(self, request: PageRequest) -> EngineOutput:
        page = request.page
        if self.die_after is not None and sum(self.calls.values()) >= self.die_after:
            self.dead = "engine core process died (test)"
        if self.dead is not None:
            raise EngineError(f"engine dead: {self.dead}")
        self.calls[(page.task_id, page.page)] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.grounded is not None:
            raw = self.grounded(page)
            page_text = await asyncio.to_thread(
                deepseek_page_text, raw, page, crop_figures=self.crop_figures
            )
            return EngineOutput(
                markdown=page_text.markdown, text=page_text.text, blocks=page_text.blocks,
                finish_reason=FinishReason.STOP, prompt_tokens=10,
                output_tokens=len(raw.split()), raw_text=raw, figures=page_text.figures,
            )
        text = f"Page {page.page} of {page.task_id}"
        width, height = page.image.size
        return EngineOutput(
            markdown=f"# {text}\n",
            text=text,
            blocks=[Block(label="title", text=text, bbox_px=[0.0, 0.0, width / 2, height / 10])],
            finish_reason=FinishReason.STOP,
            prompt_tokens=10,
            output_tokens=len(text.split()),
        )

    def stats(self) -> EngineStats:
        return EngineStats(pages_total=sum(self.calls.values()))

    def health(self) -> EngineHealth:
        if self.dead is not None:
            return EngineHealth(alive=False, reason=self.dead)
        return EngineHealth(alive=True)

    async def close(self) -> None:
        self.closed = True


@dataclass
class FaultyEngine:
    """Raise on `fail_pages`, hang on `hang_pages`, delegate the rest."""

    inner: Engine
    fail_pages: set[int] = field(default_factory=set)
    hang_pages: set[int] = field(default_factory=set)

    @property
    def identity(self) -> EngineIdentity:
        return self.inner.identity

    @property
    def suggested_inflight_pages(self) -> int:
        return self.inner.suggested_inflight_pages

    async def start(self) -> None:
        await self.inner.start()

    async def infer(self, request: PageRequest) -> EngineOutput:
        if request.page.page in self.fail_pages:
            raise EngineError(f"injected failure on page {request.page.page}")
        if request.page.page in self.hang_pages:
            await asyncio.Event().wait()
        return await self.inner.infer(request)

    def stats(self) -> EngineStats:
        return self.inner.stats()

    def health(self) -> EngineHealth:
        return self.inner.health()

    async def close(self) -> None:
        await self.inner.close()
