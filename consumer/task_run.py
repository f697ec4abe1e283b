"""One task's run in this process: its stage clock, its pages, and the page results it
produces (the runner in tasks.py decides what happens; this says what a result holds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

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
    engine_idle: bool = True

    @property
    def task_id(self) -> str:
        return self.request.task_id

    @property
    def run_tag(self) -> str:
        return event_run_tag(self.request.force, self.record.partition, self.record.offset)

    @property
    def pages_failed(self) -> int:
        return sum(1 for status in self.pages.values() if status == "failed")

    def ok_page(
        self, page: int, info: PageImageInfo, output: EngineOutput, timings: dict[str, float],
        engine: EngineIdentity,
    ) -> PageResult:
        request = self.request
        return PageResult(
            task_id=request.task_id,
            page=page,
            page_count=max(self.page_count, page),
            attempt=request.attempt,
            status=PageStatus.OK,
            prompt=request.prompt,
            markdown=output.markdown,
            text=output.text,
            blocks=output.blocks,
            finish_reason=output.finish_reason,
            truncated=output.truncated,
            tokens=TokenCounts(prompt=output.prompt_tokens, output=output.output_tokens),
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
        )

    def failed_page(
        self, page: int, info: PageImageInfo, error: ErrorInfo, timings: dict[str, float],
        engine: EngineIdentity,
    ) -> PageResult:
        request = self.request
        return PageResult(
            task_id=request.task_id,
            page=page,
            page_count=max(self.page_count, page),
            attempt=request.attempt,
            status=PageStatus.FAILED,
            prompt=request.prompt,
            finish_reason=FinishReason.ERROR,
            error=error,
            engine=engine,
            image=info,
            timings=PageTimings(render_ms=timings["render_ms"], infer_ms=timings["infer_ms"]),
            metadata=request.metadata,
            produced_at=datetime.now(UTC),
        )
