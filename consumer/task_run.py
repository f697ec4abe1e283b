"""One task's run in this process: its stage clock, its pages, and the page results it
produces (the runner in tasks.py decides what happens; this says what a result holds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumer.engines.base import EngineOutput
from consumer.publisher import event_run_tag
from consumer.records import RequestRecord
from schemas.common import ErrorInfo
from schemas.request import OcrRequest
from schemas.result import (
    EngineIdentity,
    FinishReason,
    PageImageInfo,
    PageResult,
    PageStatus,
    PageTimings,
    TokenCounts,
)
from schemas.timing import StageDurations


@dataclass(slots=True)
class StageClock:
    """Milliseconds per stage, summed over a task's pages."""

    fetch_ms: float = 0.0
    render_ms: float = 0.0
    infer_ms: float = 0.0
    postprocess_ms: float = 0.0
    publish_ms: float = 0.0

    def durations(self, queue_ms: float) -> StageDurations:
        return StageDurations(
            queue_ms=max(queue_ms, 0.0),
            fetch_ms=self.fetch_ms,
            render_ms=self.render_ms,
            infer_ms=self.infer_ms,
            postprocess_ms=self.postprocess_ms,
            publish_ms=self.publish_ms,
        )


@dataclass(slots=True)
class TaskRun:
    """Mutable state of one task while it runs in this process."""

    request: OcrRequest
    record: RequestRecord
    started_at: datetime
    pages: dict[int, str] = field(default_factory=dict)  # page -> ok | failed
    pages_total: int | None = None
    page_count: int = 0
    clock: StageClock = field(default_factory=StageClock)

    @property
    def task_id(self) -> str:
        return self.request.task_id

    @property
    def run_tag(self) -> str:
        return event_run_tag(self.request.force, self.record.partition, self.record.offset)

    @property
    def pages_failed(self) -> int:
        return sum(1 for status in self.pages.values() if status == "failed")

    def page_result(
        self, page: int, info: PageImageInfo, timings: dict[str, float],
        engine: EngineIdentity, outcome: EngineOutput | ErrorInfo,
    ) -> PageResult:
        """The page's result: the engine's output, or the error that ended the page."""
        request = self.request
        if isinstance(outcome, ErrorInfo):
            produced: dict[str, Any] = {
                "status": PageStatus.FAILED, "finish_reason": FinishReason.ERROR,
                "error": outcome,
            }
        else:
            produced = {
                "status": PageStatus.OK, "markdown": outcome.markdown, "text": outcome.text,
                "blocks": outcome.blocks, "finish_reason": outcome.finish_reason,
                "truncated": outcome.truncated,
                "tokens": TokenCounts(prompt=outcome.prompt_tokens, output=outcome.output_tokens),
            }
        return PageResult(
            task_id=request.task_id,
            page=page,
            page_count=max(self.page_count, page),
            attempt=request.attempt,
            prompt=request.prompt,
            engine=engine,
            image=info,
            timings=PageTimings(
                render_ms=timings["render_ms"],
                infer_ms=timings["infer_ms"],
                postprocess_ms=timings["postprocess_ms"],
                queue_ms=max((self.started_at - self.record.queued_at).total_seconds(), 0) * 1000,
            ),
            metadata=request.metadata,
            produced_at=datetime.now(UTC),
            **produced,
        )
