"""ocr-submit, ocr-watch and ocr-collect against the real broker.

A test-local stand-in for the OCR consumer publishes progress, results and dead letters the
way the contract says (keys, partitioning by task id, CloudEvents headers); the tools run
in-process through their main() (in a thread, as each runs its own event loop) so exit
codes, printed lines and written files are checked as a user would see them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import BaseModel

from consumer.artifacts.store import open_artifact_store
from consumer.config import S3AddressingStyle, Settings
from consumer.settings.kafka import client_kwargs
from producer_tools import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, cancel, collect, submit, watch
from producer_tools.follow_progress import ProgressFollower
from producer_tools.submit_requests import RequestOptions, build_submissions
from schemas.cloudevents import (
    CE_TYPE_DLQ,
    CE_TYPE_PROGRESS,
    CE_TYPE_REQUEST,
    CE_TYPE_RESULT,
    ce_headers,
    parse_ce_headers,
)
from schemas.common import ErrorCode, ErrorInfo
from schemas.dlq import DlqEnvelope
from schemas.keys import TaskPartitioner, task_partition
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import OcrRequest
from schemas.result import (
    Artifact,
    Block,
    EngineIdentity,
    FinishReason,
    PageImageInfo,
    PageResult,
    PageStatus,
)
from tests.support.s3 import REGION, S3Server, s3_server, server_credentials

pytestmark = pytest.mark.integration


# --- a stand-in for the OCR consumer's publisher ------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def page_result(task_id: str, page: int, markdown: str, *, attempt: int = 0) -> PageResult:
    return PageResult(
        task_id=task_id, page=page, page_count=2, attempt=attempt, status=PageStatus.OK,
        markdown=markdown, text=markdown, finish_reason=FinishReason.STOP,
        engine=EngineIdentity(name="fake", model="none"),
        image=PageImageInfo(width_px=100, height_px=100, dpi=144), produced_at=_now(),
    )


def event(task_id: str, status: TaskStatus, done: int = 0, total: int | None = 2,
          error: ErrorInfo | None = None, replayed: bool = False) -> ProgressEvent:
    return ProgressEvent(
        task_id=task_id, status=status, pages_done=done, pages_total=total, error=error,
        replayed=replayed, emitted_at=_now(),
    )


class FakeOcrConsumer:
    """Publishes what the OCR consumer would: same keys, partitioner and headers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offsets: dict[str, list[tuple[int, int]]] = {}  # key -> [(partition, offset)]
        self._producer = AIOKafkaProducer(
            **client_kwargs(settings), acks="all", enable_idempotence=True,
            partitioner=TaskPartitioner(), max_request_size=4 * 1024 * 1024,
        )

    async def __aenter__(self) -> FakeOcrConsumer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def _send(self, topic: str, key: str, value: BaseModel, ce_type: str) -> None:
        headers = ce_headers(
            event_id=uuid.uuid4().hex, event_type=ce_type, source="fake-consumer",
            subject=key.split("/")[0],
        )
        meta = await self._producer.send_and_wait(
            topic, value=value.model_dump_json().encode(), key=key.encode(), headers=headers
        )
        self.offsets.setdefault(key, []).append((meta.partition, meta.offset))

    async def progress(self, e: ProgressEvent) -> None:
        await self._send(self.settings.topic_progress, e.task_id, e, CE_TYPE_PROGRESS)

    async def result(self, r: PageResult) -> None:
        await self._send(self.settings.topic_results, f"{r.task_id}/{r.page}", r, CE_TYPE_RESULT)

    async def dead_letter(self, task_id: str, code: ErrorCode, message: str) -> None:
        envelope = DlqEnvelope(
            error_code=code, error_message=message, original_topic=self.settings.topic_requests,
            original_partition=0, original_offset=0, original_value_base64="",
            task_id=task_id, failed_at=_now(),
        )
        await self._send(self.settings.topic_dlq, task_id, envelope, CE_TYPE_DLQ)

    async def complete(self, task_id: str, pages: dict[int, str]) -> None:
        await self.progress(event(task_id, TaskStatus.QUEUED, total=None))
        await self.progress(event(task_id, TaskStatus.STARTED, total=len(pages)))
        for done, (number, markdown) in enumerate(sorted(pages.items()), start=1):
            await self.result(page_result(task_id, number, markdown))
            await self.progress(event(task_id, TaskStatus.PAGE_DONE, done, len(pages)))
        await self.progress(event(task_id, TaskStatus.COMPLETED, len(pages), len(pages)))


Behaviour = Callable[[FakeOcrConsumer, OcrRequest], Awaitable[None]]


@contextlib.asynccontextmanager
async def answering(
    settings: Settings, behaviour: Behaviour
) -> AsyncIterator[list[tuple[OcrRequest, dict[str, bytes], str]]]:
    """Answer every request on the requests topic with `behaviour` while the block runs."""
    seen: list[tuple[OcrRequest, dict[str, bytes], str]] = []
    reader = AIOKafkaConsumer(
        settings.topic_requests, **client_kwargs(settings), group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await reader.start()

    async def loop(fake: FakeOcrConsumer) -> None:
        while True:
            batch = await reader.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    request = OcrRequest.model_validate_json(record.value)
                    seen.append((request, dict(record.headers), record.key.decode()))
                    await behaviour(fake, request)

    try:
        async with FakeOcrConsumer(settings) as fake:
            task = asyncio.create_task(loop(fake))
            try:
                yield seen
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await reader.stop()


def flags(settings: Settings) -> list[str]:
    return [
        "--kafka-bootstrap", settings.kafka_bootstrap,
        "--topic-requests", settings.topic_requests,
        "--topic-results", settings.topic_results,
        "--topic-progress", settings.topic_progress,
        "--topic-timing", settings.topic_timing,
        "--topic-dlq", settings.topic_dlq,
        "--log-format", "json", "--log-level", "WARNING",
    ]


async def run_tool(main: Callable[[list[str]], int], argv: list[str]) -> int:
    # Each tool's main() owns an event loop (asyncio.run), so it runs in a thread.
    return await asyncio.to_thread(main, argv)


@pytest.fixture
def settings(topics: Settings, tmp_path: Path) -> Settings:
    blob_root = tmp_path / "blobs"
    blob_root.mkdir()  # the consumer's hand-over folder: ocr-submit never creates it
    return topics.model_copy(update={"blob_root": blob_root})


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    path = tmp_path / "docs" / "report.pdf"
    path.parent.mkdir()
    path.write_bytes(b"%PDF-1.4 not really rendered by the fake consumer " + uuid.uuid4().bytes)
    return path


# --- ocr-submit ---------------------------------------------------------------------------------


async def test_submit_wait_out_writes_the_documents_pages(
    settings: Settings, pdf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def behaviour(fake: FakeOcrConsumer, request: OcrRequest) -> None:
        # A replay republished page 1 with a higher attempt: that one must win.
        await fake.result(page_result(request.task_id, 1, "stale page one"))
        await fake.result(page_result(request.task_id, 1, "# Page one", attempt=1))
        await fake.result(page_result(request.task_id, 2, "Page two"))
        await fake.progress(event(request.task_id, TaskStatus.COMPLETED, 2, 2))

    out = tmp_path / "out"
    async with answering(settings, behaviour) as seen:
        code = await run_tool(submit.main, [
            *flags(settings), "--blob-root", str(settings.blob_root), "--out", str(out),
            "--timeout", "60", "--metadata", "who=test", str(pdf),
        ])
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    [(request, headers, key)] = seen
    # The request: keyed by task id, CloudEvents headers, a claim check under the blob root.
    assert key == request.task_id
    assert parse_ce_headers(list(headers.items())).type == CE_TYPE_REQUEST
    assert request.source.uri is not None
    assert request.source.uri.startswith((settings.blob_root.resolve()).as_uri())
    assert request.source.sha256 is not None and request.metadata == {"who": "test"}
    assert f"{request.task_id}\t{pdf}" in captured.out.splitlines()
    assert f"{request.task_id} ({pdf}): completed 2/2 pages" in captured.out
    assert (out / "report.md").read_text() == (
        "<!-- page 1 -->\n# Page one\n\n<!-- page 2 -->\nPage two\n"
    )
    pages = json.loads((out / "report.json").read_text())
    assert [(p["page"], p["attempt"]) for p in pages] == [(1, 1), (2, 0)]


async def test_submit_wait_starts_after_earlier_finals_and_reports_a_failure(
    settings: Settings, pdf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The id submit will derive, and an old "completed" of it already on the topic: --wait
    # must judge by what follows its own request, not by history.
    [submission] = build_submissions([str(pdf)], RequestOptions(), settings.blob_root)
    async with FakeOcrConsumer(settings) as fake:
        await fake.progress(event(submission.task_id, TaskStatus.COMPLETED, 2, 2))

    async def behaviour(fake: FakeOcrConsumer, request: OcrRequest) -> None:
        await fake.progress(event(request.task_id, TaskStatus.QUEUED, total=None))
        await fake.progress(event(
            request.task_id, TaskStatus.FAILED, total=None,
            error=ErrorInfo(code=ErrorCode.SOURCE_PATH_NOT_ALLOWED, message="not under roots"),
        ))

    async with answering(settings, behaviour):
        code = await run_tool(submit.main, [
            *flags(settings), "--blob-root", str(settings.blob_root), "--wait",
            "--timeout", "60", str(pdf),
        ])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert f"error: {submission.task_id} ({pdf}): failed: SOURCE_PATH_NOT_ALLOWED: " \
           "not under roots" in err
    assert "OCR_FILE_ROOTS" in err  # the hint says what to change


async def test_submit_wait_sees_a_reannounced_final_status(
    settings: Settings, pdf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def behaviour(fake: FakeOcrConsumer, request: OcrRequest) -> None:
        # What the consumer does with a duplicate of a finished task: no work, one event.
        await fake.progress(event(request.task_id, TaskStatus.COMPLETED, 2, 2, replayed=True))

    async with answering(settings, behaviour):
        code = await run_tool(submit.main, [
            *flags(settings), "--blob-root", str(settings.blob_root), "--wait",
            "--timeout", "60", str(pdf),
        ])
    assert code == EXIT_OK, capsys.readouterr().err


async def test_submit_wait_reports_a_dead_lettered_request(
    settings: Settings, pdf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def behaviour(fake: FakeOcrConsumer, request: OcrRequest) -> None:
        await fake.dead_letter(request.task_id, ErrorCode.TASK_ID_CONFLICT, "used before")

    async with answering(settings, behaviour):
        code = await run_tool(submit.main, [
            *flags(settings), "--blob-root", str(settings.blob_root), "--wait",
            "--timeout", "60", "--task-id", "reused-id", str(pdf),
        ])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert "reused-id" in err and "TASK_ID_CONFLICT" in err and "used before" in err
    assert "--force" in err


async def test_submit_wait_times_out_without_a_consumer(
    settings: Settings, pdf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = await asyncio.to_thread(pdf.read_bytes)
    code = await run_tool(submit.main, [
        *flags(settings), "--blob-root", str(settings.blob_root), "--wait", "--timeout", "2",
        "--inline", str(pdf),
    ])
    err = capsys.readouterr().err
    assert code == EXIT_TIMEOUT
    assert "not final after 2 s" in err and "is an ocr-consumer reading" in err
    # --inline: the bytes travelled in the request, nothing was handed over.
    assert not any(settings.blob_root.iterdir())
    reader = AIOKafkaConsumer(
        settings.topic_requests, **client_kwargs(settings), group_id=None,
        auto_offset_reset="earliest",
    )
    await reader.start()
    try:
        batch = await reader.getmany(timeout_ms=5000)
    finally:
        await reader.stop()
    [record] = [r for records in batch.values() for r in records]
    request = OcrRequest.model_validate_json(record.value)
    assert request.source.inline_base64 is not None
    assert base64.b64decode(request.source.inline_base64) == document


async def test_submit_to_a_missing_topic_says_so(
    settings: Settings, pdf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_tool(submit.main, [
        *flags(settings), "--topic-progress", "no-such-topic-" + uuid.uuid4().hex[:6],
        "--blob-root", str(settings.blob_root), "--wait", str(pdf),
    ])
    assert code == EXIT_FAILED
    assert "does not exist" in capsys.readouterr().err


async def test_submit_without_wait_publishes_one_request_per_document(
    settings: Settings, pdf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "docs" / "scan.png"
    await asyncio.to_thread(other.write_bytes, b"\x89PNG not really")
    code = await run_tool(submit.main, [
        *flags(settings), "--blob-root", str(settings.blob_root), "--pages", "2-",
        "--prompt", "free_ocr", str(pdf), str(other), "https://example.com/a.pdf",
    ])
    assert code == EXIT_OK
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [label for _, label in lines] == [str(pdf), str(other), "https://example.com/a.pdf"]
    reader = AIOKafkaConsumer(
        settings.topic_requests, **client_kwargs(settings), group_id=None,
        auto_offset_reset="earliest",
    )
    await reader.start()
    try:
        records: list[Any] = []
        while len(records) < 3:
            batch = await reader.getmany(timeout_ms=5000)
            assert batch, "the requests did not arrive"
            records += [r for rs in batch.values() for r in rs]
    finally:
        await reader.stop()
    by_key = {r.key.decode(): OcrRequest.model_validate_json(r.value) for r in records}
    assert set(by_key) == {task_id for task_id, _ in lines}
    for record in records:
        assert record.partition == task_partition(record.key, settings.topic_partitions)
    handed_over = [r for r in by_key.values() if r.source.sha256 is not None]
    assert len(handed_over) == 2
    for request in handed_over:
        assert request.prompt.value == "free_ocr" and request.pages is not None
        assert request.source.uri is not None
        blob = Path(unquote(urlsplit(request.source.uri).path))
        assert await asyncio.to_thread(blob.is_file)
        assert blob.parent.parent == settings.blob_root.resolve()


# --- ocr-watch ----------------------------------------------------------------------------------


async def test_watch_from_beginning_judges_each_task_by_its_latest_event(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOcrConsumer(settings) as fake:
        await fake.complete("w-ok", {1: "a", 2: "b"})
        await fake.progress(event(
            "w-bad", TaskStatus.FAILED, error=ErrorInfo(code=ErrorCode.DOCUMENT_CORRUPT,
                                                        message="xref table broken"),
        ))
        # Completed once, then re-run with force: the old final no longer counts.
        await fake.progress(event("w-rerun", TaskStatus.COMPLETED, 2, 2))
        await fake.progress(event("w-rerun", TaskStatus.QUEUED, total=None))

    common = [*flags(settings), "--from-beginning", "--timeout", "30"]
    assert await run_tool(watch.main, [*common, "w-ok"]) == EXIT_OK
    assert "w-ok: completed 2/2 pages" in capsys.readouterr().out
    assert await run_tool(watch.main, [*common, "w-ok", "w-bad"]) == EXIT_FAILED
    assert "w-bad: failed: DOCUMENT_CORRUPT: xref table broken" in capsys.readouterr().err
    rerun = [*flags(settings), "--from-beginning", "--timeout", "2", "w-rerun"]
    assert await run_tool(watch.main, rerun) == EXIT_TIMEOUT
    assert "last seen: queued" in capsys.readouterr().err


async def test_following_from_the_end_sees_events_published_after_start(
    settings: Settings,
) -> None:
    async with FakeOcrConsumer(settings) as fake:
        await fake.complete("live-1", {1: "old"})  # history: not what we wait for
        follower = ProgressFollower(settings, {"live-1": "live-1", "live-2": "live-2"})
        await follower.start(from_beginning=False)
        try:
            await fake.progress(event("live-1", TaskStatus.STARTED, 0, 1))
            await fake.complete("live-2", {1: "x"})
            await fake.progress(event("live-1", TaskStatus.COMPLETED, 1, 1))
            result = await follower.wait(30)
        finally:
            await follower.stop()
    assert result.exit_code == EXIT_OK
    assert all(e is not None and e.status is TaskStatus.COMPLETED for e in result.latest.values())


async def test_watch_rejects_a_malformed_task_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        watch.main(["has/slash"])
    assert exit_info.value.code == 2 and "is not a task id" in capsys.readouterr().err


# --- ocr-collect --------------------------------------------------------------------------------


async def committed_offsets(settings: Settings, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


async def test_collect_once_writes_final_tasks_and_commits_below_open_ones(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "collected"
    group = f"collect-{uuid.uuid4().hex[:6]}"
    async with FakeOcrConsumer(settings) as fake:
        await fake.result(page_result("c-done", 1, "old one"))
        await fake.complete("c-done", {2: "two"})
        await fake.result(page_result("c-done", 1, "new one", attempt=1))
        await fake.progress(event("c-done", TaskStatus.COMPLETED, 2, 2))
        await fake.progress(event(
            "c-failed", TaskStatus.FAILED, error=ErrorInfo(code=ErrorCode.SOURCE_NOT_FOUND,
                                                           message="404 from origin"),
        ))
        await fake.result(page_result("c-open", 1, "open one"))  # no final status yet
        open_partition, open_offset = fake.offsets["c-open/1"][0]

        argv = [*flags(settings), "--out", str(out), "--group", group, "--once"]
        assert await run_tool(collect.main, argv) == EXIT_OK

        assert (out / "c-done" / "document.md").read_text() == (
            "<!-- page 1 -->\nnew one\n\n<!-- page 2 -->\ntwo\n"
        )
        assert len(json.loads((out / "c-done" / "pages.json").read_text())) == 2
        with zipfile.ZipFile(out / "c-done.zip") as archive:
            assert sorted(archive.namelist()) == [
                "document.md", "page-0001.md", "page-0002.md", "pages.json", "status.json"
            ]
            assert archive.read("page-0001.md") == b"new one\n"
        status = ProgressEvent.model_validate_json((out / "c-failed" / "status.json").read_text())
        assert status.error is not None and status.error.code is ErrorCode.SOURCE_NOT_FOUND
        assert (out / "c-failed.zip").is_file()
        assert not (out / "c-open").exists()
        assert "c-done: completed, 2 pages" in capsys.readouterr().out

        # The open task's records are not committed past, so the next run re-reads them.
        committed = await committed_offsets(settings, group)
        results_tp = TopicPartition(settings.topic_results, open_partition)
        assert committed[results_tp] <= open_offset
        assert open_partition == task_partition(b"c-open", settings.topic_partitions)

        await fake.result(page_result("c-open", 2, "open two"))
        await fake.progress(event("c-open", TaskStatus.COMPLETED, 2, 2))
        for path in out.glob("c-done*"):  # finished tasks are not written again
            if path.is_dir():
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()
            else:
                path.unlink()
        assert await run_tool(collect.main, argv) == EXIT_OK
    assert (out / "c-open" / "document.md").read_text() == (
        "<!-- page 1 -->\nopen one\n\n<!-- page 2 -->\nopen two\n"
    )
    assert not (out / "c-done").exists()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    base = tmp_path_factory.mktemp("s3-figures")
    with s3_server(base / "root", base / "versitygw.log") as running:
        running.client().create_bucket(Bucket="ocr-artifacts")
        yield running


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    with server_credentials(monkeypatch, tmp_path):
        yield


@pytest.mark.usefixtures("aws")
async def test_collect_downloads_figures_from_s3_into_either_layout(
    settings: Settings, s3: S3Server, tmp_path: Path
) -> None:
    """Page results link figures in S3; ocr-collect puts them under images/ of the ZIP and
    rewrites the links, in the default and in the seed layout."""
    store_flags = [
        "--artifacts-uri", "s3://ocr-artifacts/figures", "--s3-endpoint-url", s3.endpoint_url,
        "--s3-region", REGION, "--s3-addressing-style", "path",
    ]
    store = open_artifact_store(Settings(
        artifacts_uri="s3://ocr-artifacts/figures", s3_endpoint_url=s3.endpoint_url,
        s3_region=REGION, s3_addressing_style=S3AddressingStyle.PATH,
    ))
    assert store is not None
    stored = await store.put("fig-task/page-1-fig-1.png", b"\x89PNG figure", "image/png")
    figure = Artifact(uri=stored.uri, media_type="image/png", bytes=stored.bytes,
                      width_px=2, height_px=2)
    result = page_result("fig-task", 1, f"# Chart\n\n![figure 1]({stored.uri})")
    result = result.model_copy(update={
        "raw_text": "<|ref|>image<|/ref|><|det|>[[1, 1, 9, 9]]<|/det|>",
        "blocks": [Block(label="image", bbox_px=[0, 0, 2, 2], artifact=figure)],
    })
    async with FakeOcrConsumer(settings) as fake:
        await fake.result(result)
        await fake.progress(event("fig-task", TaskStatus.COMPLETED, 1, 1))
    for layout in ("default", "seed"):
        out = tmp_path / layout
        assert await run_tool(collect.main, [
            *flags(settings), *store_flags, "--out", str(out), "--layout", layout,
            "--group", f"fig-{uuid.uuid4().hex[:6]}", "--once",
        ]) == EXIT_OK
    with zipfile.ZipFile(tmp_path / "default" / "fig-task.zip") as archive:
        assert archive.read("images/page-1-fig-1.png") == b"\x89PNG figure"
        assert "![figure 1](images/page-1-fig-1.png)" in archive.read("document.md").decode()
    with zipfile.ZipFile(tmp_path / "seed" / "fig-task" / "result.zip") as archive:
        assert archive.namelist() == ["result.md", "raw.json", "images/page-1-img-1.png"]
        assert archive.read("result.md").decode() == (
            "<!-- page:1 -->\n# Chart\n\n![figure 1](images/page-1-img-1.png)\n"
        )
        [raw] = json.loads(archive.read("raw.json"))
        assert raw["raw_text"] == result.raw_text
        assert raw["image_assets"] == ["images/page-1-img-1.png"]


async def test_collect_only_the_named_task(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "only"
    async with FakeOcrConsumer(settings) as fake:
        await fake.complete("pick-me", {1: "mine"})
        await fake.complete("not-me", {1: "theirs"})
    # Without --once, --task exits as soon as the named task is written.
    code = await run_tool(collect.main, [
        *flags(settings), "--out", str(out), "--group", f"only-{uuid.uuid4().hex[:6]}",
        "--task", "pick-me",
    ])
    assert code == EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == ["pick-me", "pick-me.zip"]
    with zipfile.ZipFile(io.BytesIO((out / "pick-me.zip").read_bytes())) as archive:
        assert archive.read("document.md") == b"<!-- page 1 -->\nmine\n"


# --- ocr-cancel ---------------------------------------------------------------------------------


async def _requests_records(settings: Settings, count: int) -> list[Any]:
    reader = AIOKafkaConsumer(
        settings.topic_requests, **client_kwargs(settings), group_id=None,
        auto_offset_reset="earliest",
    )
    await reader.start()
    try:
        records: list[Any] = []
        while len(records) < count:
            batch = await reader.getmany(timeout_ms=5000)
            assert batch, "the records did not arrive"
            records += [r for rs in batch.values() for r in rs]
        return records
    finally:
        await reader.stop()


async def test_cancel_publishes_the_contract_s_record_on_the_task_s_partition(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_tool(cancel.main, [
        *flags(settings), "--reason", "sent by mistake", "big-pdf-1", "other:2",
    ])
    assert code == EXIT_OK
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "cancel sent for big-pdf-1", "cancel sent for other:2",
    ]
    records = await _requests_records(settings, 2)
    by_key = {record.key.decode(): record for record in records}
    assert set(by_key) == {"big-pdf-1", "other:2"}
    for task_id, record in by_key.items():
        # Where the task's request went (murmur2 of the task id), so it queues behind it.
        assert record.partition == task_partition(record.key, settings.topic_partitions)
        value = json.loads(record.value)
        assert value == {"schema_version": 1, "action": "cancel", "task_id": task_id,
                         "reason": "sent by mistake"}
        assert parse_ce_headers(list(record.headers)).type == "ocr.task.cancel.v1"


async def test_cancel_wait_reports_cancelled_ended_and_refused_tasks(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async def answer() -> None:
        # Plays the consumers: one task stops, one had ended, one cancel is refused.
        seen: set[str] = set()
        reader = AIOKafkaConsumer(
            settings.topic_requests, **client_kwargs(settings), group_id=None,
            auto_offset_reset="earliest",
        )
        await reader.start()
        try:
            async with FakeOcrConsumer(settings) as fake:
                while len(seen) < 3:
                    batch = await reader.getmany(timeout_ms=200)
                    for record in (r for rs in batch.values() for r in rs):
                        task_id = json.loads(record.value)["task_id"]
                        seen.add(task_id)
                        if task_id == "c-run":
                            await fake.progress(event(task_id, TaskStatus.PAGE_DONE, 3, 9))
                            await fake.progress(ProgressEvent(
                                task_id=task_id, status=TaskStatus.CANCELLED, pages_done=3,
                                pages_total=9, percent=33.3, message="cancelled after 3 of 9",
                                error=ErrorInfo(code=ErrorCode.TASK_CANCELLED, message="no"),
                                emitted_at=_now(),
                            ))
                        elif task_id == "c-done":
                            await fake.progress(event(task_id, TaskStatus.COMPLETED, 2, 2,
                                                      replayed=True))
                        else:
                            await fake.dead_letter(task_id, ErrorCode.REQUEST_INVALID,
                                                   "source: Field required")
        finally:
            await reader.stop()

    answering_task = asyncio.create_task(answer())
    try:
        code = await run_tool(cancel.main, [
            *flags(settings), "--wait", "--timeout", "60", "--reason", "no",
            "c-run", "c-done", "c-old",
        ])
    finally:
        await answering_task
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    assert "c-run: cancelled after 3 of 9 - TASK_CANCELLED: no" in out
    assert "c-done: already completed, nothing to cancel" in out
    assert "error: c-old: the cancel was refused" in err and "REQUEST_INVALID" not in out


# --- with the real OCR consumer ---------------------------------------------------------------


async def test_submit_collect_with_the_real_consumer(
    stack_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole round trip: hand-over under the consumer's file root, duplicate detection
    through the derived task id, results read back by --out and by ocr-collect."""
    from tests.support.apps import running_app
    from tests.support.documents import make_pdf
    from tests.support.engines import ScriptedEngine

    blob_root = tmp_path / "blobs"
    blob_root.mkdir()
    settings = stack_settings.model_copy(
        update={"blob_root": blob_root, "file_roots": [blob_root.resolve()],
                "metrics_port": 0, "commit_interval_s": 0.2}
    )
    pdf = await asyncio.to_thread(make_pdf, tmp_path / "in" / "letter.pdf", 2)
    out = tmp_path / "out"
    argv = [*flags(settings), "--blob-root", str(blob_root), "--out", str(out),
            "--timeout", "120", str(pdf)]
    engine = ScriptedEngine()
    async with running_app(settings, engine):
        assert await run_tool(submit.main, argv) == EXIT_OK, capsys.readouterr().err
        first = capsys.readouterr().out
        # The same file again: same task id, answered by re-announcing, not recomputed.
        assert await run_tool(submit.main, argv) == EXIT_OK, capsys.readouterr().err
        second = capsys.readouterr().out
    # The app under test may log on stdout too; the task lines are "<id>\t<input>".
    def task_ids(out: str) -> list[str]:
        return [line.split("\t")[0] for line in out.splitlines() if line.endswith(f"\t{pdf}")]

    [task_id] = task_ids(first)
    assert task_ids(second) == [task_id]
    assert sum(engine.calls.values()) == 2  # two pages, computed once
    markdown = (out / "letter.md").read_text()
    assert markdown.startswith("<!-- page 1 -->\n# Page 1 of ")
    assert "<!-- page 2 -->\n# Page 2 of " in markdown

    collected = tmp_path / "collected"
    code = await run_tool(collect.main, [
        *flags(settings), "--out", str(collected), "--group", f"c-{uuid.uuid4().hex[:6]}",
        "--once",
    ])
    assert code == EXIT_OK
    assert (collected / task_id / "document.md").read_text() == markdown
    with zipfile.ZipFile(collected / f"{task_id}.zip") as archive:
        assert {"page-0001.md", "page-0002.md"} <= set(archive.namelist())
