"""ocr-gateway on the real stack: a consumer (scripted engine) works what the gateway
publishes, and the gateway answers from its view of the output topics."""

from __future__ import annotations

import asyncio
import io
import json
import re
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jsonschema
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from PIL import Image

from consumer.config import Settings
from consumer.settings import client_kwargs
from producer_tools import collect
from producer_tools.gateway.access import key_id
from schemas.cloudevents import CE_TYPE_CANCEL, parse_ce_headers
from schemas.control import CancelRequest
from schemas.keys import TaskPartitioner
from schemas.progress import ProgressEvent, TaskStatus
from schemas.result import (
    Artifact,
    EngineIdentity,
    FinishReason,
    PageImageInfo,
    PageResult,
    PageStatus,
)
from tests.support.apps import running_app
from tests.support.documents import make_pdf, make_png, many_pages_pdf
from tests.support.engines import ScriptedEngine
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.kafka import TopicReader, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    return stack_settings.model_copy(
        update={"blob_root": blobs, "file_roots": [blobs], "render_workers": 1}
    )


@pytest.fixture
async def consumer(settings: Settings) -> AsyncIterator[ScriptedEngine]:
    engine = ScriptedEngine()
    # Health on an ephemeral port: a stack's own consumer may hold the default one.
    async with running_app(settings, engine, health_port=0):
        yield engine


async def wait_final(client: httpx.AsyncClient, task_id: str, timeout: float = 60) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = (await client.get(f"/v1/tasks/{task_id}")).json()
        if answer["status"] in ("completed", "failed", "cancelled"):
            return answer
        assert asyncio.get_running_loop().time() < deadline, answer
        await asyncio.sleep(0.2)


def upload(path: Path, **fields: str) -> dict:
    return {"files": {"file": (path.name, path.read_bytes())}, "data": fields}


async def test_upload_to_files_like_ocr_collect(
    settings: Settings, consumer: ScriptedEngine, tmp_path: Path, run_id: str
) -> None:
    pdf = make_pdf(tmp_path / "report.pdf", pages=2)
    async with running_gateway(settings, view_group=f"gw-{run_id}") as gw, gw.client() as client:
        accepted = await client.post("/v1/tasks", **upload(pdf, metadata='{"tenant": "t1"}'))
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]
        assert accepted.headers["location"] == f"/v1/tasks/{task_id}"
        answer = await wait_final(client, task_id)
        assert answer["status"] == "completed"
        assert (answer["pages_done"], answer["pages_total"], answer["percent"]) == (2, 2, 100.0)
        assert [page["page"] for page in answer["pages"]] == [1, 2]
        assert answer["timings"]["finished_at"] and answer["timings"]["total_s"] is not None
        markdown = (await client.get(f"/v1/tasks/{task_id}/result.md")).text
        assert f"# Page 1 of {task_id}" in markdown and "<!-- page 2 -->" in markdown
        pages = (await client.get(f"/v1/tasks/{task_id}/result.json")).json()
        assert [p["metadata"] for p in pages] == [{"tenant": "t1"}] * 2
        archive = (await client.get(f"/v1/tasks/{task_id}/result.zip")).content

        page = (await client.get(f"/v1/tasks/{task_id}/pages/1")).json()
        assert page["html"].startswith("<h1>Page 1 of") and page["blocks"][0]["label"] == "title"
        image = await client.get(page["image_url"])
        assert image.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(image.content)) as png:
            # The pixels the engine saw: bbox_px fit this image.
            assert png.size == (page["image"]["width_px"], page["image"]["height_px"])

    # ocr-collect writes the same ZIP for the same task, byte for byte.
    out = tmp_path / "collected"
    code = await asyncio.to_thread(
        collect.main,
        ["--once", "--out", str(out), "--group", f"collect-{run_id}",
         "--topic-results", settings.topic_results, "--topic-progress", settings.topic_progress,
         "--kafka-bootstrap", settings.kafka_bootstrap],
    )
    assert code == 0
    assert (out / f"{task_id}.zip").read_bytes() == archive
    with zipfile.ZipFile(io.BytesIO(archive)) as files:
        assert files.read("document.md").decode() == markdown


async def test_sync_endpoint_returns_an_image_text(
    settings: Settings, consumer: ScriptedEngine, tmp_path: Path, run_id: str
) -> None:
    png = make_png(tmp_path / "receipt.png")
    async with running_gateway(settings, view_group=f"gw-{run_id}") as gw, gw.client() as client:
        answer = await client.post("/v1/ocr?timeout=60", **upload(png))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "completed"
        assert body["markdown"] == f"<!-- page 1 -->\n# Page 1 of {body['task_id']}\n"
        assert [p["page"] for p in body["pages"]] == [1]

        consumer.delay_s = 5.0
        slow = make_pdf(tmp_path / "slow.pdf", pages=1, lines=2)
        late = await client.post("/v1/ocr?timeout=0.5", **upload(slow))
        assert late.status_code == 202 and late.json()["status_url"].endswith(
            late.json()["task_id"]
        )


async def test_events_stream_until_final(
    settings: Settings, consumer: ScriptedEngine, tmp_path: Path, run_id: str
) -> None:
    consumer.delay_s = 0.3
    pdf = make_pdf(tmp_path / "three.pdf", pages=3, lines=2)
    async with running_gateway(settings, view_group=f"gw-{run_id}") as gw, gw.client() as client:
        task_id = (await client.post("/v1/tasks", **upload(pdf))).json()["task_id"]
        kinds, answers = [], []
        async with client.stream("GET", f"/v1/tasks/{task_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                elif line.startswith("data: ") and kinds[-1] == "progress":
                    answers.append(json.loads(line[6:]))
        assert kinds[-1] == "end" and answers[-1]["status"] == "completed"
        percents = [a["percent"] for a in answers]
        assert percents == sorted(percents) and percents[-1] == 100.0
        assert len(answers) >= 3  # live: pages were seen as they finished


async def test_cancel_publishes_the_contract_record(
    settings: Settings, consumer: ScriptedEngine, tmp_path: Path, run_id: str
) -> None:
    consumer.delay_s = 2.0
    pdf = make_pdf(tmp_path / "long.pdf", pages=3, lines=2)
    async with running_gateway(settings, view_group=f"gw-{run_id}") as gw, gw.client() as client:
        task_id = (await client.post("/v1/tasks", **upload(pdf))).json()["task_id"]
        cancelled = await client.delete(f"/v1/tasks/{task_id}", params={"reason": "not needed"})
        assert cancelled.status_code == 202, cancelled.text
    async with TopicReader(settings, settings.topic_requests) as reader:
        await reader.wait_for(lambda r: len(r.on(settings.topic_requests)) >= 2)
    request, cancel = reader.on(settings.topic_requests)
    assert cancel.key == request.key == task_id
    assert cancel.partition == request.partition  # after its request, on its partition
    assert json.loads(cancel.value or b"") == {
        "schema_version": 1, "action": "cancel", "task_id": task_id, "reason": "not needed",
    }
    CancelRequest.model_validate_json(cancel.value or b"")
    # And by a validator no one here wrote, against the committed JSON Schema.
    schema = json.loads((REPO / "schemas" / "json" / "cancel.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(json.loads(cancel.value or b""))
    headers = parse_ce_headers(list(cancel.headers.items()))
    assert (headers.type, headers.subject) == (CE_TYPE_CANCEL, task_id)


async def declared_too_large(gw: RunningGateway, key: str) -> int:
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/tasks HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100000000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nX-API-Key: " + key.encode()
            + b"\r\n\r\n"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_keys_limits_and_codes(settings: Settings, tmp_path: Path, run_id: str) -> None:
    """No consumer: every refusal happens at the gateway, before anything is published."""
    pdf = make_pdf(tmp_path / "one.pdf", pages=1, lines=1)
    keys = tmp_path / "keys"
    keys.write_text("# ops team\nkey-one\nkey-two  # bench\n")
    limited = settings.model_copy(update={"max_pages": 3, "max_page_pixels": 2_500_000})
    async with running_gateway(
        limited, view_group=f"gw-{run_id}", api_keys_file=keys, max_open_tasks_per_key=1,
        max_upload_bytes=200_000,
    ) as gw, gw.client() as client:
        async def code(response: httpx.Response) -> tuple[int, str]:
            return response.status_code, response.json()["error"]["code"]

        assert await code(await client.post("/v1/tasks", **upload(pdf))) == (
            401, "API_KEY_REQUIRED")
        bad = {"Authorization": "Bearer nope"}
        assert await code(await client.get("/v1/tasks/x", headers=bad)) == (401, "API_KEY_INVALID")
        one = {"X-API-Key": "key-one"}
        assert await code(await client.get("/v1/tasks/x", headers=one)) == (404, "TASK_NOT_FOUND")
        big = tmp_path / "big.pdf"
        big.write_bytes(b"%PDF-1.4\n" + b"0" * 210_000)
        assert await code(await client.post("/v1/tasks", headers=one, **upload(big))) == (
            413, "UPLOAD_TOO_LARGE")
        # A declared length over the limit is refused before a byte of the body is read.
        assert await declared_too_large(gw, "key-one") == 413
        pages = tmp_path / "pages.pdf"
        pages.write_bytes(many_pages_pdf(4))
        assert await code(await client.post("/v1/tasks", headers=one, **upload(pages))) == (
            422, "DOCUMENT_TOO_MANY_PAGES")
        assert await code(
            await client.post("/v1/tasks", headers=one, **upload(pdf, dpi="300"))
        ) == (422, "PAGE_TOO_MANY_PIXELS")
        text = tmp_path / "notes.txt"
        text.write_text("hello")
        assert await code(await client.post("/v1/tasks", headers=one, **upload(text))) == (
            415, "DOCUMENT_UNSUPPORTED_TYPE")
        assert await code(
            await client.post("/v1/tasks", headers=one, json={"source": "file:///etc/passwd"})
        ) == (422, "SOURCE_SCHEME_NOT_ALLOWED")
        assert await code(
            await client.post("/v1/tasks", headers=one, **upload(pdf, prompt="poem"))
        ) == (422, "REQUEST_INVALID")

        first = await client.post("/v1/tasks", headers=one, **upload(pdf))
        assert first.status_code == 202
        # The same document again is the same task: no second slot taken.
        assert (await client.post("/v1/tasks", headers=one, **upload(pdf))).status_code == 202
        other = make_pdf(tmp_path / "other.pdf", pages=1, lines=2)
        assert await code(await client.post("/v1/tasks", headers=one, **upload(other))) == (
            429, "OPEN_TASKS_LIMIT")
        two = {"X-API-Key": "key-two"}
        assert (await client.post("/v1/tasks", headers=two, **upload(other))).status_code == 202
        assert await gw.gateway.store.open_count(key_id("key-one")) == 1
        # Operations and the OpenAPI document need no key.
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/v1/tasks", "/v1/ocr", "/v1/tasks/{task_id}/result.zip"} <= set(paths)
        assert set(paths["/v1/tasks/{task_id}"]) == {"get", "delete"}
        # The API page loads nothing from outside the gateway (no CDN in closed estates).
        page = (await client.get("/docs")).text
        assert "http://" not in page and "https://" not in page
        assets = re.findall(r'(?:src|href)="(/docs-assets/[^"]+)"', page)
        assert len(assets) >= 2
        for asset in assets:
            assert (await client.get(asset)).status_code == 200, asset
        metrics = (await client.get("/metrics")).text
        assert 'ocr_gateway_refused_total{code="OPEN_TASKS_LIMIT"} 1.0' in metrics
        assert "key-one" not in metrics


async def test_view_catches_up_after_a_restart_and_never_reads_requests(
    settings: Settings, tmp_path: Path, run_id: str
) -> None:
    group = f"gw-{run_id}"
    pdf = make_pdf(tmp_path / "while-down.pdf", pages=2, lines=1)
    async with running_gateway(settings, view_group=group) as gw, gw.client() as client:
        task_id = (await client.post("/v1/tasks", **upload(pdf))).json()["task_id"]
    # The gateway is down while the consumer does the work.
    engine = ScriptedEngine()
    async with (
        running_app(settings, engine, health_port=0),
        TopicReader(settings, settings.topic_progress) as r,
    ):
        await r.wait_for(lambda reader: bool(reader.final(settings, task_id)))
    async with running_gateway(settings, view_group=group, ready=False) as gw:
        async with gw.client() as client:
            assert (await client.get("/readyz")).status_code in (200, 503)
            answer = await wait_final(client, task_id, timeout=30)
            await wait_until(lambda: gw.gateway.view.caught_up, 30)
            assert (await client.get("/readyz")).json() == {"ok": True, "reason": "ok"}
        assert answer["status"] == "completed" and answer["pages_done"] == 2
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    assert {tp.topic for tp in committed} == {settings.topic_progress, settings.topic_results}


async def test_page_image_from_the_consumers_store(
    settings: Settings, tmp_path: Path, run_id: str
) -> None:
    """A page image the consumer stored (image.artifact) is served as stored, for a task
    that never came through the gateway. Published here as a consumer would: no consumer of
    this release stores page images yet."""
    root = tmp_path / "artifacts"
    (root / "pages").mkdir(parents=True)
    png_path = root / "pages" / "page-1.png"
    Image.new("RGB", (120, 80), "white").save(png_path)
    stored = settings.model_copy(update={"artifacts_uri": str(root)})
    task_id = f"elsewhere-{run_id}"
    artifact = Artifact(uri=png_path.as_uri(), media_type="image/png",
                        bytes=png_path.stat().st_size, width_px=120, height_px=80)
    now = datetime.now(UTC)
    result = PageResult(
        task_id=task_id, page=1, page_count=1, status=PageStatus.OK, markdown="# Hi",
        finish_reason=FinishReason.STOP, engine=EngineIdentity(name="e", model="m"),
        image=PageImageInfo(width_px=120, height_px=80, dpi=72, artifact=artifact),
        produced_at=now,
    )
    final = ProgressEvent(task_id=task_id, status=TaskStatus.COMPLETED, pages_done=1,
                          pages_total=1, emitted_at=now)
    producer = AIOKafkaProducer(**client_kwargs(stored), partitioner=TaskPartitioner())
    await producer.start()
    try:
        await producer.send_and_wait(stored.topic_results, key=f"{task_id}/1".encode(),
                                     value=result.model_dump_json().encode())
        await producer.send_and_wait(stored.topic_progress, key=task_id.encode(),
                                     value=final.model_dump_json().encode())
    finally:
        await producer.stop()
    async with running_gateway(stored, view_group=f"gw-{run_id}") as gw, gw.client() as client:
        answer = await wait_final(client, task_id, timeout=30)
        assert answer["status"] == "completed"
        page = (await client.get(f"/v1/tasks/{task_id}/pages/1")).json()
        image = await client.get(page["image_url"])
        assert image.status_code == 200, image.text
        assert image.content == png_path.read_bytes()
        missing = await client.get(f"/v1/tasks/{task_id}/pages/2/image.png")
        assert missing.json()["error"]["code"] == "PAGE_IMAGE_UNAVAILABLE"
