"""The task runner on in-memory fakes (tests/support/task_fakes.py) and the scripted engine:
what a task publishes and records for each way it can end. The same paths on the real
stack run in tests/integration/test_pipeline.py and test_loop_guarantees.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError

from consumer import lease as lease_module
from consumer.artifacts.store import ArtifactError, ArtifactStore, StoredFile, open_artifact_store
from consumer.cancel import RunningTasks
from consumer.config import Settings
from consumer.documents.render import RenderBudgetSpent
from consumer.engines.base import Engine, EngineHealth, EngineOutput, EngineStats, PageRequest
from consumer.errors import OcrError, RecordTooLarge
from consumer.metrics import ConsumerMetrics
from consumer.scheduler import DEFAULT_PAGE_PIXELS, PageScheduler
from consumer.state import TaskState
from consumer.tasks import EngineDead, TaskInterrupted, TaskRunner
from schemas.common import ErrorCode
from schemas.progress import TaskStatus
from schemas.request import OcrRequest
from schemas.result import MAX_PAGE_TEXT, EngineIdentity, PageResult, PageStatus
from schemas.timing import TimingEvent, TimingKind
from tests.support.engines import FaultyEngine, ScriptedEngine
from tests.support.task_fakes import MemoryDocuments, MemorySink, MemoryStore, record


def _request(task_id: str = "t", **extra: object) -> OcrRequest:
    body = {"task_id": task_id, "source": {"uri": "file:///srv/ocr-blobs/a.pdf"}, **extra}
    return OcrRequest.model_validate(body, strict=False)


@dataclass
class Bench:
    """One runner and everything it talks to."""

    engine: Engine
    store: MemoryStore = field(default_factory=MemoryStore)
    sink: MemorySink = field(default_factory=MemorySink)
    documents: MemoryDocuments = field(default_factory=MemoryDocuments)
    metrics: ConsumerMetrics = field(default_factory=ConsumerMetrics)
    scheduler: PageScheduler = field(default_factory=lambda: PageScheduler(2))
    settings: Settings = field(default_factory=Settings)
    artifacts: ArtifactStore | None = None
    running: RunningTasks = field(default_factory=RunningTasks)

    @property
    def runner(self) -> TaskRunner:
        return TaskRunner(
            settings=self.settings, engine=self.engine, scheduler=self.scheduler,
            store=self.store, events=self.sink, metrics=self.metrics, consumer_id="unit",
            documents=self.documents, artifacts=self.artifacts, running=self.running,
        )

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def _bench(engine: Engine | None = None, **settings: float) -> Bench:
    return Bench(engine or ScriptedEngine(), settings=Settings(lease_ttl_s=5, **settings))


class HangingEngine:
    """Hangs on `hang_pages` until cancelled, and says which pages were cancelled."""

    def __init__(self, hang_pages: set[int], *, raise_timeout: bool = False) -> None:
        self.inner = ScriptedEngine()
        self.hang_pages = hang_pages
        self.raise_timeout = raise_timeout
        self.cancelled: list[str] = []

    @property
    def identity(self) -> EngineIdentity:
        return self.inner.identity

    @property
    def suggested_inflight_pages(self) -> int:
        return 2

    async def start(self) -> None:
        return None

    async def infer(self, request: PageRequest) -> EngineOutput:
        if request.page.page in self.hang_pages:
            if self.raise_timeout:
                raise TimeoutError("the engine's own client timed out")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(request.request_id)
                raise
        return await self.inner.infer(request)

    def stats(self) -> EngineStats:
        return EngineStats()

    def health(self) -> EngineHealth:
        return EngineHealth(alive=True)

    async def close(self) -> None:
        return None


async def test_a_task_publishes_every_page_then_completes() -> None:
    bench = _bench()
    status = await bench.runner.run(_request(), record(2, 7))
    assert status is TaskStatus.COMPLETED
    assert sorted(r.page for r in bench.sink.results) == [1, 2, 3]
    assert all(r.status is PageStatus.OK for r in bench.sink.results)
    assert bench.sink.statuses == ["queued", "started", *["page_done"] * 3, "completed"]
    final = bench.sink.progress_events[-1]
    assert (final.pages_done, final.pages_failed, final.pages_total) == (3, 0, 3)
    assert (final.request_partition, final.request_offset) == (2, 7)
    assert bench.store.calls == ["begin t reset", "finish t completed"]
    assert bench.store.states["t"].pages == dict.fromkeys([1, 2, 3], PageStatus.OK)
    assert not bench.store.leases, "the lease is released"
    assert bench.documents.opened[0].closed
    assert [t.kind for t in bench.sink.timings].count(TimingKind.PAGE) == 3
    assert bench.sink.timings[-1].kind is TimingKind.TASK
    assert bench.sink.run_tags == {""}


class BudgetWatchingEngine(ScriptedEngine):
    """Notes the pixels in use and the pages in the engine at each page it is given."""

    def __init__(self, scheduler: PageScheduler) -> None:
        super().__init__(delay_s=0.01)
        self.scheduler = scheduler
        self.pixels_seen: list[int] = []
        self.in_engine = 0
        self.most_in_engine = 0

    async def infer(self, request: PageRequest) -> EngineOutput:
        self.pixels_seen.append(self.scheduler.pixels_in_use)
        self.in_engine += 1
        self.most_in_engine = max(self.most_in_engine, self.in_engine)
        try:
            return await super().infer(request)
        finally:
            self.in_engine -= 1


async def test_each_page_is_charged_its_own_pixels() -> None:
    """Issue 16 defect 8: pages of 6,000 pixels against a budget of 13,000 pixels (beside
    the default page kept in reserve for other tasks) with four page slots run at most two
    at a time, and the budget sees their real size."""
    scheduler = PageScheduler(4, budget_pixels=13_000 + DEFAULT_PAGE_PIXELS)
    engine = BudgetWatchingEngine(scheduler)
    bench = _bench(engine)
    bench.scheduler = scheduler
    bench.documents.pages["t"] = 6
    bench.documents.pixels = 6_000
    status = await bench.runner.run(_request(), record())
    assert status is TaskStatus.COMPLETED
    assert engine.most_in_engine == 2
    assert set(engine.pixels_seen) <= {6_000, 12_000} and 12_000 in engine.pixels_seen
    assert scheduler.pixels_in_use == 0


async def test_a_spent_render_budget_fails_the_task_with_its_code() -> None:
    """Issue 16 defect 3: once a document's render budget is spent, its remaining pages
    fail DOCUMENT_TOO_COMPLEX and so does the task (it completed PAGES_FAILED before)."""
    bench = _bench()
    spent = RenderBudgetSpent(ErrorCode.DOCUMENT_TOO_COMPLEX, "too complex to render")
    bench.documents.fail_pages = {2: spent, 3: spent}
    status = await bench.runner.run(_request(), record())
    assert status is TaskStatus.FAILED
    final = bench.sink.progress_events[-1]
    assert final.error is not None and final.error.code is ErrorCode.DOCUMENT_TOO_COMPLEX
    assert [r.status for r in sorted(bench.sink.results, key=lambda r: r.page)] == [
        PageStatus.OK, PageStatus.FAILED, PageStatus.FAILED
    ]


class TaskTimingRefused(MemorySink):
    """Refuses the task's timing event, published after its final status is recorded."""

    async def timing(self, event: TimingEvent, *, run_tag: str = "") -> None:
        if event.kind is TimingKind.TASK:
            raise KafkaError("refused for good")
        await super().timing(event, run_tag=run_tag)


async def test_an_error_after_the_final_status_never_announces_another() -> None:
    """Review of issue 16: run() raising after Redis recorded `completed` made the loop's
    fail_internal publish `failed INTERNAL` beside it. The recorded status is announced."""
    bench = _bench()
    bench.sink = TaskTimingRefused()
    with pytest.raises(KafkaError):
        await bench.runner.run(_request(), record())
    await bench.runner.fail_internal(_request(), record(), KafkaError("refused for good"))
    assert bench.store.states["t"].status is TaskStatus.COMPLETED
    assert "failed" not in bench.sink.statuses
    final = bench.sink.progress_events[-1]
    assert final.status is TaskStatus.COMPLETED and final.replayed


async def test_stage_times_agree_between_pages_task_and_metrics() -> None:
    bench = _bench(ScriptedEngine(delay_s=0.01))
    await bench.runner.run(_request(), record())
    pages = [t for t in bench.sink.timings if t.kind is TimingKind.PAGE]
    [task] = [t for t in bench.sink.timings if t.kind is TimingKind.TASK]
    for stage in ("render_ms", "infer_ms", "postprocess_ms", "publish_ms"):
        summed = sum(getattr(t.stages, stage) for t in pages)
        assert getattr(task.stages, stage) == pytest.approx(summed)
    assert task.stages.infer_ms >= 30.0
    by_page = {r.page: r.timings for r in bench.sink.results}
    for timing in pages:
        assert timing.page is not None
        assert timing.stages.infer_ms == by_page[timing.page].infer_ms
        assert timing.stages.render_ms == by_page[timing.page].render_ms
    for stage in ("render", "infer", "postprocess", "publish"):
        assert bench.metric("ocr_stage_seconds_count", stage=stage) == 3
    assert bench.metric("ocr_stage_seconds_count", stage="fetch") == 1
    assert bench.metric("ocr_stage_seconds_sum", stage="infer") == pytest.approx(
        task.stages.infer_ms / 1000
    )


async def test_a_finished_task_sent_again_is_announced_not_recomputed() -> None:
    bench = _bench()
    runner = bench.runner
    await runner.run(_request(), record(0, 0))
    before = len(bench.sink.results)
    assert await runner.run(_request(), record(0, 1)) is None
    assert len(bench.sink.results) == before
    replay = bench.sink.progress_events[-1]
    assert replay.replayed and replay.status is TaskStatus.COMPLETED
    assert (replay.pages_done, replay.request_offset) == (3, 1)
    assert bench.metric("ocr_tasks_total", status="duplicate") == 1


async def test_a_reused_task_id_with_other_content_is_dead_lettered() -> None:
    bench = _bench()
    await bench.runner.run(_request(), record(0, 0))
    other = _request(pages=[{"first": 1, "last": 1}])
    assert await bench.runner.run(other, record(0, 1, b"other")) is None
    [(refused, code, message, task_id)] = bench.sink.dead_letters
    assert (refused.offset, refused.value, task_id) == (1, b"other", "t")
    assert code is ErrorCode.TASK_ID_CONFLICT
    assert "force=true" in message and "status completed" in message
    assert bench.metric("ocr_dlq_total", code="TASK_ID_CONFLICT") == 1


async def test_a_conflict_with_a_running_task_is_dead_lettered() -> None:
    bench = _bench()
    await bench.runner.reject_conflict(_request(), record(1, 4))
    [(refused, code, message, _)] = bench.sink.dead_letters
    assert (refused.partition, refused.offset, code) == (1, 4, ErrorCode.TASK_ID_CONFLICT)
    assert "(running)" in message


async def test_an_unfinished_task_resumes_from_its_recorded_pages() -> None:
    bench = _bench()
    engine = bench.engine
    assert isinstance(engine, ScriptedEngine)
    request = _request()
    bench.store.states["t"] = TaskState(
        "t", TaskStatus.STARTED, fingerprint=request.content_fingerprint(),
        pages={1: PageStatus.OK, 2: PageStatus.FAILED},
    )
    status = await bench.runner.run(request, record())
    assert status is TaskStatus.COMPLETED
    assert set(engine.calls) == {("t", 3)}
    assert bench.store.calls[0] == "begin t", "recorded pages are kept"
    final = bench.sink.progress_events[-1]
    assert (final.pages_done, final.pages_failed) == (3, 1)
    assert final.error is not None and final.error.code is ErrorCode.PAGES_FAILED


async def test_force_recomputes_a_finished_task_under_its_own_event_ids() -> None:
    bench = _bench()
    await bench.runner.run(_request(), record(0, 0))
    bench.sink.run_tags.clear()
    status = await bench.runner.run(_request(force=True), record(3, 9))
    assert status is TaskStatus.COMPLETED
    assert bench.store.calls[-2:] == ["begin t reset", "finish t completed"]
    assert bench.sink.run_tags == {"/forced@3.9"}


async def test_a_failing_page_fails_alone() -> None:
    bench = _bench(FaultyEngine(ScriptedEngine(), fail_pages={2}))
    status = await bench.runner.run(_request(), record())
    assert status is TaskStatus.COMPLETED
    by_page = {r.page: r for r in bench.sink.results}
    assert by_page[1].status is PageStatus.OK and by_page[3].status is PageStatus.OK
    error = by_page[2].error
    assert by_page[2].status is PageStatus.FAILED
    assert error is not None and error.code is ErrorCode.ENGINE_ERROR
    assert bench.store.states["t"].pages[2] is PageStatus.FAILED
    assert bench.metric("ocr_pages_total", status="failed") == 1


async def test_a_page_that_fails_to_render_fails_alone() -> None:
    bench = _bench()
    bench.documents.fail_pages = {1: OcrError(ErrorCode.PAGE_RENDER_FAILED, "broken page")}
    await bench.runner.run(_request(), record())
    [failed] = [r for r in bench.sink.results if r.status is PageStatus.FAILED]
    assert failed.page == 1 and failed.image.width_px == 0
    assert failed.error is not None and failed.error.code is ErrorCode.PAGE_RENDER_FAILED


async def test_the_page_deadline_cancels_the_engine_and_fails_the_page() -> None:
    engine = HangingEngine({2})
    bench = _bench(engine, page_timeout_s=0.05)
    status = await bench.runner.run(_request(), record())
    assert status is TaskStatus.COMPLETED
    assert engine.cancelled == ["t/2/0"], "the engine saw the cancellation (its abort)"
    [failed] = [r for r in bench.sink.results if r.status is PageStatus.FAILED]
    assert failed.error is not None and failed.error.code is ErrorCode.PAGE_TIMEOUT
    assert "OCR_PAGE_TIMEOUT_S" in failed.error.message
    assert bench.metric("ocr_errors_total", code="PAGE_TIMEOUT") == 1


async def test_an_engines_own_timeout_is_an_engine_error_not_the_deadline() -> None:
    bench = _bench(HangingEngine({1}, raise_timeout=True))
    await bench.runner.run(_request(), record())
    [failed] = [r for r in bench.sink.results if r.status is PageStatus.FAILED]
    assert failed.error is not None and failed.error.code is ErrorCode.ENGINE_ERROR


async def test_the_task_deadline_fails_the_task() -> None:
    bench = _bench(ScriptedEngine(delay_s=30), task_timeout_s=0.1)
    status = await bench.runner.run(_request(), record())
    assert status is TaskStatus.FAILED
    final = bench.sink.progress_events[-1]
    assert final.status is TaskStatus.FAILED
    assert final.error is not None and final.error.code is ErrorCode.TASK_TIMEOUT
    assert bench.store.calls[-1] == "finish t failed"
    assert not bench.store.leases


async def test_a_document_that_cannot_be_opened_fails_the_task_with_its_code() -> None:
    bench = _bench()
    bench.documents.refuse["t"] = OcrError(ErrorCode.SOURCE_NOT_FOUND, "no such file")
    assert await bench.runner.run(_request(), record()) is TaskStatus.FAILED
    final = bench.sink.progress_events[-1]
    assert final.error is not None and final.error.code is ErrorCode.SOURCE_NOT_FOUND
    assert bench.metric("ocr_stage_seconds_count", stage="fetch") == 0


async def test_engine_death_leaves_the_task_unfinished_and_resumable() -> None:
    engine = ScriptedEngine(die_after=1)
    bench = _bench(engine)
    with pytest.raises(EngineDead):
        await bench.runner.run(_request(), record())
    assert "finish t completed" not in bench.store.calls
    assert all(call.startswith("begin") for call in bench.store.calls)
    assert not {"completed", "failed"} & set(bench.sink.statuses)
    assert not bench.store.leases, "the lease is released for the next owner"
    assert len(bench.store.states["t"].pages) <= 1  # what was published stays recorded


async def test_a_closed_scheduler_interrupts_the_task() -> None:
    bench = _bench()
    bench.scheduler.close()
    with pytest.raises(TaskInterrupted):
        await bench.runner.run(_request(), record())
    assert not {"completed", "failed"} & set(bench.sink.statuses)


async def test_a_held_lease_is_waited_for_and_the_owners_result_announced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lease_module, "RETRY_S", 0.01)
    bench = _bench()
    request = _request()
    bench.store.leases["t"] = "other-consumer"
    bench.store.states["t"] = TaskState(
        "t", TaskStatus.STARTED, fingerprint=request.content_fingerprint()
    )
    running = asyncio.create_task(bench.runner.run(request, record()))
    await asyncio.sleep(0.05)
    assert not running.done(), "waits for the lease"
    bench.store.states["t"].status = TaskStatus.COMPLETED  # the other owner finished
    del bench.store.leases["t"]
    assert await running is None
    assert bench.sink.progress_events[-1].replayed
    assert not bench.sink.results


async def test_a_crash_is_reported_as_an_internal_failure() -> None:
    bench = _bench()
    await bench.runner.fail_internal(_request(), record(), KeyError("oops"))
    final = bench.sink.progress_events[-1]
    assert final.status is TaskStatus.FAILED
    assert final.error is not None and final.error.code is ErrorCode.INTERNAL
    assert "KeyError" in final.error.message
    assert bench.store.calls == ["finish t failed"]


async def test_dead_letter_counts_and_publishes_the_record() -> None:
    bench = _bench()
    refused = record(4, 2, b"\xff")
    await bench.runner.dead_letter(
        refused, code=ErrorCode.REQUEST_NOT_UTF8, message="not UTF-8", task_id=None
    )
    assert bench.sink.dead_letters == [(refused, ErrorCode.REQUEST_NOT_UTF8, "not UTF-8", None)]
    assert bench.metric("ocr_dlq_total", code="REQUEST_NOT_UTF8") == 1



# --- readable progress, raw output, figures -----------------------------------------------

GROUNDED = (
    "<|ref|>title<|/ref|><|det|>[[50, 20, 950, 80]]<|/det|>\n# Sales\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 100, 500, 400]]<|/det|>\n\n"
    "<|ref|>image<|/ref|><|det|>[[550, 100, 900, 400]]<|/det|>\n"
)


async def test_progress_says_percent_time_left_and_a_message() -> None:
    bench = _bench(ScriptedEngine(delay_s=0.02))
    bench.documents.pages["t"] = 4
    await bench.runner.run(_request(), record())
    events = bench.sink.progress_events
    assert [e.message for e in events[:2]] == ["queued", "started: 4 pages to do"]
    page_done = [e for e in events if e.status is TaskStatus.PAGE_DONE]
    assert [e.percent for e in page_done] == [25.0, 50.0, 75.0, 100.0]
    assert all(e.eta_s is not None for e in page_done), "a page of this run gives a pace"
    assert page_done[-1].eta_s == 0.0
    assert page_done[0].message.startswith("1 of 4 pages done, 25%")
    final = events[-1]
    assert (final.percent, final.eta_s) == (100.0, None)
    assert final.message.startswith("completed in ") and final.message.endswith("4 of 4 pages")
    await bench.runner.run(_request(), record(0, 1))
    replayed = bench.sink.progress_events[-1]
    assert replayed.replayed and replayed.message == "completed earlier: 4 of 4 pages"


class BabblingEngine(ScriptedEngine):
    """Answers page 2 with raw output longer than a result may carry."""

    async def infer(self, request: PageRequest) -> EngineOutput:
        output = await super().infer(request)
        if request.page.page == 2:
            output.raw_text = "<|ref|>text<|/ref|>" + "x" * MAX_PAGE_TEXT
        return output


async def test_the_raw_output_is_in_the_result_within_the_contracts_bound() -> None:
    bench = _bench(BabblingEngine(grounded=lambda _: GROUNDED))
    bench.documents.pages["t"] = 2
    await bench.runner.run(_request(), record())
    by_page = {r.page: r for r in bench.sink.results}
    assert by_page[1].status is by_page[2].status is PageStatus.OK
    assert by_page[1].raw_text == GROUNDED
    assert by_page[2].raw_text == ("<|ref|>text<|/ref|>" + "x" * MAX_PAGE_TEXT)[:MAX_PAGE_TEXT]


async def test_figures_are_stored_and_linked_and_the_page_image_too(tmp_path: Path) -> None:
    store = open_artifact_store(Settings(artifacts_uri=str(tmp_path)))
    bench = _bench(ScriptedEngine(grounded=lambda _: GROUNDED))
    bench.settings = Settings(lease_ttl_s=5, artifact_page_images=True)
    bench.artifacts = store
    bench.documents.pages["t"] = 1
    await bench.runner.run(_request(), record())
    [result] = bench.sink.results
    figures = [block for block in result.blocks if block.label == "image"]
    assert [f.artifact.uri if f.artifact else None for f in figures] == [
        (tmp_path / "t" / f"page-1-fig-{n}.png").as_uri() for n in (1, 2)
    ]
    for n, figure in enumerate(figures, start=1):
        assert figure.artifact is not None
        assert f"![figure {n}]({figure.artifact.uri})" in result.markdown
        stored = tmp_path / "t" / f"page-1-fig-{n}.png"
        assert figure.artifact.bytes == stored.stat().st_size > 0
    assert result.image.artifact is not None
    assert result.image.artifact.uri == (tmp_path / "t" / "page-1.png").as_uri()
    assert (result.image.artifact.width_px, result.image.artifact.height_px) == (40, 60)
    # Storing counts as post-processing, once per page.
    assert bench.metric("ocr_stage_seconds_count", stage="postprocess") == 1


async def test_without_a_store_figures_are_placeholders_that_say_why() -> None:
    bench = _bench(ScriptedEngine(grounded=lambda _: GROUNDED))
    bench.documents.pages["t"] = 1
    await bench.runner.run(_request(), record())
    [result] = bench.sink.results
    assert "](" not in result.markdown
    assert "*[figure 1 of page 1 not stored: no artifact store is configured" in result.markdown
    assert all(block.artifact is None for block in result.blocks)


class RefusingStore:
    """An artifact store that refuses every write, as a full disk or a revoked grant does."""

    uri = "file:///refusing"

    def uri_of(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def owns(self, uri: str) -> bool:
        return uri.startswith(self.uri)

    async def put(self, key: str, data: bytes, media_type: str) -> StoredFile:
        raise ArtifactError(ErrorCode.ARTIFACT_STORE_FAILED, "disk full (test)")

    async def read(self, uri: str) -> bytes:
        raise AssertionError("not read")

    async def check(self) -> None:
        return None


async def test_a_figure_the_store_refuses_does_not_fail_its_page() -> None:
    bench = _bench(ScriptedEngine(grounded=lambda _: GROUNDED))
    bench.artifacts = RefusingStore()
    bench.documents.pages["t"] = 1
    assert await bench.runner.run(_request(), record()) is TaskStatus.COMPLETED
    [result] = bench.sink.results
    assert result.status is PageStatus.OK and result.error is None
    assert "not stored: ARTIFACT_STORE_FAILED: disk full (test)" in result.markdown
    assert all(block.artifact is None for block in result.blocks)
    assert bench.metric("ocr_errors_total", code="ARTIFACT_STORE_FAILED") == 2


class HugeEngine(ScriptedEngine):
    """Answers page 2 with more Markdown than a page result holds."""

    async def infer(self, request: PageRequest) -> EngineOutput:
        output = await super().infer(request)
        if request.page.page == 2:
            output.markdown = "x" * (MAX_PAGE_TEXT + 1)
        return output


class RefusingSink(MemorySink):
    """A results topic that refuses page 2's record as too large, as the broker does."""

    async def result(self, result: PageResult, *, run_tag: str = "") -> None:
        if result.page == 2 and result.status is PageStatus.OK:
            raise RecordTooLarge("t.ocr.results refused a record of 6000000 bytes as too large")
        await super().result(result, run_tag=run_tag)


async def test_a_page_too_large_to_publish_fails_alone() -> None:
    """Issue 16, defect 9: a page result the broker refused failed the whole task with an
    ExceptionGroup; output beyond the schema's bounds read as an engine error."""
    for bench in (_bench(HugeEngine()), replace(_bench(), sink=RefusingSink())):
        status = await bench.runner.run(_request(), record())
        assert status is TaskStatus.COMPLETED
        by_page = {r.page: r for r in bench.sink.results}
        assert by_page[1].status is PageStatus.OK and by_page[3].status is PageStatus.OK
        error = by_page[2].error
        assert error is not None and error.code is ErrorCode.PAGE_OUTPUT_TOO_LARGE, error
        assert "page 2 is too large to publish" in error.message
        final = bench.sink.progress_events[-1]
        assert final.pages_failed == 1 and final.error is not None
        assert final.error.code is ErrorCode.PAGES_FAILED
