"""One task from request to final status: fetch, render, infer, publish, record.

A task ends in exactly one of three ways:
- finished (completed, failed, or recognised as a duplicate): its offset may be committed;
- interrupted (partition revoked, shutdown): nothing final is written, the lease is
  released, and whoever reads the request next resumes from the pages Redis recorded;
- crashed process: same as interrupted, once the lease expires.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from consumer.config import Settings
from consumer.documents.fetch import fetch_document
from consumer.documents.render import OpenedDocument, open_document, select_pages
from consumer.engines.base import Engine, EngineOutput, PageRequest
from consumer.errors import OcrError
from consumer.log import get_logger
from consumer.metrics import ConsumerMetrics
from consumer.publisher import EventPublisher
from consumer.records import RequestRecord
from consumer.scheduler import PageScheduler, SchedulerClosed
from consumer.state import TaskState, TaskStateStore
from schemas.common import ErrorCode, ErrorInfo
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import OcrRequest
from schemas.result import (
    FinishReason,
    PageImageInfo,
    PageResult,
    PageStatus,
    PageTimings,
    TokenCounts,
)
from schemas.timing import StageDurations, TimingEvent, TimingKind

log = get_logger(__name__)


class TaskInterrupted(Exception):
    """The task stopped before its end (revoke or shutdown); it stays resumable."""


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
    def pages_failed(self) -> int:
        return sum(1 for status in self.pages.values() if status == "failed")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class TaskRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        scheduler: PageScheduler,
        store: TaskStateStore,
        publisher: EventPublisher,
        metrics: ConsumerMetrics,
        consumer_id: str,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._scheduler = scheduler
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._consumer_id = consumer_id

    # -- entry point ---------------------------------------------------------------------

    async def run(self, request: OcrRequest, record: RequestRecord) -> TaskStatus | None:
        """Do the task; returns its final status, or None when it was a duplicate."""
        structlog.contextvars.bind_contextvars(
            task_id=request.task_id, partition=record.partition, offset=record.offset
        )
        state = await self._store.load(request.task_id)
        fingerprint = request.content_fingerprint()
        if state is not None and not request.force:
            if state.fingerprint and state.fingerprint != fingerprint:
                await self._conflict(request, record, f"status {state.status.value}")
                return None
            if state.status.is_final:
                await self._announce_duplicate(request, record, state)
                return None
        return await self._run_owned(request, record, state, fingerprint)

    async def _run_owned(
        self, request: OcrRequest, record: RequestRecord, state: TaskState | None,
        fingerprint: str,
    ) -> TaskStatus:
        run = TaskRun(request=request, record=record, started_at=datetime.now(UTC))
        await self._progress(run, TaskStatus.QUEUED)
        await self._take_lease(request.task_id)
        refresher = asyncio.create_task(self._keep_lease(request.task_id))
        try:
            status, error = await self._run_leased(run, state, fingerprint)
            await self._finish(run, status, error)
            return status
        finally:
            # Also on interruption: the next owner should not wait for the lease to expire.
            refresher.cancel()
            await self._store.release_lease(request.task_id, self._consumer_id)

    async def _run_leased(
        self, run: TaskRun, state: TaskState | None, fingerprint: str
    ) -> tuple[TaskStatus, ErrorInfo | None]:
        request = run.request
        reset = request.force or state is None
        if state is not None and not reset:
            run.pages = dict(state.pages)
        await self._store.begin(
            request.task_id, fingerprint=fingerprint, attempt=request.attempt,
            owner=self._consumer_id, reset_pages=reset,
        )
        queue_s = (run.started_at - run.record.queued_at).total_seconds()
        self._metrics.task_queue_latency(max(queue_s, 0.0))
        log.info("task_started", resumed_pages=len(run.pages), attempt=request.attempt)
        try:
            try:
                async with asyncio.timeout(self._settings.task_timeout_s):
                    await self._process(run)
            except TimeoutError:
                raise OcrError(
                    ErrorCode.TASK_TIMEOUT,
                    f"task took longer than {self._settings.task_timeout_s:g} s "
                    f"({len(run.pages)} pages done); raise OCR_TASK_TIMEOUT_S or split the "
                    "document with page ranges",
                ) from None
        except OcrError as exc:
            self._metrics.error(exc.code.value)
            log.warning("task_failed", code=exc.code.value, message=exc.message)
            return TaskStatus.FAILED, exc.info()
        if run.pages_failed:
            return TaskStatus.COMPLETED, ErrorInfo(
                code=ErrorCode.PAGES_FAILED,
                message=f"{run.pages_failed} of {len(run.pages)} pages failed; "
                "see their page results for each error",
            )
        return TaskStatus.COMPLETED, None

    async def fail_internal(
        self, request: OcrRequest, record: RequestRecord, exc: BaseException
    ) -> None:
        """A bug ended the task: say so on the progress topic rather than stall the partition."""
        run = TaskRun(request=request, record=record, started_at=datetime.now(UTC))
        error = ErrorInfo(
            code=ErrorCode.INTERNAL,
            message=f"internal error {type(exc).__name__}: {exc}; please report it"[:2048],
        )
        self._metrics.error(ErrorCode.INTERNAL.value)
        await self._finish(run, TaskStatus.FAILED, error)

    # -- the work ------------------------------------------------------------------------

    async def _process(self, run: TaskRun) -> None:
        request = run.request
        start = time.perf_counter()
        document = await fetch_document(request.source, self._settings)
        opened = await open_document(document, self._settings, request.task_id)
        run.clock.fetch_ms = _ms(start)
        self._metrics.stage("fetch", run.clock.fetch_ms / 1000)
        try:
            run.page_count = opened.page_count
            selected = select_pages(request.pages, opened.page_count)
            run.pages_total = len(selected)
            await self._store.set_pages_total(request.task_id, len(selected))
            await self._progress(run, TaskStatus.STARTED)
            todo = [page for page in selected if page not in run.pages]
            await self._pages(run, opened, todo)
        finally:
            await opened.close()

    async def _pages(self, run: TaskRun, opened: OpenedDocument, todo: list[int]) -> None:
        interrupted = False
        async with asyncio.TaskGroup() as group:
            for page in todo:
                try:
                    await self._scheduler.acquire(run.task_id)
                except SchedulerClosed:
                    interrupted = True
                    break
                group.create_task(self._page_in_slot(run, opened, page))
        if interrupted:
            raise TaskInterrupted("scheduler closed: shutting down")

    async def _page_in_slot(self, run: TaskRun, opened: OpenedDocument, page: int) -> None:
        structlog.contextvars.bind_contextvars(page=page)
        try:
            result = await self._compute_page(run, opened, page)
            start = time.perf_counter()
            await self._publisher.result(result)
            await self._store.page_done(run.task_id, page, result.status is PageStatus.OK)
            run.pages[page] = "ok" if result.status is PageStatus.OK else "failed"
            publish_ms = _ms(start)
            run.clock.publish_ms += publish_ms
            self._metrics.stage("publish", publish_ms / 1000)
            self._metrics.page_done(
                result.status.value, result.timings.infer_ms / 1000,
                result.timings.queue_ms / 1000,
            )
            await self._progress(run, TaskStatus.PAGE_DONE, page=page)
            await self._publisher.timing(
                TimingEvent(
                    task_id=run.task_id,
                    attempt=run.request.attempt,
                    kind=TimingKind.PAGE,
                    page=page,
                    queued_at=run.record.queued_at,
                    started_at=result.produced_at,
                    finished_at=datetime.now(UTC),
                    stages=StageDurations(
                        queue_ms=result.timings.queue_ms,
                        render_ms=result.timings.render_ms,
                        infer_ms=result.timings.infer_ms,
                        postprocess_ms=result.timings.postprocess_ms,
                        publish_ms=publish_ms,
                    ),
                    engine=self._engine.identity,
                    consumer_id=self._consumer_id,
                )
            )
        finally:
            self._scheduler.release(run.task_id)

    async def _compute_page(self, run: TaskRun, opened: OpenedDocument, page: int) -> PageResult:
        request = run.request
        timings: dict[str, float] = {"render_ms": 0.0, "infer_ms": 0.0}
        info = PageImageInfo(width_px=0, height_px=0, dpi=request.dpi)
        start = time.perf_counter()
        try:
            image = await opened.render_page(page, request.dpi)
            timings["render_ms"] = _ms(start)
            run.clock.render_ms += timings["render_ms"]
            self._metrics.stage("render", timings["render_ms"] / 1000)
            info = PageImageInfo(
                width_px=image.image.width, height_px=image.image.height, dpi=image.dpi,
                width_pt=image.width_pt, height_pt=image.height_pt,
            )
            start = time.perf_counter()
            try:
                async with asyncio.timeout(self._settings.page_timeout_s):
                    output = await self._engine.infer(
                        PageRequest(
                            request_id=f"{request.task_id}/{page}/{request.attempt}",
                            page=image,
                            prompt=request.prompt,
                            locate_text=request.locate_text,
                        )
                    )
            except TimeoutError:
                raise OcrError(
                    ErrorCode.PAGE_TIMEOUT,
                    f"page {page} took longer than {self._settings.page_timeout_s:.0f} s in "
                    "the engine; raise OCR_PAGE_TIMEOUT_S or lower OCR_MAX_TOKENS",
                ) from None
            timings["infer_ms"] = _ms(start)
            run.clock.infer_ms += timings["infer_ms"]
            self._metrics.stage("infer", timings["infer_ms"] / 1000)
            return self._page_result(run, page, info, output, timings)
        except OcrError as exc:
            self._metrics.error(exc.code.value)
            log.warning("page_failed", code=exc.code.value, message=exc.message)
            return self._failed_page(run, page, info, exc.info(), timings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine bug must fail the page, not the consumer
            log.exception("page_crashed")
            self._metrics.error(ErrorCode.ENGINE_ERROR.value)
            error = ErrorInfo(
                code=ErrorCode.ENGINE_ERROR,
                message=f"engine raised {type(exc).__name__}: {exc}"[:2048],
            )
            return self._failed_page(run, page, info, error, timings)

    def _page_result(
        self, run: TaskRun, page: int, info: PageImageInfo, output: EngineOutput,
        timings: dict[str, float],
    ) -> PageResult:
        request = run.request
        return PageResult(
            task_id=request.task_id,
            page=page,
            page_count=max(run.page_count, page),
            attempt=request.attempt,
            status=PageStatus.OK,
            prompt=request.prompt,
            markdown=output.markdown,
            text=output.text,
            blocks=output.blocks,
            finish_reason=output.finish_reason,
            truncated=output.truncated,
            tokens=TokenCounts(prompt=output.prompt_tokens, output=output.output_tokens),
            engine=self._engine.identity,
            image=info,
            timings=PageTimings(
                render_ms=timings["render_ms"],
                infer_ms=timings["infer_ms"],
                queue_ms=max((run.started_at - run.record.queued_at).total_seconds(), 0) * 1000,
            ),
            metadata=request.metadata,
            produced_at=datetime.now(UTC),
        )

    def _failed_page(
        self, run: TaskRun, page: int, info: PageImageInfo, error: ErrorInfo,
        timings: dict[str, float],
    ) -> PageResult:
        request = run.request
        return PageResult(
            task_id=request.task_id,
            page=page,
            page_count=max(run.page_count, page),
            attempt=request.attempt,
            status=PageStatus.FAILED,
            prompt=request.prompt,
            finish_reason=FinishReason.ERROR,
            error=error,
            engine=self._engine.identity,
            image=info,
            timings=PageTimings(render_ms=timings["render_ms"], infer_ms=timings["infer_ms"]),
            metadata=request.metadata,
            produced_at=datetime.now(UTC),
        )

    # -- endings -------------------------------------------------------------------------

    async def _finish(self, run: TaskRun, status: TaskStatus, error: ErrorInfo | None) -> None:
        await self._store.finish(run.task_id, status, error)
        finished = datetime.now(UTC)
        await self._publisher.timing(
            TimingEvent(
                task_id=run.task_id,
                attempt=run.request.attempt,
                kind=TimingKind.TASK,
                pages=len(run.pages),
                queued_at=run.record.queued_at,
                started_at=run.started_at,
                finished_at=finished,
                stages=run.clock.durations(
                    (run.started_at - run.record.queued_at).total_seconds() * 1000
                ),
                engine=self._engine.identity,
                consumer_id=self._consumer_id,
            )
        )
        await self._progress(run, status, error=error)
        self._metrics.task_done(status.value)
        log.info(
            "task_finished", status=status.value, pages=len(run.pages),
            pages_failed=run.pages_failed, seconds=(finished - run.started_at).total_seconds(),
        )

    async def _announce_duplicate(
        self, request: OcrRequest, record: RequestRecord, state: TaskState
    ) -> None:
        """A re-sent finished task: say its final status again instead of recomputing."""
        await self._publisher.progress(
            ProgressEvent(
                task_id=request.task_id,
                attempt=state.attempt,
                status=state.status,
                pages_done=state.pages_done,
                pages_failed=state.pages_failed,
                pages_total=state.pages_total,
                error=state.error,
                replayed=True,
                consumer_id=self._consumer_id,
                request_partition=record.partition,
                request_offset=record.offset,
                metadata=request.metadata,
                emitted_at=datetime.now(UTC),
            )
        )
        self._metrics.task_done("duplicate")
        log.info("task_duplicate", status=state.status.value)

    async def reject_conflict(self, request: OcrRequest, record: RequestRecord) -> None:
        """A request whose task id is running here for different content: dead-lettered,
        never merged into the running task (that would drop it without a trace)."""
        structlog.contextvars.bind_contextvars(
            task_id=request.task_id, partition=record.partition, offset=record.offset
        )
        await self._conflict(request, record, "running")

    async def _conflict(self, request: OcrRequest, record: RequestRecord, earlier: str) -> None:
        message = (
            f"task id {request.task_id!r} was already used for a different request "
            f"({earlier}); use a new task id, or set force=true to replace the earlier task"
        )
        self._metrics.dlq(ErrorCode.TASK_ID_CONFLICT.value)
        log.warning("task_id_conflict")
        await self._publisher.dead_letter(
            code=ErrorCode.TASK_ID_CONFLICT, message=message, topic=record.topic,
            partition=record.partition, offset=record.offset,
            timestamp_ms=record.timestamp_ms, key=record.key, value=record.value,
            task_id=request.task_id,
        )

    # -- helpers -------------------------------------------------------------------------

    async def _progress(
        self, run: TaskRun, status: TaskStatus, *, page: int | None = None,
        error: ErrorInfo | None = None,
    ) -> None:
        await self._publisher.progress(
            ProgressEvent(
                task_id=run.task_id,
                attempt=run.request.attempt,
                status=status,
                pages_done=len(run.pages),
                pages_failed=run.pages_failed,
                pages_total=run.pages_total,
                page=page,
                error=error,
                consumer_id=self._consumer_id,
                request_partition=run.record.partition,
                request_offset=run.record.offset,
                metadata=run.request.metadata,
                emitted_at=datetime.now(UTC),
            )
        )

    async def _take_lease(self, task_id: str) -> None:
        """Wait for another owner (e.g. the consumer that just lost this partition)."""
        waited = 0.0
        while True:
            holder = await self._store.acquire_lease(task_id, self._consumer_id)
            if holder is None:
                return
            if waited == 0.0:
                log.info("task_lease_busy", holder=holder)
            await asyncio.sleep(0.5)
            waited += 0.5

    async def _keep_lease(self, task_id: str) -> None:
        interval = max(self._settings.lease_ttl_s / 3, 1.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._store.refresh_lease(task_id, self._consumer_id)
            except Exception as exc:  # a missed refresh only risks a duplicate, not loss
                log.warning("lease_refresh_failed", error=str(exc))
