"""One task from request to final status: fetch, render, infer, store figures, publish,
record.

A task ends in exactly one of three ways:
- finished (completed, failed, cancelled, or recognised as a duplicate): its offset may be
  committed;
- interrupted (partition revoked, shutdown, engine death): nothing final is written, the
  lease is released, and whoever reads the request next resumes from the pages Redis
  recorded;
- crashed process: same as interrupted, once the lease expires.

The runner knows its surroundings only through small protocols (consumer/task_io.py and
the Engine protocol), so tests/unit/test_task_runner.py runs it on in-memory fakes.

The page deadline (OCR_PAGE_TIMEOUT_S) is the runner's alone: it cancels the engine's
`infer()`, which the Engine contract turns into an abort inside the engine. A cancel
request (consumer/cancel.py) cancels the run's pages the same way; a page is published and
recorded whole or not at all, whatever stops the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import structlog

from consumer.artifacts.figures import store_page_artifacts
from consumer.artifacts.store import ArtifactStore
from consumer.cancel import RunningTasks, TaskCancelled, cancel_error
from consumer.config import Settings
from consumer.documents.render import RenderBudgetSpent, select_pages
from consumer.engines.base import Engine, EngineOutput, PageRequest
from consumer.errors import OcrError, RecordTooLarge
from consumer.lease import TaskLease
from consumer.log import get_logger
from consumer.metrics import ConsumerMetrics
from consumer.page_image import PageImage
from consumer.records import RequestRecord
from consumer.redis_outage import redis_waits_excluded
from consumer.scheduler import PageScheduler, SchedulerClosed
from consumer.stages import Stage, StageRecorder, StageTimes, elapsed_ms
from consumer.state import TaskState
from consumer.task_io import DocumentSource, EventSink, FetchedDocuments, PageSource, TaskStore
from consumer.task_run import TaskRun, progress_event
from schemas.common import ErrorCode, ErrorInfo, MetadataValue
from schemas.control import CancelRequest
from schemas.progress import TaskStatus
from schemas.request import OcrRequest
from schemas.result import PageImageInfo, PageResult

log = get_logger(__name__)


class TaskInterrupted(Exception):
    """The task stopped before its end (revoke or shutdown); it stays resumable."""


class EngineDead(TaskInterrupted):
    """The engine died under the task: its pages are not at fault, so the task is left
    unfinished (offset uncommitted) for the restarted consumer to resume."""


def _image_info(image: PageImage) -> PageImageInfo:
    return PageImageInfo(
        width_px=image.image.width, height_px=image.image.height, dpi=image.dpi,
        width_pt=image.width_pt, height_pt=image.height_pt,
    )


class TaskRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        scheduler: PageScheduler,
        store: TaskStore,
        events: EventSink,
        metrics: ConsumerMetrics,
        consumer_id: str,
        documents: DocumentSource | None = None,
        artifacts: ArtifactStore | None = None,
        running: RunningTasks | None = None,
    ) -> None:
        """`artifacts`: where figures go (None: not stored, the Markdown says so);
        `running`: the runs a cancel can reach (the app shares it with its CancelWatch)."""
        self._settings = settings
        self._engine = engine
        self._scheduler = scheduler
        self._store = store
        self._events = events
        self._metrics = metrics
        self._consumer_id = consumer_id
        self._documents = documents if documents is not None else FetchedDocuments(settings)
        self._artifacts = artifacts
        self._running = running if running is not None else RunningTasks()

    # -- entry points --------------------------------------------------------------------

    async def run(self, request: OcrRequest, record: RequestRecord) -> TaskStatus | None:
        """Do the task; returns its final status, or None when it was a duplicate."""
        structlog.contextvars.bind_contextvars(
            task_id=request.task_id, partition=record.partition, offset=record.offset
        )
        fingerprint = request.content_fingerprint()
        # A re-sent finished task, or a reused id, is settled without waiting for a lease.
        state = await self._store.load(request.task_id)
        if await self._settled(request, record, fingerprint, state):
            return None
        run = self._new_run(request, record)
        await self._progress(run, TaskStatus.QUEUED)
        async with TaskLease(
            self._store, request.task_id, self._consumer_id, self._settings.lease_ttl_s
        ):
            # Read again under the lease: an owner we waited for may have finished the task
            # or recorded more pages meanwhile.
            state = await self._store.load(request.task_id)
            if await self._settled(request, record, fingerprint, state):
                return None
            status, error = await self._run_leased(run, state, fingerprint)
            await self._finish(run, status, error)
            return status

    async def fail_internal(
        self, request: OcrRequest, record: RequestRecord, exc: BaseException
    ) -> None:
        """A bug ended the task: say so on the progress topic rather than stall the partition."""
        error = ErrorInfo(
            code=ErrorCode.INTERNAL,
            message=f"internal error {type(exc).__name__}: {exc}; please report it"[:2048],
        )
        self._metrics.error(ErrorCode.INTERNAL.value)
        await self._finish(self._new_run(request, record), TaskStatus.FAILED, error)

    async def reject_conflict(self, request: OcrRequest, record: RequestRecord) -> None:
        """A request whose task id is running here for different content: dead-lettered,
        never merged into the running task (that would drop it without a trace)."""
        structlog.contextvars.bind_contextvars(
            task_id=request.task_id, partition=record.partition, offset=record.offset
        )
        await self._conflict(request, record, "running")

    async def dead_letter(
        self, record: RequestRecord, *, code: ErrorCode, message: str, task_id: str | None
    ) -> None:
        """Refuse the request record: counted, then published to the dead-letter topic."""
        self._metrics.dlq(code.value)
        await self._events.dead_letter(record, code=code, message=message, task_id=task_id)

    async def cancel(self, cancel: CancelRequest, record: RequestRecord) -> None:
        """A cancel record: mark the task cancelled for whichever member runs it (it stops
        the run); a task nobody runs now ends `cancelled` here, with the pages it has (none
        for a task not seen yet), and one that already ended is announced again."""
        task_id = cancel.task_id
        structlog.contextvars.bind_contextvars(
            task_id=task_id, partition=record.partition, offset=record.offset
        )
        state = await self._store.load(task_id)
        if state is not None and state.status.is_final:
            log.info("task_cancel_too_late", status=state.status.value)
            await self._announce(task_id, {}, record, state)
            return
        await self._store.request_cancel(task_id, cancel.reason)
        here = self._running.cancel(task_id, cancel.reason)  # no need to wait for the notice
        log.info("task_cancel_requested", running_here=here, known=state is not None)
        if here or await self._store.lease_holder(task_id) is not None:
            return  # the run stops and ends the task itself
        # Nobody runs it: a run that starts later finds it final (or the marker).
        error = cancel_error(cancel.reason)
        await self._store.finish(task_id, TaskStatus.CANCELLED, error)
        pages = state.pages if state is not None else {}
        await self._events.progress(
            progress_event(
                task_id, {}, record, TaskStatus.CANCELLED, consumer_id=self._consumer_id,
                attempt=state.attempt if state is not None else 0, pages=pages,
                pages_total=state.pages_total if state is not None else None, error=error,
            )
        )
        self._metrics.task_done(TaskStatus.CANCELLED.value)
        log.info("task_finished", status=TaskStatus.CANCELLED.value, pages=len(pages))

    # -- before the work -----------------------------------------------------------------

    def _new_run(self, request: OcrRequest, record: RequestRecord) -> TaskRun:
        return TaskRun(
            request=request, record=record, started_at=datetime.now(UTC),
            consumer_id=self._consumer_id, engine=self._engine.identity,
            stages=StageRecorder(self._metrics.stage),
        )

    async def _settled(
        self, request: OcrRequest, record: RequestRecord, fingerprint: str,
        state: TaskState | None,
    ) -> bool:
        """True when the recorded state already answers the request (a finished duplicate,
        or a conflicting reuse of the task id); `force` always recomputes."""
        if state is None or request.force:
            return False
        if state.fingerprint and state.fingerprint != fingerprint:
            await self._conflict(request, record, f"status {state.status.value}")
            return True
        if state.status.is_final:
            await self._announce_duplicate(request, record, state)
            return True
        return False

    async def _run_leased(
        self, run: TaskRun, state: TaskState | None, fingerprint: str
    ) -> tuple[TaskStatus, ErrorInfo | None]:
        request = run.request
        reset = request.force or state is None
        if state is not None and not reset:
            run.pages = dict(state.pages)
            run.pages_total = state.pages_total
        if request.force:
            await self._store.clear_cancel(request.task_id)  # force starts a cancelled task
        await self._store.begin(
            request.task_id, fingerprint=fingerprint, attempt=request.attempt,
            owner=self._consumer_id, reset_pages=reset,
        )
        self._metrics.task_queue_latency(run.queue_ms / 1000)
        log.info("task_started", resumed_pages=len(run.pages), attempt=request.attempt)
        try:
            with self._running.running(request.task_id) as scope:
                # A cancel sent before this run registered: its notice found no run here.
                cancelled = await self._store.cancel_reasons([request.task_id])
                if request.task_id in cancelled:
                    scope.cancel(cancelled[request.task_id])
                try:
                    async with scope, asyncio.timeout(self._settings.task_timeout_s) as budget:
                        # Waiting out a Redis outage is not the task's time (defect 5).
                        with redis_waits_excluded(budget):
                            await self._process(run)
                except TimeoutError:
                    raise OcrError(
                        ErrorCode.TASK_TIMEOUT,
                        f"task took longer than {self._settings.task_timeout_s:g} s "
                        f"({len(run.pages)} pages done); raise OCR_TASK_TIMEOUT_S or split "
                        "the document with page ranges",
                    ) from None
        except TaskCancelled as cancel:
            log.info("task_cancelled", reason=cancel.reason, pages=len(run.pages))
            return TaskStatus.CANCELLED, cancel_error(cancel.reason)
        except OcrError as exc:
            self._metrics.error(exc.code.value)
            log.warning("task_failed", code=exc.code.value, message=exc.message)
            return TaskStatus.FAILED, exc.info()
        if run.task_error is not None:
            log.warning("task_failed", code=run.task_error.code.value,
                        message=run.task_error.message)
            return TaskStatus.FAILED, run.task_error
        if run.pages_failed:
            return TaskStatus.COMPLETED, ErrorInfo(
                code=ErrorCode.PAGES_FAILED,
                message=f"{run.pages_failed} of {len(run.pages)} pages failed; "
                "see their page results for each error",
            )
        return TaskStatus.COMPLETED, None

    # -- the work ------------------------------------------------------------------------

    async def _process(self, run: TaskRun) -> None:
        request = run.request
        with run.stages.timed(Stage.FETCH):
            opened = await self._documents.open(request)
        try:
            run.page_count = opened.page_count
            selected = select_pages(request.pages, opened.page_count)
            run.pages_total = len(selected)
            await self._store.set_pages_total(request.task_id, len(selected))
            await self._progress(run, TaskStatus.STARTED)
            todo = [page for page in selected if page not in run.pages]
            run.pages_began()
            await self._pages(run, opened, todo)
        finally:
            await opened.close()

    async def _pages(self, run: TaskRun, opened: PageSource, todo: list[int]) -> None:
        interrupted = False
        try:
            async with asyncio.TaskGroup() as group:
                for page in todo:
                    waiting = time.perf_counter()
                    # Charged its own size: a 600-dpi page weighs 17 times a 144-dpi one.
                    pixels = opened.page_pixels(page, run.request.dpi)
                    try:
                        await self._scheduler.acquire(run.task_id, pixels)
                    except SchedulerClosed:
                        interrupted = True
                        break
                    # The page's own wait for the in-flight budget (ocr_page_queue_seconds);
                    # the wait in Kafka before the task started is ocr_task_queue_seconds.
                    queue_s = time.perf_counter() - waiting
                    group.create_task(self._page_in_slot(run, opened, page, pixels, queue_s))
        except* TaskInterrupted as group_error:
            # One page saw the engine die; the group cancelled its siblings. The task as a
            # whole is interrupted, not failed.
            raise group_error.exceptions[0] from None
        if interrupted:
            raise TaskInterrupted("scheduler closed: shutting down")

    async def _page_in_slot(
        self, run: TaskRun, opened: PageSource, page: int, pixels: int, queue_s: float
    ) -> None:
        structlog.contextvars.bind_contextvars(page=page)
        started_at = datetime.now(UTC)
        times = StageTimes()
        try:
            result = await self._compute_page(run, opened, page, times)
            # From here the page is published and recorded whole: a cancel, revoke or
            # shutdown that arrives meanwhile waits for it, then goes on stopping the run.
            publishing = asyncio.ensure_future(
                self._publish_page(run, result, started_at, times, queue_s)
            )
            try:
                await asyncio.shield(publishing)
            except asyncio.CancelledError:
                await publishing
                raise
        finally:
            self._scheduler.release(run.task_id, pixels)

    async def _publish_page(
        self, run: TaskRun, result: PageResult, started_at: datetime, times: StageTimes,
        queue_s: float,
    ) -> None:
        page = result.page
        with run.stages.timed(Stage.PUBLISH, times):
            try:
                await self._events.result(result, run_tag=run.run_tag)
            except RecordTooLarge as exc:
                # The results topic refuses the page's result as too large: the page fails
                # alone (it used to fail the task through the TaskGroup).
                log.warning("page_failed", code=exc.code.value, message=exc.message)
                self._metrics.error(exc.code.value)
                refused = run.too_large(page, exc.message)
                result = run.page_result(page, result.image, times, refused)
                await self._events.result(result, run_tag=run.run_tag)
            await self._store.page_done(run.task_id, page, result.status)
        run.page_done(page, result.status)
        self._metrics.page_done(result.status.value, times[Stage.INFER] / 1000, queue_s)
        await self._progress(run, TaskStatus.PAGE_DONE, page=page)
        await self._events.timing(run.page_timing(page, started_at, times), run_tag=run.run_tag)

    async def _compute_page(
        self, run: TaskRun, opened: PageSource, page: int, times: StageTimes
    ) -> PageResult:
        info = PageImageInfo(width_px=0, height_px=0, dpi=run.request.dpi)
        try:
            with run.stages.timed(Stage.RENDER, times):
                image = await opened.render_page(page, run.request.dpi)
            info = _image_info(image)
            output, postprocess_ms = await self._infer(run, image, times)
            # Outside the engine's deadline (the engine is done), inside the task's.
            start = time.perf_counter()
            stored = await store_page_artifacts(
                self._artifacts, output, image,
                page_image=self._settings.artifact_page_images,
            )
            run.stages.record(Stage.POSTPROCESS, postprocess_ms + elapsed_ms(start), times)
            for failure in stored.failures:
                self._metrics.error(failure.code.value)
                log.warning("artifact_not_stored", code=failure.code.value,
                            message=failure.message)
            if stored.page_image is not None:
                info = info.model_copy(update={"artifact": stored.page_image})
            return run.page_result(page, info, times, stored.output)
        except OcrError as exc:
            self._interrupt_if_engine_dead(exc)
            if isinstance(exc, RenderBudgetSpent) and run.task_error is None:
                run.task_error = exc.info()  # the other pages fail at once, as this one
            self._metrics.error(exc.code.value)
            log.warning("page_failed", code=exc.code.value, message=exc.message)
            return run.page_result(page, info, times, exc.info())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine bug must fail the page, not the consumer
            self._interrupt_if_engine_dead(exc)
            log.exception("page_crashed")
            self._metrics.error(ErrorCode.ENGINE_ERROR.value)
            error = ErrorInfo(
                code=ErrorCode.ENGINE_ERROR,
                message=f"engine raised {type(exc).__name__}: {exc}"[:2048],
            )
            return run.page_result(page, info, times, error)

    async def _infer(
        self, run: TaskRun, image: PageImage, times: StageTimes
    ) -> tuple[EngineOutput, float]:
        """The engine's work on one page, under the page deadline (this is its one owner):
        the output, and the milliseconds of it the engine spent post-processing (the
        caller adds its own post-processing to that stage)."""
        request = run.request
        timeout_s = self._settings.page_timeout_s
        start = time.perf_counter()
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                output = await self._engine.infer(
                    PageRequest(
                        request_id=f"{request.task_id}/{image.page}/{request.attempt}",
                        page=image,
                        prompt=request.prompt,
                        locate_text=request.locate_text,
                    )
                )
        except TimeoutError:
            if not deadline.expired():
                raise  # the engine's own TimeoutError: an engine failure, not our deadline
            raise OcrError(
                ErrorCode.PAGE_TIMEOUT,
                f"page {image.page} took longer than {timeout_s:.0f} s in the engine; raise "
                "OCR_PAGE_TIMEOUT_S or lower OCR_MAX_TOKENS",
            ) from None
        # The engine post-processes inside infer(); its share is a stage of its own so that
        # inference time is decoding alone and the stages add up.
        engine_ms = elapsed_ms(start)
        postprocess_ms = min(max(output.postprocess_ms, 0.0), engine_ms)
        run.stages.record(Stage.INFER, engine_ms - postprocess_ms, times)
        return output, postprocess_ms

    def _interrupt_if_engine_dead(self, exc: BaseException) -> None:
        """A page that failed because the engine died is not the page's fault: ending it
        with ENGINE_ERROR would finish (and commit) the task with pages nobody computed."""
        health = self._engine.health()
        if not health.alive:
            raise EngineDead(f"engine dead: {health.reason}") from exc

    # -- endings -------------------------------------------------------------------------

    async def _finish(self, run: TaskRun, status: TaskStatus, error: ErrorInfo | None) -> None:
        if not await self._store.finish(run.task_id, status, error):
            # A final status is recorded already (this run's own, when what raised came
            # after it): announce that one; never publish one that contradicts it.
            state = await self._store.load(run.task_id)
            log.warning("task_final_kept", status=status.value,
                        recorded=state.status.value if state is not None else None)
            if state is not None:
                await self._announce(run.task_id, run.request.metadata, run.record, state)
            return
        finished = datetime.now(UTC)
        await self._events.timing(run.task_timing(finished), run_tag=run.run_tag)
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
        await self._announce(request.task_id, request.metadata, record, state)
        self._metrics.task_done("duplicate")
        log.info("task_duplicate", status=state.status.value)

    async def _announce(
        self, task_id: str, metadata: Mapping[str, MetadataValue], record: RequestRecord,
        state: TaskState,
    ) -> None:
        """The recorded final status again (`replayed`), answering `record`."""
        await self._events.progress(
            progress_event(
                task_id, metadata, record, state.status, consumer_id=self._consumer_id,
                attempt=state.attempt, pages=state.pages, pages_total=state.pages_total,
                error=state.error, replayed=True,
            )
        )

    async def _conflict(self, request: OcrRequest, record: RequestRecord, earlier: str) -> None:
        message = (
            f"task id {request.task_id!r} was already used for a different request "
            f"({earlier}); use a new task id, or set force=true to replace the earlier task"
        )
        log.warning("task_id_conflict")
        await self.dead_letter(
            record, code=ErrorCode.TASK_ID_CONFLICT, message=message, task_id=request.task_id
        )

    async def _progress(
        self, run: TaskRun, status: TaskStatus, *, page: int | None = None,
        error: ErrorInfo | None = None,
    ) -> None:
        await self._events.progress(run.progress(status, page=page, error=error),
                                    run_tag=run.run_tag)
