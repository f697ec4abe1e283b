"""s3:// claim checks before any connection: the uri and the bucket allowlist.

Reading objects is tested against a real S3 server in tests/integration/test_s3_fetch.py.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from consumer.config import Settings
from consumer.documents.fetch import fetch_document
from consumer.documents.s3fetch import S3Object, _read_capped, check_bucket, parse_s3_uri
from consumer.errors import OcrError
from schemas.common import ErrorCode
from schemas.request import Source


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://docs/a.pdf", "docs", "a.pdf"),
        ("S3://docs/in box/scan 1.png", "docs", "in box/scan 1.png"),  # keys are literal
        ("s3://my.bucket-2/a/b/c?.pdf", "my.bucket-2", "a/b/c?.pdf"),
        ("s3://docs/%20x", "docs", "%20x"),  # no percent-decoding, as S3 tools
    ],
)
def test_bucket_and_key_come_from_the_uri_as_written(uri: str, bucket: str, key: str) -> None:
    assert parse_s3_uri(uri) == S3Object(bucket, key)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("s3://Docs/a.pdf", "not a valid bucket name"),
        ("s3://ab/a.pdf", "not a valid bucket name"),
        ("s3://a..b/a.pdf", "not a valid bucket name"),
        ("s3://user:pw@docs/a.pdf", "not a valid bucket name"),
        ("s3:///a.pdf", "not a valid bucket name"),
        ("s3://docs", "names no object key"),
        ("s3://docs/", "names no object key"),
        ("s3://docs/" + "k" * 1025, "longer than S3's 1024 bytes"),
        ("s3://docs\n/a.pdf", "not a valid bucket name"),
        ("s3://docs/../secret/x.pdf", "'..' path segment"),
        ("s3://docs/a/./b.pdf", "'..' path segment"),
        ("s3://docs/a//b.pdf", "'..' path segment"),
        ("s3://docs/a/", "'..' path segment"),
        ("s3://docs/a\x00b.pdf", "control character"),
    ],
)
def test_malformed_s3_uris_are_invalid_requests(uri: str, says: str) -> None:
    with pytest.raises(OcrError) as caught:
        parse_s3_uri(uri)
    assert caught.value.code is ErrorCode.REQUEST_INVALID and says in caught.value.message


def test_only_listed_buckets_may_be_read() -> None:
    obj = S3Object("docs", "a.pdf")
    check_bucket(obj, Settings(s3_buckets=["docs", "scans"]))
    with pytest.raises(OcrError) as caught:
        check_bucket(S3Object("other", "a.pdf"), Settings(s3_buckets=["docs", "scans"]))
    assert caught.value.code is ErrorCode.SOURCE_PATH_NOT_ALLOWED
    assert "not one of OCR_S3_BUCKETS (docs, scans)" in caught.value.message
    with pytest.raises(OcrError) as caught:
        check_bucket(obj, Settings())
    assert "s3:// sources need OCR_S3_BUCKETS" in caught.value.message


def test_bucket_list_reads_as_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCR_S3_BUCKETS", " docs, scans ,, ")
    assert Settings().s3_buckets == ["docs", "scans"]


async def test_s3_is_refused_before_any_connection_without_a_listed_bucket() -> None:
    # No endpoint is reachable from here: a connection attempt would fail differently.
    with pytest.raises(OcrError) as caught:
        await fetch_document(
            Source(uri="s3://docs/a.pdf"), Settings(fetch_timeout_s=2, s3_buckets=[])
        )
    assert caught.value.code is ErrorCode.SOURCE_PATH_NOT_ALLOWED


def test_settings_refuse_a_bad_endpoint_or_bucket_name() -> None:
    from pydantic import ValidationError

    for bad in ({"s3_endpoint_url": "minio:9000"}, {"s3_buckets": ["Docs"]},
                {"s3_buckets": ["a..b"]},
                {"vision_cudagraphs": True, "enforce_eager": True}):  # fmt: skip
        with pytest.raises(ValidationError):
            Settings(**bad)  # type: ignore[arg-type]
    Settings(s3_endpoint_url="http://minio:9000", s3_buckets=["docs", "scans.2026"])


class _Body:
    def __init__(self, chunks: list[bytes], delay_s: float = 0.0) -> None:
        self._chunks, self._delay_s, self.closed = list(chunks), delay_s, False

    def read(self, amount: int) -> bytes:
        time.sleep(self._delay_s)
        return self._chunks.pop(0) if self._chunks else b""

    def close(self) -> None:
        self.closed = True


class _Client:
    """A stand-in for boto3's client: how the body arrives, not S3 (the real server is in
    tests/integration/test_s3_fetch.py)."""

    def __init__(self, body: _Body, length: int | None) -> None:
        self.body, self.length = body, length

    def get_object(self, Bucket: str, Key: str) -> dict[str, object]:
        return {"Body": self.body, "ContentLength": self.length}


@pytest.mark.parametrize("length", [None, 10])  # unknown, or understated by the server
def test_the_size_cap_holds_while_reading_and_the_body_is_closed(length: int | None) -> None:
    body = _Body([b"x" * 800, b"x" * 800])
    settings = Settings(max_document_bytes=1024, s3_buckets=["docs"])
    with pytest.raises(OcrError) as caught:
        _read_capped(_Client(body, length), S3Object("docs", "a"), settings, time.monotonic() + 5)
    assert caught.value.code is ErrorCode.SOURCE_TOO_LARGE and body.closed


def test_the_deadline_holds_between_chunks_and_the_body_is_closed() -> None:
    body = _Body([b"x"] * 50, delay_s=0.02)
    settings = Settings(fetch_timeout_s=0.1, s3_buckets=["docs"])
    with pytest.raises(OcrError) as caught:
        _read_capped(_Client(body, None), S3Object("docs", "a"), settings, time.monotonic() + 0.1)
    assert caught.value.code is ErrorCode.SOURCE_TIMEOUT and body.closed


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_s3_uris_parse_or_fail_with_a_coded_error(rest: str) -> None:
    try:
        obj = parse_s3_uri("s3://" + rest)
    except OcrError as exc:
        assert exc.code is ErrorCode.REQUEST_INVALID
    else:
        assert f"s3://{obj.bucket}/{obj.key}" == "s3://" + rest
