"""The artifact store on a real S3 server (Versity's S3 gateway on loopback), reached with
the consumer's own S3 settings and client, as in production."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from consumer.artifacts.figures import store_page_artifacts
from consumer.artifacts.store import ArtifactError, S3Store, open_artifact_store
from consumer.config import S3AddressingStyle, Settings
from consumer.documents import s3fetch
from consumer.engines.base import EngineOutput, PageImage
from consumer.postprocess.page import deepseek_page_text
from schemas.common import ErrorCode
from schemas.result import FinishReason
from tests.support.s3 import REGION, S3Server, s3_server, server_credentials

pytestmark = pytest.mark.integration

BUCKET = "ocr-artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    base = tmp_path_factory.mktemp("s3-artifacts")
    with s3_server(base / "root", base / "versitygw.log") as running:
        running.client().create_bucket(Bucket=BUCKET)
        running.client().create_bucket(Bucket="other-bucket")
        yield running


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    with server_credentials(monkeypatch, tmp_path):
        yield


def s3_store(server: S3Server, uri: str = f"s3://{BUCKET}/figures") -> S3Store:
    settings = Settings(
        artifacts_uri=uri, s3_endpoint_url=server.endpoint_url, s3_region=REGION,
        s3_addressing_style=S3AddressingStyle.PATH, fetch_timeout_s=10.0,
    )
    store = open_artifact_store(settings)
    assert isinstance(store, S3Store)
    return store


async def test_put_and_read_back(server: S3Server) -> None:
    store = s3_store(server)
    await store.check()
    stored = await store.put("doc-1/page-1-fig-1.png", b"\x89PNG crop", "image/png")
    assert stored.uri == "s3://ocr-artifacts/figures/doc-1/page-1-fig-1.png"
    assert stored.bytes == 9
    head = server.client().head_object(Bucket=BUCKET, Key="figures/doc-1/page-1-fig-1.png")
    assert head["ContentType"] == "image/png"
    assert await store.read(stored.uri) == b"\x89PNG crop"


async def test_reads_only_inside_the_store(server: S3Server) -> None:
    store = s3_store(server)
    server.client().put_object(Bucket="other-bucket", Key="figures/x.png", Body=b"x")
    server.client().put_object(Bucket=BUCKET, Key="private/x.png", Body=b"x")
    for uri in (
        "s3://other-bucket/figures/x.png",
        f"s3://{BUCKET}/private/x.png",
        f"s3://{BUCKET}/figures/../private/x.png",
        f"s3://{BUCKET}/figures",
        "file:///etc/passwd",
    ):
        assert not store.owns(uri), uri
        with pytest.raises(ArtifactError) as refused:
            await store.read(uri)
        assert refused.value.code is ErrorCode.ARTIFACT_URI_NOT_ALLOWED, uri


async def test_errors_name_the_cause(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    store = s3_store(server)
    with pytest.raises(ArtifactError) as missing:
        await store.read(f"s3://{BUCKET}/figures/nobody/wrote-this.png")
    assert missing.value.code is ErrorCode.ARTIFACT_NOT_FOUND
    with pytest.raises(ArtifactError) as no_bucket:
        await s3_store(server, "s3://no-such-bucket/figures").check()
    assert no_bucket.value.code is ErrorCode.ARTIFACT_STORE_FAILED
    assert "does not exist; create it or fix OCR_ARTIFACTS_URI" in no_bucket.value.message
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    s3fetch.forget_clients()
    with pytest.raises(ArtifactError) as refused:
        await store.check()
    assert refused.value.code is ErrorCode.ARTIFACT_STORE_FAILED
    assert "did not accept this process's credentials to write" in refused.value.message
    assert "(SignatureDoesNotMatch)" in refused.value.message


async def test_unreachable_store_fails_with_advice(tmp_path: Path) -> None:
    settings = Settings(
        artifacts_uri=f"s3://{BUCKET}", s3_endpoint_url="http://127.0.0.1:9",
        s3_region=REGION, s3_addressing_style=S3AddressingStyle.PATH, fetch_timeout_s=5.0,
    )
    store = open_artifact_store(settings)
    assert store is not None
    with pytest.raises(ArtifactError) as unreachable:
        await store.put("t/f.png", b"x", "image/png")
    assert unreachable.value.code is ErrorCode.ARTIFACT_STORE_FAILED
    assert "check OCR_S3_ENDPOINT_URL" in unreachable.value.message


async def test_a_page_with_figures_ends_in_s3(server: S3Server) -> None:
    store = s3_store(server)
    image = Image.new("RGB", (800, 600), "white")
    ImageDraw.Draw(image).ellipse((100, 100, 300, 300), fill="blue")
    page = PageImage(task_id="report-7", page=2, image=image, dpi=144)
    raw = (
        "<|ref|>text<|/ref|><|det|>[[10, 10, 990, 80]]<|/det|>\nIntro.\n\n"
        "<|ref|>image<|/ref|><|det|>【【100、100】、【500、600】】<|/det|>\n"
    )
    text = deepseek_page_text(raw, page, crop_figures=True)
    output = EngineOutput(
        markdown=text.markdown, text=text.text, blocks=text.blocks,
        finish_reason=FinishReason.STOP, raw_text=raw, figures=text.figures,
    )
    stored = await store_page_artifacts(store, output, page)
    uri = "s3://ocr-artifacts/figures/report-7/page-2-fig-1.png"
    assert stored.failures == []
    assert stored.output.markdown == f"Intro.\n\n![figure 1]({uri})"
    figure = stored.output.blocks[1].artifact
    assert figure is not None and figure.uri == uri
    body = server.client().get_object(Bucket=BUCKET, Key="figures/report-7/page-2-fig-1.png")
    with Image.open(io.BytesIO(body["Body"].read())) as crop:
        assert crop.size == (figure.width_px, figure.height_px) == (321, 301)
