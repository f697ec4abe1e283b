"""s3:// claim checks against a real S3 server (Versity's S3 gateway on loopback).

Credentials reach the consumer the way they do in production, through boto3's chain (here
the AWS_* variables); shared config files and the instance metadata service are switched
off so nothing outside the test is read or asked.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.config import S3AddressingStyle, Settings
from consumer.documents import s3fetch
from consumer.documents.fetch import fetch_document
from consumer.errors import OcrError
from schemas.common import ErrorCode
from schemas.progress import TaskStatus
from schemas.request import OcrRequest, Source
from tests.support.apps import running_app
from tests.support.documents import make_pdf
from tests.support.engines import ScriptedEngine
from tests.support.kafka import TopicReader, produce_requests
from tests.support.s3 import REGION, S3Server, s3_server, server_credentials

pytestmark = pytest.mark.integration

BUCKET = "docs"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    base = tmp_path_factory.mktemp("s3")
    with s3_server(base / "root", base / "versitygw.log") as running:
        running.client().create_bucket(Bucket=BUCKET)
        yield running


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    with server_credentials(monkeypatch, tmp_path):
        yield


def s3_settings(server: S3Server, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "s3_buckets": [BUCKET],
        "s3_endpoint_url": server.endpoint_url,
        "s3_region": REGION,
        "s3_addressing_style": S3AddressingStyle.PATH,
        "fetch_timeout_s": 10.0,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def put(server: S3Server, key: str, data: bytes) -> str:
    server.client().put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


async def expect_error(code: ErrorCode, uri: str, settings: Settings) -> OcrError:
    with pytest.raises(OcrError) as caught:
        await fetch_document(Source(uri=uri), settings)
    assert caught.value.code is code, caught.value.message
    return caught.value


async def test_an_object_is_read_checked_and_named_by_its_key(
    server: S3Server, tmp_path: Path
) -> None:
    data = make_pdf(tmp_path / "report.pdf", pages=2).read_bytes()
    uri = put(server, "inbox/2026/quarterly report.pdf", data)
    digest = hashlib.sha256(data).hexdigest()
    document = await fetch_document(Source(uri=uri, sha256=digest), s3_settings(server))
    assert document.data == data and document.sha256 == digest
    assert document.media_type == "application/pdf"
    assert document.name == "quarterly_report.pdf"
    with pytest.raises(OcrError) as caught:
        await fetch_document(Source(uri=uri, sha256="0" * 64), s3_settings(server))
    assert caught.value.code is ErrorCode.SOURCE_HASH_MISMATCH


async def test_missing_objects_and_buckets_are_not_found(server: S3Server) -> None:
    settings = s3_settings(server, s3_buckets=[BUCKET, "never-created"])
    error = await expect_error(ErrorCode.SOURCE_NOT_FOUND, f"s3://{BUCKET}/nope.pdf", settings)
    assert "does not exist" in error.message and "s3://docs/nope.pdf" in error.message
    await expect_error(ErrorCode.SOURCE_NOT_FOUND, "s3://never-created/a.pdf", settings)


async def test_an_object_over_the_size_limit_is_refused(server: S3Server) -> None:
    uri = put(server, "big.pdf", b"%PDF-1.4\n" + b"0" * 4096)
    error = await expect_error(
        ErrorCode.SOURCE_TOO_LARGE, uri, s3_settings(server, max_document_bytes=1024)
    )
    assert "OCR_MAX_DOCUMENT_BYTES=1024" in error.message


async def test_unlisted_buckets_are_refused_even_where_the_object_exists(server: S3Server) -> None:
    put(server, "a.pdf", b"%PDF-1.4\n")
    settings = s3_settings(server, s3_buckets=["other"])
    error = await expect_error(ErrorCode.SOURCE_PATH_NOT_ALLOWED, f"s3://{BUCKET}/a.pdf", settings)
    assert "OCR_S3_BUCKETS" in error.message


async def test_bad_or_missing_credentials_say_what_to_fix(
    server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = put(server, "secret.pdf", b"%PDF-1.4\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    error = await expect_error(ErrorCode.SOURCE_FETCH_FAILED, uri, s3_settings(server))
    assert "did not accept the consumer's credentials" in error.message
    s3fetch.forget_clients()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    error = await expect_error(ErrorCode.SOURCE_FETCH_FAILED, uri, s3_settings(server))
    assert "no usable S3 credentials" in error.message


async def test_an_unreachable_endpoint_fails_with_its_address(server: S3Server) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    settings = s3_settings(server, s3_endpoint_url=closed)
    error = await expect_error(ErrorCode.SOURCE_FETCH_FAILED, f"s3://{BUCKET}/a.pdf", settings)
    assert "cannot reach" in error.message and closed in error.message


async def test_s3_documents_go_through_the_pipeline(
    server: S3Server, stack_settings: Settings, tmp_path: Path
) -> None:
    uri = put(server, "batch/three.pdf", make_pdf(tmp_path / "three.pdf", pages=3).read_bytes())
    settings = stack_settings.model_copy(
        update={
            "s3_buckets": [BUCKET],
            "s3_endpoint_url": server.endpoint_url,
            "s3_region": REGION,
            "s3_addressing_style": S3AddressingStyle.PATH,
            "metrics_port": 0,
        }
    )
    requests = [
        OcrRequest.model_validate({"task_id": "s3-ok", "source": {"uri": uri}}, strict=False),
        OcrRequest.model_validate(
            {"task_id": "s3-refused", "source": {"uri": "s3://elsewhere/x.pdf"}}, strict=False
        ),
    ]
    async with running_app(settings, ScriptedEngine()):
        await produce_requests(settings, requests)
        async with TopicReader(settings, settings.topic_results, settings.topic_progress) as reader:
            try:
                await reader.wait_for(
                    lambda r: all(r.final(settings, t) for t in ("s3-ok", "s3-refused")),
                    timeout=120,
                )
            except TimeoutError:
                seen = [(e.task_id, str(e.status), e.error) for e in reader.progress(settings)]
                raise AssertionError(f"not every task ended; progress seen: {seen}") from None
    assert sorted(r.page for r in reader.results(settings) if r.task_id == "s3-ok") == [1, 2, 3]
    [done] = reader.final(settings, "s3-ok")
    assert done.status is TaskStatus.COMPLETED
    [refused] = reader.final(settings, "s3-refused")
    assert refused.status is TaskStatus.FAILED
    assert refused.error is not None and refused.error.code is ErrorCode.SOURCE_PATH_NOT_ALLOWED
