"""The consumer end to end on the real broker and Redis."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from consumer.config import Settings
from consumer.engines.rapidocr import RapidOcrEngine
from schemas.cloudevents import CE_TYPE_RESULT, parse_ce_headers
from schemas.common import ErrorCode
from schemas.headers import DLQ_ERROR_CODE
from schemas.keys import task_partition
from schemas.progress import TaskStatus
from schemas.request import OcrRequest, PageRange
from schemas.result import PageStatus
from tests.support.apps import running_app
from tests.support.documents import (
    file_request,
    make_image,
    make_pdf,
    make_png,
    make_tiff,
    page_lines,
)
from tests.support.engines import FaultyEngine, ScriptedEngine
from tests.support.kafka import TopicReader, committed_offsets, produce_raw, produce_requests

pytestmark = pytest.mark.integration


def _completed(settings: Settings, *task_ids: str):  # type: ignore[no-untyped-def]
    def check(reader: TopicReader) -> bool:
        return all(reader.final(settings, task_id) for task_id in task_ids)

    return check


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={"file_roots": [tmp_path], "metrics_port": 0, "commit_interval_s": 0.2}
    )


@pytest.fixture(scope="module")
def rapidocr() -> RapidOcrEngine:
    return RapidOcrEngine()


async def test_multi_page_pdf_on_the_cpu_engine(
    settings: Settings, tmp_path: Path, rapidocr: RapidOcrEngine
) -> None:
    pdf = make_pdf(tmp_path / "three.pdf", pages=3)
    async with running_app(settings, rapidocr):
        await produce_requests(settings, [file_request("pdf-1", pdf, metadata={"who": "test"})])
        async with TopicReader(
            settings, settings.topic_results, settings.topic_progress, settings.topic_timing
        ) as reader:
            await reader.wait_for(_completed(settings, "pdf-1"), timeout=120)
    results = sorted(reader.results(settings), key=lambda r: r.page)
    assert [r.page for r in results] == [1, 2, 3]
    for result in results:
        assert result.status is PageStatus.OK
        assert result.metadata == {"who": "test"}
        expected = " ".join(page_lines(result.page)).lower().split()
        found = set(result.text.lower().split())
        recall = sum(1 for word in expected if word in found) / len(expected)
        assert recall >= 0.8, (result.page, result.text)
        assert result.blocks and all(b.bbox_pdf is not None for b in result.blocks)
    statuses = [e.status for e in reader.progress(settings) if e.task_id == "pdf-1"]
    assert statuses[0] is TaskStatus.QUEUED
    assert statuses[1] is TaskStatus.STARTED
    assert statuses.count(TaskStatus.PAGE_DONE) == 3
    assert statuses[-1] is TaskStatus.COMPLETED
    timing = reader.json_on(settings.topic_timing)
    assert sorted(t["kind"] for t in timing) == ["page", "page", "page", "task"]
    task_timing = next(t for t in timing if t["kind"] == "task")
    assert task_timing["stages"]["infer_ms"] > 0 and task_timing["stages"]["fetch_ms"] > 0
    # Post-processing is its own stage, in each page's result and timing and in the sum.
    assert all(r.timings.postprocess_ms > 0 for r in results)
    page_post = [t["stages"]["postprocess_ms"] for t in timing if t["kind"] == "page"]
    assert all(ms > 0 for ms in page_post)
    assert task_timing["stages"]["postprocess_ms"] == pytest.approx(sum(page_post))
    # Keys, partitions and CloudEvents headers as the contract says.
    result_records = reader.on(settings.topic_results)
    assert sorted(r.key for r in result_records) == ["pdf-1/1", "pdf-1/2", "pdf-1/3"]
    partitions = {r.partition for r in reader.records}
    assert len(partitions) == 1
    assert task_partition(b"pdf-1", settings.topic_partitions) in partitions
    event = parse_ce_headers(list(result_records[0].headers.items()))
    assert event.type == CE_TYPE_RESULT and event.subject == "pdf-1"


async def test_inline_png_on_the_cpu_engine(
    settings: Settings, rapidocr: RapidOcrEngine, tmp_path: Path
) -> None:
    png = make_png(tmp_path / "receipt.png", "Receipt total 42 paid")
    request = OcrRequest.model_validate(
        {"task_id": "png-1",
         "source": {"inline_base64": base64.b64encode(png.read_bytes()).decode()}},
        strict=False,
    )
    async with running_app(settings, rapidocr):
        await produce_requests(settings, [request])
        async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, "png-1"), timeout=60)
    [result] = reader.results(settings)
    assert "receipt" in result.text.lower() and "42" in result.text


async def test_jpeg_multi_page_tiff_and_webp_on_the_cpu_engine(
    settings: Settings, rapidocr: RapidOcrEngine, tmp_path: Path
) -> None:
    documents = {
        "jpeg-1": (make_image(tmp_path / "a.jpg", "Invoice total 17 paid", "JPEG"), 1),
        "tiff-1": (make_tiff(tmp_path / "b.tif", [
            "Delivery order 1 received", "Payment summary 2 balance", "Account number 3 closed",
        ]), 3),
        "webp-1": (make_image(tmp_path / "c.webp", "Customer address 99 updated", "WEBP"), 1),
    }
    async with running_app(settings, rapidocr):
        await produce_requests(
            settings, [file_request(task_id, path) for task_id, (path, _) in documents.items()]
        )
        async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, *documents), timeout=120)
    results = reader.results(settings)
    for task_id, (_, pages) in documents.items():
        [final] = reader.final(settings, task_id)
        assert final.status is TaskStatus.COMPLETED and final.error is None, final
        assert (final.pages_total, final.pages_done, final.pages_failed) == (pages, pages, 0)
        mine = sorted((r for r in results if r.task_id == task_id), key=lambda r: r.page)
        assert [r.page for r in mine] == list(range(1, pages + 1))
        for result in mine:
            assert result.status is PageStatus.OK and result.page_count == pages
            assert result.text.strip() and result.blocks, (task_id, result.page, result.text)
    tiff_pages = {r.page: r.text.lower() for r in results if r.task_id == "tiff-1"}
    # Each frame is its own page, in order.
    assert "delivery" in tiff_pages[1] and "payment" in tiff_pages[2] and "account" in tiff_pages[3]


async def test_page_ranges_select_pages(settings: Settings, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "five.pdf", pages=5)
    engine = ScriptedEngine()
    request = file_request(
        "ranges-1", pdf, pages=[PageRange(first=2, last=3), PageRange(first=5)]
    )
    async with running_app(settings, engine):
        await produce_requests(settings, [request])
        async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, "ranges-1"))
    assert sorted(r.page for r in reader.results(settings)) == [2, 3, 5]
    [final] = reader.final(settings, "ranges-1")
    assert final.pages_total == 3 and final.pages_done == 3


async def test_duplicate_is_announced_not_recomputed(settings: Settings, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "dup.pdf", pages=2)
    engine = ScriptedEngine()
    async with running_app(settings, engine):
        await produce_requests(settings, [file_request("dup-1", pdf)])
        async with TopicReader(settings, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, "dup-1"))
            await produce_requests(settings, [file_request("dup-1", pdf)])
            await reader.wait_for(lambda r: len(r.final(settings, "dup-1")) == 2)
            # force=true recomputes.
            await produce_requests(settings, [file_request("dup-1", pdf, force=True, attempt=1)])
            await reader.wait_for(lambda r: len(r.final(settings, "dup-1")) == 3)
    finals = reader.final(settings, "dup-1")
    assert [f.replayed for f in finals] == [False, True, False]
    assert all(f.status is TaskStatus.COMPLETED for f in finals)
    assert engine.calls[("dup-1", 1)] == 2 and engine.calls[("dup-1", 2)] == 2


async def test_task_id_conflict_goes_to_dlq(settings: Settings, tmp_path: Path) -> None:
    first = make_pdf(tmp_path / "a.pdf", pages=1)
    second = make_pdf(tmp_path / "b.pdf", pages=2)
    async with running_app(settings, ScriptedEngine()):
        await produce_requests(settings, [file_request("same-id", first)])
        async with TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader:
            await reader.wait_for(_completed(settings, "same-id"))
            await produce_requests(settings, [file_request("same-id", second)])
            await reader.wait_for(lambda r: bool(r.on(settings.topic_dlq)))
    [dead] = reader.on(settings.topic_dlq)
    assert dead.headers[DLQ_ERROR_CODE] == ErrorCode.TASK_ID_CONFLICT.value.encode()


async def test_bad_requests_go_to_dlq_and_consumer_keeps_serving(
    settings: Settings, tmp_path: Path
) -> None:
    pdf = make_pdf(tmp_path / "ok.pdf", pages=1)
    async with running_app(settings, ScriptedEngine()):
        await produce_raw(settings, b"not json at all", key=b"x")
        await produce_raw(settings, b"\xff\xfe", key=b"y")
        await produce_raw(settings, b'{"schema_version": 9, "task_id": "v9"}', key=b"v9")
        await produce_requests(settings, [file_request("after-poison", pdf)])
        async with TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader:
            await reader.wait_for(
                lambda r: len(r.on(settings.topic_dlq)) == 3
                and bool(r.final(settings, "after-poison"))
            )
    codes = sorted(r.headers[DLQ_ERROR_CODE].decode() for r in reader.on(settings.topic_dlq))
    assert codes == sorted(
        ["REQUEST_NOT_JSON", "REQUEST_NOT_UTF8", "REQUEST_UNSUPPORTED_VERSION"]
    )


async def test_unreadable_source_fails_the_task_with_a_code(settings: Settings) -> None:
    request = OcrRequest.model_validate(
        {"task_id": "passwd", "source": {"uri": "file:///etc/passwd"}}, strict=False
    )
    async with running_app(settings, ScriptedEngine()):
        await produce_requests(settings, [request])
        async with TopicReader(settings, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, "passwd"))
    [final] = reader.final(settings, "passwd")
    assert final.status is TaskStatus.FAILED
    assert final.error is not None and final.error.code is ErrorCode.SOURCE_PATH_NOT_ALLOWED


async def test_failing_and_hanging_pages_end_with_their_own_error(
    settings: Settings, tmp_path: Path
) -> None:
    pdf = make_pdf(tmp_path / "faulty.pdf", pages=4)
    engine = FaultyEngine(ScriptedEngine(), fail_pages={2}, hang_pages={3})
    async with running_app(settings.model_copy(update={"page_timeout_s": 1.0}), engine):
        await produce_requests(settings, [file_request("faulty-1", pdf)])
        async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, "faulty-1"))
    by_page = {r.page: r for r in reader.results(settings)}
    assert by_page[1].status is PageStatus.OK and by_page[4].status is PageStatus.OK
    assert by_page[2].error is not None and by_page[2].error.code is ErrorCode.ENGINE_ERROR
    assert by_page[3].error is not None and by_page[3].error.code is ErrorCode.PAGE_TIMEOUT
    [final] = reader.final(settings, "faulty-1")
    assert final.status is TaskStatus.COMPLETED and final.pages_failed == 2


async def test_task_timeout_fails_the_task_and_the_consumer_keeps_serving(
    settings: Settings, tmp_path: Path
) -> None:
    slow = make_pdf(tmp_path / "slow.pdf", pages=6)
    quick = make_pdf(tmp_path / "quick.pdf", pages=1)
    # One page at a time, 0.5 s each: the 6-page task needs 3 s of its 1.5 s.
    limited = settings.model_copy(update={"task_timeout_s": 1.5, "max_inflight_pages": 1})
    engine = ScriptedEngine(delay_s=0.5, concurrency=1)
    async with running_app(limited, engine):
        await produce_requests(settings, [file_request("slow-1", slow)])
        async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, "slow-1"), timeout=60)
            # The timed-out task gave its page slot back: the next request completes.
            await produce_requests(settings, [file_request("after-timeout", quick)])
            await reader.wait_for(_completed(settings, "after-timeout"), timeout=60)
        deadline = asyncio.get_running_loop().time() + 20
        while sum((await committed_offsets(settings)).values()) < 2:
            assert asyncio.get_running_loop().time() < deadline, "offsets not committed"
            await asyncio.sleep(0.2)
    [failed] = reader.final(settings, "slow-1")
    assert failed.status is TaskStatus.FAILED
    assert failed.error is not None and failed.error.code is ErrorCode.TASK_TIMEOUT
    assert "longer than 1.5 s" in failed.error.message
    assert "OCR_TASK_TIMEOUT_S" in failed.error.message
    done_before = {r.page for r in reader.results(settings) if r.task_id == "slow-1"}
    assert 1 <= len(done_before) < 6 and failed.pages_done == len(done_before)
    [after] = reader.final(settings, "after-timeout")
    assert after.status is TaskStatus.COMPLETED and after.pages_done == 1


async def test_restart_mid_document_resumes_missing_pages(
    settings: Settings, tmp_path: Path
) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", pages=8)
    quick_stop = settings.model_copy(update={"shutdown_grace_s": 0.0, "max_inflight_pages": 2})
    first = ScriptedEngine(delay_s=0.3, concurrency=2)
    async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
        async with running_app(quick_stop, first):
            await produce_requests(settings, [file_request("resume-1", pdf)])
            await reader.wait_for(lambda r: len(r.results(settings)) >= 3)
        done_before = {r.page for r in reader.results(settings)}
        assert 3 <= len(done_before) < 8
        second = ScriptedEngine(concurrency=2)
        async with running_app(settings, second):
            await reader.wait_for(_completed(settings, "resume-1"))
    assert {r.page for r in reader.results(settings)} == set(range(1, 9))
    # Pages published (and recorded) before the stop are not computed again.
    recomputed = {page for (_, page) in second.calls} & done_before
    assert recomputed == set()
    [final] = reader.final(settings, "resume-1")
    assert final.status is TaskStatus.COMPLETED and final.pages_done == 8


async def test_committed_offsets_reach_the_end(settings: Settings, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "c.pdf", pages=1)
    requests = [file_request(f"commit-{i}", pdf) for i in range(6)]
    async with running_app(settings, ScriptedEngine()):
        await produce_requests(settings, requests)
        async with TopicReader(settings, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, *(r.task_id for r in requests)))
        await asyncio.sleep(1.0)  # one commit interval
    total = sum((await committed_offsets(settings)).values())
    assert total == 6


async def test_three_consumers_share_six_partitions(settings: Settings, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "group.pdf", pages=2)
    requests = [file_request(f"group-{i}", pdf) for i in range(18)]
    engines = [ScriptedEngine(delay_s=0.05) for _ in range(3)]
    members = [
        settings.model_copy(update={"consumer_id": f"member-{i}"}) for i in range(3)
    ]
    async with (
        running_app(members[0], engines[0]),
        running_app(members[1], engines[1]),
        running_app(members[2], engines[2]),
    ):
        await produce_requests(settings, requests)
        async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, *(r.task_id for r in requests)), timeout=120)
    pages = {(r.task_id, r.page) for r in reader.results(settings)}
    assert pages == {(r.task_id, p) for r in requests for p in (1, 2)}
    workers = {e.consumer_id for e in reader.progress(settings) if e.status is TaskStatus.COMPLETED}
    assert len(workers) >= 2, workers
    assert all(sum(e.calls.values()) > 0 for e in engines)


async def test_progress_is_readable_and_ocr_watch_shows_it(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every event carries percent, the time left from the task's own pace and a message;
    ocr-watch prints the consumer's message."""
    from producer_tools import EXIT_OK, watch

    pdf = make_pdf(tmp_path / "four.pdf", pages=4)
    one_at_a_time = settings.model_copy(update={"max_inflight_pages": 1})
    async with running_app(one_at_a_time, ScriptedEngine(delay_s=0.3, concurrency=1)):
        await produce_requests(settings, [file_request("readable-1", pdf)])
        async with TopicReader(settings, settings.topic_progress) as reader:
            await reader.wait_for(_completed(settings, "readable-1"))
    events = [e for e in reader.progress(settings) if e.task_id == "readable-1"]
    assert [e.message for e in events[:2]] == ["queued", "started: 4 pages to do"]
    page_done = [e for e in events if e.status is TaskStatus.PAGE_DONE]
    assert [e.percent for e in page_done] == [25.0, 50.0, 75.0, 100.0]
    # About 0.3 s a page: the first estimate is about 3 pages' worth, the last says none left.
    first_eta = page_done[0].eta_s
    assert first_eta is not None and 0.3 < first_eta < 5.0, first_eta
    assert page_done[-1].eta_s == 0.0
    assert page_done[1].message.startswith("2 of 4 pages done, 50%, about ")
    final = events[-1]
    assert (final.status, final.percent, final.eta_s) == (TaskStatus.COMPLETED, 100.0, None)
    assert final.message.startswith("completed in ") and final.message.endswith(": 4 of 4 pages")
    capsys.readouterr()
    code = await asyncio.to_thread(watch.main, [
        "--kafka-bootstrap", settings.kafka_bootstrap, "--topic-progress",
        settings.topic_progress, "--log-level", "WARNING", "--from-beginning", "--timeout",
        "30", "readable-1",
    ])
    assert code == EXIT_OK
    shown = capsys.readouterr().err.splitlines()  # the live lines; stdout gets the outcome
    assert f"readable-1: {page_done[1].message}" in shown
    assert f"readable-1: {final.message}" in shown
