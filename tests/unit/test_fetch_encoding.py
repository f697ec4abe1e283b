"""http(s) bodies sent with a Content-Encoding: decoded within the document byte cap."""

from __future__ import annotations

import gzip
import hashlib
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable

import httpx
import pymupdf
import pytest

from consumer.config import Settings
from consumer.documents import contentcoding, httpfetch
from consumer.documents.fetch import fetch_document
from consumer.documents.media import PDF
from consumer.errors import OcrError
from schemas.common import ErrorCode
from schemas.request import Source

URL = "http://127.0.0.1:8080/doc.pdf"
CAP = 1024 * 1024


def pdf_bytes() -> bytes:
    document = pymupdf.open()
    document.new_page().insert_text((72, 72), "Compressed on the way")
    data: bytes = document.tobytes()
    return data


PDF_DATA = pdf_bytes()


def gzip_of_zeros(mebibytes: int) -> bytes:
    """A gzip bomb: `mebibytes` MiB of zeros in about a thousandth of that."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    return b"".join([packer.compress(zeros) for _ in range(mebibytes)] + [packer.flush()])


BOMB = gzip_of_zeros(64)


def chunked(data: bytes, size: int = 64 * 1024) -> Callable[[], AsyncIterator[bytes]]:
    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return body


def serve(
    monkeypatch: pytest.MonkeyPatch, body: bytes, encoding: str | None, *, size: int = 64 * 1024
) -> list[httpx.Request]:
    """Answer every download with `body` as the raw bytes on the wire, in `size` chunks."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"Content-Encoding": encoding} if encoding is not None else {}
        return httpx.Response(200, headers=headers, content=chunked(body, size)())

    transport = httpx.MockTransport(handler)
    monkeypatch.setattr(httpfetch, "make_transport", lambda settings: transport)
    return seen


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "allow_private_networks": True, "fetch_timeout_s": 10.0, "max_document_bytes": CAP,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def fetch_error(expected: ErrorCode, **overrides: object) -> OcrError:
    with pytest.raises(OcrError) as caught:
        await fetch_document(Source(uri=URL), settings(**overrides))
    assert caught.value.code is expected, caught.value.message
    return caught.value


def deflate_raw(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


async def test_a_gzip_bomb_is_refused_without_inflating_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve(monkeypatch, BOMB, "gzip")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        error = await fetch_error(ErrorCode.SOURCE_TOO_LARGE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"OCR_MAX_DOCUMENT_BYTES={CAP}" in error.message
    # The cap plus a few decode steps and raw chunks, not the ~64 MB that inflating one
    # 64 KiB chunk of this body at once would take.
    assert peak < CAP + 4 * 1024 * 1024, peak


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", deflate_raw),
        ("identity", lambda data: data),
        ("identity, gzip", gzip.compress),
    ],
    ids=["gzip", "x-gzip", "upper-case", "deflate-zlib", "deflate-raw", "identity", "listed"],
)
@pytest.mark.parametrize("chunk", [1, 7, 65536], ids=["1-byte", "7-byte", "64k"])
async def test_an_encoded_pdf_arrives_decoded(
    monkeypatch: pytest.MonkeyPatch, encoding: str, encode: Callable[[bytes], bytes], chunk: int
) -> None:
    serve(monkeypatch, encode(PDF_DATA), encoding, size=chunk)
    sha256 = hashlib.sha256(PDF_DATA).hexdigest()
    document = await fetch_document(Source(uri=URL, sha256=sha256), settings())
    assert document.data == PDF_DATA and document.media_type == PDF


async def test_we_still_ask_for_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = serve(monkeypatch, PDF_DATA, None)
    await fetch_document(Source(uri=URL), settings())
    assert seen[0].headers["accept-encoding"] == "identity"


async def test_gzip_members_back_to_back_are_one_body(monkeypatch: pytest.MonkeyPatch) -> None:
    half = len(PDF_DATA) // 2
    serve(monkeypatch, gzip.compress(PDF_DATA[:half]) + gzip.compress(PDF_DATA[half:]), "gzip")
    assert (await fetch_document(Source(uri=URL), settings())).data == PDF_DATA


async def test_the_cap_counts_decoded_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    exactly = b"%PDF-" + bytes(CAP - 5)
    serve(monkeypatch, gzip.compress(exactly), "gzip")
    # At the cap: fetched (the renderer refuses it later, which is not this test's concern).
    assert len((await fetch_document(Source(uri=URL), settings())).data) == CAP
    serve(monkeypatch, gzip.compress(exactly + b"x"), "gzip")
    await fetch_error(ErrorCode.SOURCE_TOO_LARGE)


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "deflate, br"])
async def test_other_encodings_are_refused_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    serve(monkeypatch, gzip.compress(PDF_DATA), encoding)
    error = await fetch_error(ErrorCode.SOURCE_FETCH_FAILED)
    assert f"Content-Encoding {encoding}" in error.message
    assert "identity" in error.message and "gzip" in error.message


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (gzip.compress(PDF_DATA)[:-40], "ends before its end marker"),
        (b"\x1f\x8b\x08\x00" + b"\xff" * 200, "corrupt"),
        (b"not gzip at all, just text", "corrupt"),
    ],
    ids=["cut-short", "bad-deflate", "no-gzip-header"],
)
async def test_broken_compression_is_a_fetch_failure(
    monkeypatch: pytest.MonkeyPatch, body: bytes, why: str
) -> None:
    serve(monkeypatch, body, "gzip")
    error = await fetch_error(ErrorCode.SOURCE_FETCH_FAILED)
    assert why in error.message and "Content-Encoding gzip" in error.message


async def test_an_empty_encoded_body_is_an_empty_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve(monkeypatch, b"", "gzip")
    await fetch_error(ErrorCode.DOCUMENT_EMPTY)


def test_every_decoded_piece_is_one_step_at_most() -> None:
    decoder = contentcoding.decoder_for(["gzip"], URL)
    pieces = list(decoder.feed(BOMB[:200_000]))
    assert pieces and max(len(piece) for piece in pieces) <= contentcoding.DECODE_STEP
    # Lazy: taking one piece decodes one step, not the chunk.
    first = next(iter(contentcoding.decoder_for(["gzip"], URL).feed(BOMB)))
    assert len(first) == contentcoding.DECODE_STEP
