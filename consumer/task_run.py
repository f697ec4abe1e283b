"""One task's run in this process: its pages, its stage times, and the events it builds
(the runner in tasks.py decides what happens; this says what the events hold).

`progress_event` is the one builder of progress events, for runs and for the events that
have no run (a finished task re-sent, a cancel of a task nobody runs); it fills the
readable fields (percent, ETA from the run's own page rate, message: consumer/progress.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumer.engines.base import EngineOutput
from consumer.progress import PageRate, describe
from consumer.records import RequestRecord
from consumer.stages import StageRecorder, StageTimes
from schemas.common import ErrorCode, ErrorInfo, MetadataValue
from schemas.event_ids import event_run_tag
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import OcrRequest
from schemas.result import (
    MAX_PAGE_TEXT,
    EngineIdentity,
    FinishReason,
    PageImageInfo,
    PageResult,
    PageStatus,
    TokenCounts,
)
from schemas.timing import TimingEvent, TimingKind

# A page result, with its key and headers, stays within the publisher's 4 MiB records (the
# results topic takes 5 MiB); 64 KiB are kept for the key, headers and Kafka's overhead.
MAX_RESULT_BYTES = 4 * 1024 * 1024 - 64 * 1024
MAX_BLOCKS = 4096  # PageResult.blocks


def oversized(output: EngineOutput) -> str | None:
    """Why the engine's output cannot make a page result, or None when it can: checked
    before validation, so that a page too large fails alone (ValidationError used to read
    as an engine error) instead of with its task."""
    for name, text in (("markdown", output.markdown), ("text", output.text)):
        if len(text) > MAX_PAGE_TEXT:
            return f"its {name} is {len(text)} characters; a page result holds {MAX_PAGE_TEXT}"
    if len(output.blocks) > MAX_BLOCKS:
        return f"it has {len(output.blocks)} blocks; a page result holds {MAX_BLOCKS}"
    return None


def pages_failed(pages: Mapping[int, PageStatus]) -> int:
    return sum(1 for status in pages.values() if status is PageStatus.FAILED)


def progress_event(
    task_id: str, metadata: Mapping[str, MetadataValue], record: RequestRecord,
    status: TaskStatus, *, consumer_id: str, attempt: int, pages: Mapping[int, PageStatus],
    pages_total: int | None, page: int | None = None, error: ErrorInfo | None = None,
    replayed: bool = False, rate: PageRate | None = None, elapsed_s: float | None = None,
) -> ProgressEvent:
    """The task's progress as of `pages` (the pages done, each with its status); `rate`
    is the run's page rate (for the ETA), `elapsed_s` its duration (for a final message)."""
    failed = pages_failed(pages)
    readable = describe(
        status, pages_done=len(pages), pages_total=pages_total, pages_failed=failed,
        rate=rate, now=time.monotonic(), error=error, replayed=replayed, elapsed_s=elapsed_s,
    )
    return ProgressEvent(
        task_id=task_id,
        attempt=attempt,
        status=status,
        pages_done=len(pages),
        pages_failed=failed,
        pages_total=pages_total,
        page=page,
        percent=readable.percent,
        eta_s=readable.eta_s,
        message=readable.message,
        error=error,
        replayed=replayed,
        consumer_id=consumer_id,
        request_partition=record.partition,
        request_offset=record.offset,
        metadata=dict(metadata),
        emitted_at=datetime.now(UTC),
    )


@dataclass(slots=True)
class TaskRun:
    """Mutable state of one task while it runs in this process."""

    request: OcrRequest
    record: RequestRecord
    started_at: datetime
    consumer_id: str
    engine: EngineIdentity
    stages: StageRecorder
    pages: dict[int, PageStatus] = field(default_factory=dict)
    pages_total: int | None = None
    page_count: int = 0
    # This run's pace, from when its pages began (None before): the ETA's only input.
    rate: PageRate | None = None
    # Set when a page's failure dooms the whole document (its render budget is spent): the
    # task then ends failed with it once its pages are all accounted for.
    task_error: ErrorInfo | None = None

    @property
    def task_id(self) -> str:
        return self.request.task_id

    @property
    def run_tag(self) -> str:
        return event_run_tag(self.request.force, self.record.partition, self.record.offset)

    @property
    def pages_failed(self) -> int:
        return pages_failed(self.pages)

    @property
    def queue_ms(self) -> float:
        """From the request's Kafka timestamp to the start of this run."""
        return max((self.started_at - self.record.queued_at).total_seconds(), 0.0) * 1000

    def pages_began(self) -> None:
        self.rate = PageRate(time.monotonic())

    def page_done(self, page: int, status: PageStatus) -> None:
        self.pages[page] = status
        if self.rate is not None:
            self.rate.page_done(time.monotonic())

    def progress(
        self, status: TaskStatus, *, page: int | None = None, error: ErrorInfo | None = None
    ) -> ProgressEvent:
        elapsed = (datetime.now(UTC) - self.started_at).total_seconds()
        return progress_event(
            self.task_id, self.request.metadata, self.record, status,
            consumer_id=self.consumer_id, attempt=self.request.attempt, pages=self.pages,
            pages_total=self.pages_total, page=page, error=error, rate=self.rate,
            elapsed_s=elapsed if status.is_final else None,
        )

    def page_timing(self, page: int, started_at: datetime, times: StageTimes) -> TimingEvent:
        return TimingEvent(
            task_id=self.task_id,
            attempt=self.request.attempt,
            kind=TimingKind.PAGE,
            page=page,
            queued_at=self.record.queued_at,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            stages=times.durations(self.queue_ms),
            engine=self.engine,
            consumer_id=self.consumer_id,
        )

    def task_timing(self, finished_at: datetime) -> TimingEvent:
        return TimingEvent(
            task_id=self.task_id,
            attempt=self.request.attempt,
            kind=TimingKind.TASK,
            pages=len(self.pages),
            queued_at=self.record.queued_at,
            started_at=self.started_at,
            finished_at=finished_at,
            stages=self.stages.task.durations(self.queue_ms),
            engine=self.engine,
            consumer_id=self.consumer_id,
        )

    def page_result(
        self, page: int, info: PageImageInfo, times: StageTimes,
        outcome: EngineOutput | ErrorInfo,
    ) -> PageResult:
        """The page's result: the engine's output (its figures stored and linked by then),
        or the error that ended the page. The raw output is cut to the contract's bound."""
        request = self.request
        if isinstance(outcome, EngineOutput) and (too_large := oversized(outcome)):
            outcome = self.too_large(page, too_large)
        if isinstance(outcome, ErrorInfo):
            produced: dict[str, Any] = {
                "status": PageStatus.FAILED, "finish_reason": FinishReason.ERROR,
                "error": outcome,
            }
        else:
            produced = {
                "status": PageStatus.OK, "markdown": outcome.markdown, "text": outcome.text,
                "raw_text": outcome.raw_text[:MAX_PAGE_TEXT],
                "blocks": outcome.blocks, "finish_reason": outcome.finish_reason,
                "truncated": outcome.truncated,
                "tokens": TokenCounts(prompt=outcome.prompt_tokens, output=outcome.output_tokens),
            }
        result = PageResult(
            task_id=request.task_id,
            page=page,
            page_count=max(self.page_count, page),
            attempt=request.attempt,
            prompt=request.prompt,
            engine=self.engine,
            image=info,
            timings=times.page_timings(self.queue_ms),
            metadata=request.metadata,
            produced_at=datetime.now(UTC),
            **produced,
        )
        size = len(result.model_dump_json().encode())
        if result.status is PageStatus.OK and size > MAX_RESULT_BYTES:
            reason = f"its result is {size} bytes; a page result record holds {MAX_RESULT_BYTES}"
            return self.page_result(page, info, times, self.too_large(page, reason))
        return result

    @staticmethod
    def too_large(page: int, reason: str) -> ErrorInfo:
        return ErrorInfo(
            code=ErrorCode.PAGE_OUTPUT_TOO_LARGE,
            message=f"page {page} is too large to publish: {reason}; lower the request's "
            "dpi, or send the page on its own",
        )
