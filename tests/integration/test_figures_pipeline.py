"""Figures end to end on the real broker, Redis and S3 server: a page whose model output has
`image` blocks goes through the real consumer (the scripted engine stands in for vLLM and
answers with DeepSeek-OCR's grounded output), its figures land in the artifact store, the
page results link them, and ocr-collect writes a ZIP whose document.md links resolve."""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from consumer import app as app_module
from consumer.app import EXIT_SETTINGS, EXIT_UNREACHABLE, App
from consumer.config import S3AddressingStyle, Settings, artifact_store_uri
from producer_tools import EXIT_OK, collect
from schemas.progress import TaskStatus
from schemas.request import OcrRequest, PromptKind, Source
from schemas.result import PageResult, PageStatus
from tests.support.apps import running_app
from tests.support.documents import REPORT_FIGURES, make_report_pdf, report_grounded
from tests.support.engines import ScriptedEngine
from tests.support.kafka import TopicReader, produce_requests
from tests.support.s3 import REGION, S3Server, s3_server, server_credentials

pytestmark = pytest.mark.integration

LINK = re.compile(r"!\[[^\]\n]*\]\(([^)\s]+)\)")
BUCKET = "ocr-artifacts"


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={"file_roots": [tmp_path], "metrics_port": 0, "commit_interval_s": 0.2}
    )


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    base = tmp_path_factory.mktemp("s3-pipeline")
    with s3_server(base / "root", base / "versitygw.log") as running:
        running.client().create_bucket(Bucket=BUCKET)
        yield running


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    with server_credentials(monkeypatch, tmp_path):
        yield


def _flags(settings: Settings) -> list[str]:
    flags = [
        "--kafka-bootstrap", settings.kafka_bootstrap,
        "--topic-results", settings.topic_results, "--topic-progress", settings.topic_progress,
        "--log-format", "json", "--log-level", "WARNING",
    ]
    if settings.artifacts_uri is not None:
        flags += ["--artifacts-uri", settings.artifacts_uri]
    if settings.s3_endpoint_url is not None:
        flags += ["--s3-endpoint-url", settings.s3_endpoint_url, "--s3-region", REGION,
                  "--s3-addressing-style", "path"]
    return flags


async def _run_report(settings: Settings, tmp_path: Path, task_id: str) -> list[PageResult]:
    """The two-page report through the real consumer; its page results."""
    pdf = await asyncio.to_thread(make_report_pdf, tmp_path / f"{task_id}.pdf")
    engine = ScriptedEngine(grounded=lambda page: report_grounded(page.page))
    request = OcrRequest(
        task_id=task_id, source=Source(uri=pdf.resolve().as_uri()), prompt=PromptKind.MARKDOWN
    )
    async with (
        running_app(settings, engine),
        TopicReader(settings, settings.topic_results, settings.topic_progress) as reader,
    ):
        await produce_requests(settings, [request])
        await reader.wait_for(lambda r: bool(r.final(settings, task_id)), timeout=120)
    [final] = reader.final(settings, task_id)
    assert final.status is TaskStatus.COMPLETED and final.pages_failed == 0, final
    results = sorted(reader.results(settings), key=lambda r: r.page)
    assert [r.page for r in results] == [1, 2]
    return results


async def _collect(settings: Settings, out: Path, task_id: str) -> zipfile.ZipFile:
    code = await asyncio.to_thread(collect.main, [
        *_flags(settings), "--out", str(out), "--group", f"c-{uuid.uuid4().hex[:6]}",
        "--task", task_id,
    ])
    assert code == EXIT_OK
    return zipfile.ZipFile(io.BytesIO((out / f"{task_id}.zip").read_bytes()))


def _check_linked(results: list[PageResult], store_prefix: str) -> None:
    """Every figure block carries its stored crop, and the Markdown links exactly those."""
    for result in results:
        assert result.status is PageStatus.OK
        assert result.raw_text == report_grounded(result.page)
        figures = [block for block in result.blocks if block.label == "image"]
        assert len(figures) == len(REPORT_FIGURES[result.page])
        for n, figure in enumerate(figures, start=1):
            key = f"{result.task_id}/page-{result.page}-fig-{n}.png"
            assert figure.artifact is not None and figure.artifact.uri == f"{store_prefix}/{key}"
            assert figure.artifact.media_type == "image/png" and figure.artifact.bytes > 0
        assert LINK.findall(result.markdown) == [f.artifact.uri for f in figures if f.artifact]


def _check_zip(archive: zipfile.ZipFile, results: list[PageResult]) -> None:
    """document.md renders inside the unpacked ZIP: each link names a member, a PNG of the
    figure's size; pages.json keeps the raw output."""
    names = set(archive.namelist())
    document = archive.read("document.md").decode()
    links = LINK.findall(document)
    assert links == [
        f"images/page-{page}-fig-{n}.png"
        for page, figures in REPORT_FIGURES.items() for n in range(1, len(figures) + 1)
    ]
    by_uri = {b.artifact.uri: b.artifact for r in results for b in r.blocks if b.artifact}
    sizes = sorted((a.width_px, a.height_px) for a in by_uri.values())
    seen = []
    for link in links:
        assert link in names, (link, sorted(names))
        with Image.open(io.BytesIO(archive.read(link))) as image:
            assert image.format == "PNG"
            seen.append(image.size)
    assert sorted(seen) == sizes
    pages = json.loads(archive.read("pages.json"))
    assert [p["raw_text"] for p in pages] == [report_grounded(1), report_grounded(2)]


async def test_figures_from_a_folder_store_reach_the_collected_zip(
    settings: Settings, tmp_path: Path
) -> None:
    store = tmp_path / "artifacts"
    store.mkdir()
    settings = settings.model_copy(update={"artifacts_uri": artifact_store_uri(str(store))})
    results = await _run_report(settings, tmp_path, "fig-folder")
    _check_linked(results, store.as_uri())
    assert sorted(p.name for p in (store / "fig-folder").iterdir()) == [
        "page-1-fig-1.png", "page-2-fig-1.png", "page-2-fig-2.png",
    ]
    with await _collect(settings, tmp_path / "out", "fig-folder") as archive:
        _check_zip(archive, results)


@pytest.mark.usefixtures("aws")
async def test_figures_in_s3_reach_the_collected_zip(
    settings: Settings, s3: S3Server, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={
        "artifacts_uri": f"s3://{BUCKET}/figures", "s3_endpoint_url": s3.endpoint_url,
        "s3_region": REGION, "s3_addressing_style": S3AddressingStyle.PATH,
        "artifact_page_images": True,
    })
    results = await _run_report(settings, tmp_path, "fig-s3")
    _check_linked(results, f"s3://{BUCKET}/figures")
    for result in results:  # the rendered pages too, as asked
        assert result.image.artifact is not None
        assert result.image.artifact.uri == f"s3://{BUCKET}/figures/fig-s3/page-{result.page}.png"
        head = s3.client().head_object(Bucket=BUCKET, Key=f"figures/fig-s3/page-{result.page}.png")
        assert head["ContentLength"] == result.image.artifact.bytes
    with await _collect(settings, tmp_path / "out", "fig-s3") as archive:
        _check_zip(archive, results)


async def test_without_a_store_the_markdown_says_why_each_figure_is_missing(
    settings: Settings, tmp_path: Path
) -> None:
    results = await _run_report(settings, tmp_path, "fig-none")
    for result in results:
        assert not LINK.findall(result.markdown)
        assert all(block.artifact is None for block in result.blocks)
        assert result.markdown.count("not stored: no artifact store is configured") == len(
            REPORT_FIGURES[result.page]
        )
    with await _collect(settings, tmp_path / "out", "fig-none") as archive:
        assert not [name for name in archive.namelist() if name.startswith("images/")]
        assert not LINK.findall(archive.read("document.md").decode())


async def test_a_store_that_refuses_stops_the_consumer_before_it_joins(
    settings: Settings, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder should be")
    refused = settings.model_copy(update={"artifacts_uri": artifact_store_uri(str(blocked))})
    engine = ScriptedEngine()
    app = App(refused, engine=engine)
    await asyncio.wait_for(app.run(), 60)
    assert app.exit_code == EXIT_SETTINGS
    assert not engine.started and not app.ready, "the engine is not even loaded"


@pytest.mark.usefixtures("aws")
async def test_a_store_that_does_not_answer_stops_the_consumer_with_exit_4(
    settings: Settings, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "STORE_WAIT_S", 1.0)
    s3_settings = {
        "s3_region": REGION, "s3_addressing_style": S3AddressingStyle.PATH,
        "fetch_timeout_s": 5.0,
    }
    unreachable = settings.model_copy(update={
        "artifacts_uri": f"s3://{BUCKET}", "s3_endpoint_url": "http://127.0.0.1:9",
        **s3_settings,
    })
    app = App(unreachable, engine=ScriptedEngine())
    await asyncio.wait_for(app.run(), 120)
    assert app.exit_code == EXIT_UNREACHABLE
    no_bucket = settings.model_copy(update={
        "artifacts_uri": "s3://no-such-bucket", "s3_endpoint_url": s3.endpoint_url,
        **s3_settings,
    })
    app = App(no_bucket, engine=ScriptedEngine())
    await asyncio.wait_for(app.run(), 60)
    assert app.exit_code == EXIT_SETTINGS
