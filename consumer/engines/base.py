"""The engine interface every OCR engine implements.

The consumer hands the engine one rendered page at a time and keeps many pages in flight;
an engine must therefore be safe to call concurrently from one event loop. Cancelling the
task awaiting `infer()` must abort that page's work inside the engine (the task was revoked,
cancelled or timed out) and must not leave engine state behind.

The page's time limit (OCR_PAGE_TIMEOUT_S) belongs to the caller: the task runner cancels
`infer()` when it passes. An engine keeps no deadline of its own, so one timer guards a page.
`PageImage` lives in consumer/page_image.py; it is re-exported here as part of this API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from consumer.page_image import PageImage
from consumer.postprocess.figures import FigureCrop
from schemas.request import PromptKind
from schemas.result import Block, EngineIdentity, FinishReason

__all__ = [
    "Engine", "EngineHealth", "EngineOutput", "EngineStats", "PageImage", "PageRequest",
]


@dataclass(frozen=True, slots=True)
class PageRequest:
    request_id: str  # unique per page attempt: "task_id/page/attempt"
    page: PageImage
    prompt: PromptKind = PromptKind.MARKDOWN
    locate_text: str | None = None


@dataclass(slots=True)
class EngineOutput:
    """What the engine made of one page, already post-processed into the result schema."""

    markdown: str
    text: str
    blocks: list[Block]
    finish_reason: FinishReason
    truncated: bool = False
    prompt_tokens: int = 0
    output_tokens: int = 0
    raw_text: str = ""  # raw engine output (DeepSeek tags kept), for debugging
    # The part of infer()'s time spent turning the raw output into text and blocks, so the
    # pipeline can report it as its own stage instead of as inference.
    postprocess_ms: float = 0.0
    # Figure crops for the runner to store; engines never write files themselves
    # (consumer/artifacts/figures.py stores them and links them from the Markdown).
    figures: list[FigureCrop] = field(default_factory=list)


@dataclass(slots=True)
class EngineStats:
    """A snapshot for the metrics endpoint; fields an engine cannot know stay at 0."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0  # 0..1
    prompt_tokens_total: int = 0
    output_tokens_total: int = 0
    pages_total: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """Whether the engine can still serve pages. `alive` is False only for a failure that a
    restart of the process fixes (the vLLM engine core died, the engine was closed): the
    liveness probe turns it into a pod restart."""

    alive: bool
    reason: str = "ok"


class Engine(Protocol):
    @property
    def identity(self) -> EngineIdentity: ...

    @property
    def suggested_inflight_pages(self) -> int:
        """How many pages keep this engine busy; the scheduler's budget defaults to it."""
        ...

    async def start(self) -> None:
        """Load models; may take minutes (vLLM). Called once before the first infer()."""

    async def infer(self, request: PageRequest) -> EngineOutput:
        """OCR one page. Raises consumer.errors.EngineError; cancellation aborts the page."""
        ...

    def stats(self) -> EngineStats: ...

    def health(self) -> EngineHealth:
        """Cheap and non-blocking: the probes call it from the event loop. An engine that is
        not started yet is alive (loading is what readiness reports)."""
        ...

    async def close(self) -> None:
        """Release the engine; in-flight pages are aborted."""
