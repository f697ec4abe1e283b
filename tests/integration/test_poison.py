"""Poison inputs end to end through Kafka: each ends as a coded DLQ record, a `failed` task
with a precise error code, or a page with its own error; the consumer keeps serving.

The unit tests (test_fetch.py, test_render.py, test_schemas.py) prove each refusal on its
own; this file proves that the loop turns every one of them into a message and moves on:
one App (ScriptedEngine, so only the inputs are slow) receives all poison at once, then a
valid request, which must still complete, and the group's committed offsets must reach the
end of every partition (no poison record stalls one).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from PIL import Image

from consumer.config import Settings
from consumer.settings.kafka import client_kwargs
from schemas.common import ErrorCode
from schemas.dlq import DlqEnvelope
from schemas.headers import DLQ_ERROR_CODE
from schemas.progress import TaskStatus
from schemas.result import PageStatus
from tests.support.apps import running_app
from tests.support.documents import encrypted_pdf, make_pdf, many_pages_pdf, png_claiming
from tests.support.engines import ScriptedEngine
from tests.support.kafka import TopicReader, produce_raw

pytestmark = pytest.mark.integration

# Small, so that an over-size record is cheap to make; large enough for every other case.
MAX_REQUEST_BYTES = 64 * 1024


# -- documents that must be refused --------------------------------------------------------


def huge_page_pdf() -> bytes:
    """One 200 x 200 inch page: 829 Mpx at 144 dpi, refused before rendering."""
    document = pymupdf.open()
    document.new_page(width=14_400, height=14_400)
    data: bytes = document.tobytes()
    return data


def bilevel_bomb() -> bytes:
    """8000 x 8000 one-bit pixels: a few KB of PNG that would decode to 192 MB of RGB."""
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000), 1).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_file(pdf: bytes) -> bytes:
    """A PDF zipped (deflated, as archivers do): not a PDF to the sniffer. (A stored zip
    shows the PDF header in its first KB and is refused later, as DOCUMENT_CORRUPT.)"""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("invoice.pdf", pdf)
    return buffer.getvalue()


# -- the cases -----------------------------------------------------------------------------


@dataclass
class Expect:
    """Where a case must end: a DLQ record, a failed task, or a completed task whose page
    `page` failed; each with `code`."""

    code: ErrorCode
    where: str  # "dlq" | "failed" | "page"
    page: int = 1
    message_has: str = ""


@dataclass
class Plan:
    raw: list[tuple[str, bytes | None]] = field(default_factory=list)  # (key, value)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (id, body)
    expect: dict[str, Expect] = field(default_factory=dict)  # key or task id -> outcome

    def poison_bytes(self, key: str, value: bytes | None, code: ErrorCode) -> None:
        self.raw.append((key, value))
        self.expect[key] = Expect(code, "dlq")

    def poison_json(self, key: str, body: Any, code: ErrorCode) -> None:
        self.poison_bytes(key, json.dumps(body).encode(), code)

    def task(self, task_id: str, source: dict[str, Any], expect: Expect,
             **fields: Any) -> None:
        self.requests.append((task_id, {"task_id": task_id, "source": source, **fields}))
        self.expect[task_id] = expect


def uri(path: Path) -> dict[str, Any]:
    return {"uri": path.as_uri()}


@dataclass
class HttpTrap:
    """A loopback HTTP server that must never see a connection."""

    port: int = 0
    connections: int = 0


@pytest.fixture
async def http_trap() -> AsyncIterator[HttpTrap]:
    trap = HttpTrap()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        trap.connections += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n%PDF-1.7")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    trap.port = server.sockets[0].getsockname()[1]
    try:
        yield trap
    finally:
        server.close()
        await server.wait_closed()


def build_plan(root: Path, outside: Path, trap: HttpTrap) -> Plan:
    plan = Plan()
    good = make_pdf(root / "good.pdf", pages=2)
    good_source = uri(good)

    # Records that are not a usable request at all: DLQ.
    plan.poison_bytes("p-not-json", b"this is not json {", ErrorCode.REQUEST_NOT_JSON)
    plan.poison_bytes("p-not-utf8", b'{"task_id": "\xff\xfe"}', ErrorCode.REQUEST_NOT_UTF8)
    # Not starting with a zero byte, which would read as Schema Registry framing.
    plan.poison_bytes("p-binary", bytes(range(255, -1, -1)) * 4, ErrorCode.REQUEST_NOT_UTF8)
    plan.poison_bytes("p-registry-framed", b"\x00\x00\x00\x00\x07" + b'{"task_id": "x"}',
                      ErrorCode.REQUEST_SCHEMA_REGISTRY_FRAMED)
    plan.poison_bytes("p-tombstone", None, ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-array", [1, 2, 3], ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-string", "a string", ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-source-string", {"task_id": "shape-1", "source": "file:///x.pdf"},
                     ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-dpi-string", {"task_id": "shape-2", "source": good_source,
                                      "dpi": "144"}, ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-unknown-field", {"task_id": "shape-3", "source": good_source,
                                         "priority": "urgent"}, ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-both-sources", {"task_id": "shape-4", "source": {
        "uri": good.as_uri(), "inline_base64": "JVBERi0="}}, ErrorCode.REQUEST_INVALID)
    # Deep nesting exhausts json's recursive parser: a RecursionError, not a decode error,
    # used to escape the loop and kill the consumer on every re-delivery.
    plan.poison_bytes("p-deep-open", b"[" * 30_000, ErrorCode.REQUEST_INVALID)
    plan.poison_bytes("p-deep-valid", b"[" * 5000 + b"]" * 5000, ErrorCode.REQUEST_INVALID)
    plan.poison_bytes(
        "p-deep-metadata",
        b'{"task_id": "deep-1", "source": {"uri": "file:///x.pdf"}, "metadata": {"a": '
        + b"[" * 300 + b"]" * 300 + b"}}",
        ErrorCode.REQUEST_INVALID,
    )
    plan.poison_json("p-version", {"schema_version": 9, "task_id": "v9", "source": good_source},
                     ErrorCode.REQUEST_UNSUPPORTED_VERSION)
    plan.poison_json("p-no-task-id", {"source": good_source}, ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-slash-task-id", {"task_id": "../../etc", "source": good_source},
                     ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-locate-10k", {"task_id": "big-locate", "source": good_source,
                                      "prompt": "locate", "locate_text": "x" * 10_000},
                     ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-metadata-entries", {"task_id": "big-meta-1", "source": good_source,
                                            "metadata": {f"k{i}": i for i in range(500)}},
                     ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-metadata-value", {"task_id": "big-meta-2", "source": good_source,
                                          "metadata": {"note": "y" * 20_000}},
                     ErrorCode.REQUEST_INVALID)
    plan.poison_json("p-too-large", {"task_id": "too-large", "source": good_source,
                                     "metadata": {"pad": "z" * (MAX_REQUEST_BYTES + 10)}},
                     ErrorCode.REQUEST_TOO_LARGE)

    # Valid requests for documents that must be refused: failed tasks with a code.
    def failed(code: ErrorCode, message_has: str = "") -> Expect:
        return Expect(code, "failed", message_has=message_has)

    plan.task("s-ftp", {"uri": "ftp://example.com/doc.pdf"},
              failed(ErrorCode.SOURCE_SCHEME_NOT_ALLOWED))
    plan.task("s-gopher", {"uri": "gopher://example.com/1doc"},
              failed(ErrorCode.SOURCE_SCHEME_NOT_ALLOWED))
    plan.task("s-passwd", {"uri": "file:///etc/passwd"},
              failed(ErrorCode.SOURCE_PATH_NOT_ALLOWED))
    plan.task("s-traversal", {"uri": root.as_uri() + "/../../../../etc/passwd"},
              failed(ErrorCode.SOURCE_PATH_NOT_ALLOWED))
    secret = outside / "secret.pdf"
    make_pdf(secret, pages=1)
    (root / "escape.pdf").symlink_to(secret)
    plan.task("s-symlink", uri(root / "escape.pdf"), failed(ErrorCode.SOURCE_PATH_NOT_ALLOWED))
    plan.task("s-missing", uri(root / "nowhere.pdf"), failed(ErrorCode.SOURCE_NOT_FOUND))
    os.mkfifo(root / "fifo.pdf")
    plan.task("s-fifo", uri(root / "fifo.pdf"), failed(ErrorCode.SOURCE_FETCH_FAILED))
    plan.task("s-directory", uri(root), failed(ErrorCode.SOURCE_FETCH_FAILED))
    for name, address in [
        ("loopback", f"127.0.0.1:{trap.port}"), ("localhost", f"localhost:{trap.port}"),
        ("private", "10.0.0.1"), ("metadata", "169.254.169.254"),
        ("ipv6-loopback", f"[::1]:{trap.port}"),
    ]:
        plan.task(f"s-http-{name}", {"uri": f"http://{address}/latest/doc.pdf"},
                  failed(ErrorCode.SOURCE_HOST_NOT_ALLOWED, "OCR_ALLOW_PRIVATE_NETWORKS"))

    documents: dict[str, tuple[bytes, Expect]] = {
        "d-corrupt": (b"%PDF-1.7\nthis is not a PDF body at all",
                      failed(ErrorCode.DOCUMENT_CORRUPT)),
        "d-zeros": (b"%PDF-1.4\n" + b"\x00" * 4096, failed(ErrorCode.DOCUMENT_CORRUPT)),
        "d-empty": (b"", failed(ErrorCode.DOCUMENT_EMPTY)),
        "d-encrypted": (encrypted_pdf(), failed(ErrorCode.DOCUMENT_ENCRYPTED)),
        "d-10000-pages": (many_pages_pdf(10_000),
                          failed(ErrorCode.DOCUMENT_TOO_MANY_PAGES, "OCR_MAX_PAGES")),
        "d-bomb-header": (png_claiming(100_000, 100_000),
                          failed(ErrorCode.PAGE_TOO_MANY_PIXELS)),
        "d-bomb-bilevel": (bilevel_bomb(), Expect(ErrorCode.PAGE_TOO_MANY_PIXELS, "page")),
        "d-huge-page": (huge_page_pdf(), Expect(ErrorCode.PAGE_TOO_MANY_PIXELS, "page")),
        "d-text": (b"Dear customer, your invoice total is 42.\n",
                   failed(ErrorCode.DOCUMENT_UNSUPPORTED_TYPE)),
        "d-zip": (zip_file(good.read_bytes()), failed(ErrorCode.DOCUMENT_UNSUPPORTED_TYPE)),
    }
    suffix = {"d-text": ".txt", "d-zip": ".zip", "d-bomb-header": ".png",
              "d-bomb-bilevel": ".png"}
    for task_id, (data, expect) in documents.items():
        path = root / f"{task_id}{suffix.get(task_id, '.pdf')}"
        path.write_bytes(data)
        plan.task(task_id, uri(path), expect)
    plan.task("d-declared-zip", {**good_source, "media_type": "application/zip"},
              failed(ErrorCode.DOCUMENT_UNSUPPORTED_TYPE))
    plan.task("d-sha-mismatch", {**good_source, "sha256": hashlib.sha256(b"other").hexdigest()},
              failed(ErrorCode.SOURCE_HASH_MISMATCH))
    plan.task("d-bad-base64", {"inline_base64": "not base64 at all!"},
              failed(ErrorCode.REQUEST_INVALID))
    plan.task("d-inline-text", {"inline_base64": base64.b64encode(b"plain text").decode()},
              failed(ErrorCode.DOCUMENT_UNSUPPORTED_TYPE))
    plan.task("d-pages-beyond", good_source, failed(ErrorCode.PAGE_RANGE_EMPTY),
              pages=[{"first": 50, "last": 60}])
    return plan


# -- reading the outcome -------------------------------------------------------------------


def dlq_by_key(reader: TopicReader, settings: Settings) -> dict[str, list[str]]:
    """Original record key -> the codes of its dead letters (header and envelope agree)."""
    out: dict[str, list[str]] = {}
    for record in reader.on(settings.topic_dlq):
        assert record.value is not None
        envelope = DlqEnvelope.model_validate_json(record.value)
        header = record.headers[DLQ_ERROR_CODE].decode()
        assert header == envelope.error_code.value
        key = (base64.b64decode(envelope.original_key_base64).decode()
               if envelope.original_key_base64 else "")
        out.setdefault(key, []).append(header)
    return out


def outcome_problems(reader: TopicReader, settings: Settings, plan: Plan) -> list[str]:
    problems = []
    dead = dlq_by_key(reader, settings)
    results = reader.results(settings)
    for key, expect in plan.expect.items():
        if expect.where == "dlq":
            if dead.get(key) != [expect.code.value]:
                problems.append(f"{key}: expected one DLQ record {expect.code.value}, "
                                f"got {dead.get(key)}")
            continue
        finals = reader.final(settings, key)
        if len(finals) != 1:
            problems.append(f"{key}: expected one final status, got {len(finals)}")
            continue
        final = finals[0]
        if expect.where == "failed":
            error = final.error
            if final.status is not TaskStatus.FAILED or error is None or (
                error.code is not expect.code
            ):
                problems.append(
                    f"{key}: expected failed {expect.code.value}, got {final.status.value} "
                    f"{error.code.value if error else ''}: {error.message if error else ''}"
                )
            elif expect.message_has not in error.message:
                problems.append(f"{key}: message lacks {expect.message_has!r}: {error.message}")
        else:
            pages = [r for r in results if r.task_id == key and r.page == expect.page]
            if final.status is not TaskStatus.COMPLETED or final.pages_failed != 1:
                problems.append(f"{key}: expected completed with one failed page, got "
                                f"{final.status.value}, {final.pages_failed} failed")
            elif len(pages) != 1 or pages[0].status is not PageStatus.FAILED or (
                pages[0].error is None or pages[0].error.code is not expect.code
            ):
                problems.append(f"{key}: page {expect.page} should fail with "
                                f"{expect.code.value}: {pages}")
    return problems


async def committed_to_end(settings: Settings, timeout: float = 20.0) -> dict[int, int]:
    """Uncommitted requests per partition once the group has caught up (empty = none)."""
    partitions = [TopicPartition(settings.topic_requests, p)
                  for p in range(settings.topic_partitions)]
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None)
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await consumer.start()
    await admin.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ends = await consumer.end_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(settings.group_id)
            behind = {
                tp.partition: end - max(committed[tp].offset if tp in committed else 0, 0)
                for tp, end in ends.items()
            }
            behind = {p: n for p, n in behind.items() if n}
            if not behind or loop.time() > deadline:
                return behind
            await asyncio.sleep(0.3)
    finally:
        await consumer.stop()
        await admin.close()


async def produce_json(settings: Settings, task_id: str, body: dict[str, Any]) -> None:
    await produce_raw(settings, json.dumps(body).encode(), key=task_id.encode())


def all_settled(settings: Settings, plan: Plan) -> Callable[[TopicReader], bool]:
    def check(reader: TopicReader) -> bool:
        dead = dlq_by_key(reader, settings)
        for key, expect in plan.expect.items():
            if expect.where == "dlq" and key not in dead:
                return False
            if expect.where != "dlq" and not reader.final(settings, key):
                return False
        return True

    return check


# -- the tests -----------------------------------------------------------------------------


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    root = tmp_path / "root"
    root.mkdir()
    return stack_settings.model_copy(update={
        "file_roots": [root], "metrics_port": 0, "commit_interval_s": 0.2,
        "allow_private_networks": False, "max_request_bytes": MAX_REQUEST_BYTES,
        "fetch_timeout_s": 5.0,
    })


async def test_poison_ends_coded_and_the_consumer_keeps_serving(
    settings: Settings, tmp_path: Path, http_trap: HttpTrap
) -> None:
    root = settings.file_roots[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    plan = build_plan(root, outside, http_trap)
    conflict_first = {"task_id": "conflict-1", "source": uri(make_pdf(root / "c1.pdf", 1))}
    conflict_second = {"task_id": "conflict-1", "source": uri(make_pdf(root / "c2.pdf", 2))}
    after = {"task_id": "after-poison", "source": uri(make_pdf(root / "after.pdf", 2))}
    engine = ScriptedEngine()
    async with (
        running_app(settings, engine) as app,
        TopicReader(settings, settings.topic_results, settings.topic_progress,
                    settings.topic_dlq) as reader,
    ):
        await produce_json(settings, "conflict-1", conflict_first)
        for key, value in plan.raw:
            await produce_raw(settings, value, key=key.encode())
        for task_id, body in plan.requests:
            await produce_json(settings, task_id, body)
        await reader.wait_for(all_settled(settings, plan), timeout=120)
        # The same task id with other content, once the first is recorded.
        await reader.wait_for(lambda r: bool(r.final(settings, "conflict-1")))
        await produce_json(settings, "conflict-1", conflict_second)
        # Poison behind it; still serving: a valid request completes.
        await produce_json(settings, "after-poison", after)
        await reader.wait_for(
            lambda r: bool(r.final(settings, "after-poison"))
            and "conflict-1" in dlq_by_key(r, settings),
            timeout=60,
        )
        assert app.ready, "the consumer stopped serving"
        behind = await committed_to_end(settings)
    problems = outcome_problems(reader, settings, plan)
    assert not problems, "\n".join(problems)
    assert dlq_by_key(reader, settings)["conflict-1"] == [ErrorCode.TASK_ID_CONFLICT.value]
    [final] = reader.final(settings, "after-poison")
    assert final.status is TaskStatus.COMPLETED and final.pages_done == 2
    # The refused http(s) sources were refused before any connection.
    assert http_trap.connections == 0
    # Only the valid documents reached the engine.
    assert {task for task, _ in engine.calls} <= {"conflict-1", "after-poison"}
    assert not behind, f"poison left uncommitted requests (partition: count) {behind}"


async def test_conflicting_duplicate_while_the_first_runs(
    settings: Settings, tmp_path: Path
) -> None:
    """Two requests with one task id and different content, back to back: the second must
    not be taken as a copy of the first (which would silently drop it)."""
    root = settings.file_roots[0]
    first = {"task_id": "race-1", "source": uri(make_pdf(root / "r1.pdf", 4))}
    second = {"task_id": "race-1", "source": uri(make_pdf(root / "r2.pdf", 1))}
    # Slow pages keep the first running while the second arrives.
    async with (
        running_app(settings, ScriptedEngine(delay_s=0.5, concurrency=1)),
        TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader,
    ):
        await produce_json(settings, "race-1", first)
        await reader.wait_for(
            lambda r: any(e.task_id == "race-1" for e in r.progress(settings))
        )
        await produce_json(settings, "race-1", second)
        await reader.wait_for(lambda r: bool(r.final(settings, "race-1")))
        # Time for the second to be handled, whatever the outcome.
        await asyncio.sleep(2.0)
        await reader.poll()
    assert dlq_by_key(reader, settings).get("race-1") == [ErrorCode.TASK_ID_CONFLICT.value]
