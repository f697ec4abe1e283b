"""Fetching claim checks: allowlists, SSRF guards, limits, hashes and media sniffing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pymupdf as _pymupdf
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

from consumer.config import Settings
from consumer.documents import httpfetch, netguard
from consumer.documents.fetch import FetchedDocument, document_name, fetch_document
from consumer.documents.media import JPEG, PDF, PNG, TIFF, WEBP, sniff_media_type
from consumer.errors import OcrError
from schemas.common import ErrorCode
from schemas.request import Source

# PyMuPDF's own annotations are partial; see consumer/documents/rasterize.py.
pymupdf: Any = _pymupdf


def pdf_bytes(pages: int = 2) -> bytes:
    document = pymupdf.open()
    for number in range(1, pages + 1):
        document.new_page().insert_text((72, 72), f"Page {number}")
    data: bytes = document.tobytes()
    return data


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), "white").save(buffer, format=fmt)
    return buffer.getvalue()


PDF_DATA = pdf_bytes()


def make_settings(tmp_path: Path | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {"fetch_timeout_s": 5.0}
    if tmp_path is not None:
        values["file_roots"] = [tmp_path / "root"]
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def expect_error(code: ErrorCode, source: Source, settings: Settings) -> OcrError:
    with pytest.raises(OcrError) as caught:
        await fetch_document(source, settings)
    assert caught.value.code is code, caught.value.message
    return caught.value


def inline(data: bytes, **fields: object) -> Source:
    return Source(inline_base64=base64.b64encode(data).decode(), **fields)  # type: ignore[arg-type]


# -- inline documents, hashes and media types --------------------------------------------


async def test_inline_document_is_decoded_hashed_and_sniffed() -> None:
    document = await fetch_document(inline(PDF_DATA, filename="Q3 report.pdf"), make_settings())
    assert document == FetchedDocument(
        data=PDF_DATA,
        media_type=PDF,
        sha256=hashlib.sha256(PDF_DATA).hexdigest(),
        name="Q3_report.pdf",
    )


@pytest.mark.parametrize(
    "text",
    ["not base64!!", "QUJD\nREVG", "QUJDRA", "QQ==QQ==", "Zm9v YmFy", "é"],
    ids=["alphabet", "newline", "padding", "inner-padding", "space", "non-ascii"],
)
async def test_bad_base64_is_an_invalid_request(text: str) -> None:
    error = await expect_error(
        ErrorCode.REQUEST_INVALID, Source(inline_base64=text), make_settings()
    )
    assert "base64" in error.message and "no line breaks" in error.message


async def test_inline_needs_the_inline_scheme() -> None:
    await expect_error(
        ErrorCode.SOURCE_SCHEME_NOT_ALLOWED,
        inline(PDF_DATA),
        make_settings(allowed_schemes=["file", "https"]),
    )


async def test_inline_size_limit() -> None:
    await expect_error(
        ErrorCode.SOURCE_TOO_LARGE,
        inline(b"%PDF-" + b"x" * 5000),
        make_settings(max_document_bytes=4096),
    )


async def test_empty_document_is_refused() -> None:
    error = await expect_error(ErrorCode.DOCUMENT_EMPTY, inline(b""), make_settings())
    assert "0 bytes" in error.message


async def test_hash_is_checked_when_given() -> None:
    right = hashlib.sha256(PDF_DATA).hexdigest()
    document = await fetch_document(inline(PDF_DATA, sha256=right), make_settings())
    assert document.sha256 == right
    error = await expect_error(
        ErrorCode.SOURCE_HASH_MISMATCH, inline(PDF_DATA, sha256="0" * 64), make_settings()
    )
    assert right in error.message and "0" * 64 in error.message


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (PDF_DATA, PDF),
        (b"\r\n--boundary junk\r\n" + PDF_DATA, PDF),
        (image_bytes("PNG"), PNG),
        (image_bytes("JPEG"), JPEG),
        (image_bytes("TIFF"), TIFF),
        (image_bytes("WEBP"), WEBP),
    ],
    ids=["pdf", "pdf-after-junk", "png", "jpeg", "tiff", "webp"],
)
async def test_media_type_comes_from_the_bytes(data: bytes, media_type: str) -> None:
    # The declaration is wrong on purpose: the bytes win.
    document = await fetch_document(inline(data, media_type="image/png"), make_settings())
    assert document.media_type == media_type


@pytest.mark.parametrize(
    "data", [b"hello, plain text", image_bytes("GIF"), image_bytes("BMP"), b"PK\x03\x04zip"]
)
async def test_unsupported_bytes_are_refused(data: bytes) -> None:
    error = await expect_error(ErrorCode.DOCUMENT_UNSUPPORTED_TYPE, inline(data), make_settings())
    assert "PDF, PNG, JPEG, TIFF or WebP" in error.message


@pytest.mark.parametrize("declared", ["text/html", "image/gif", "application/zip"])
async def test_unsupported_declared_type_is_refused(declared: str) -> None:
    await expect_error(
        ErrorCode.DOCUMENT_UNSUPPORTED_TYPE,
        inline(PDF_DATA, media_type=declared),
        make_settings(),
    )


@pytest.mark.parametrize(
    "declared", ["application/octet-stream", "image/jpg", "Application/PDF; charset=binary"]
)
async def test_generic_and_alias_declared_types_are_accepted(declared: str) -> None:
    document = await fetch_document(inline(PDF_DATA, media_type=declared), make_settings())
    assert document.media_type == PDF


@given(st.binary(max_size=64))
def test_sniffing_never_fails_on_arbitrary_bytes(data: bytes) -> None:
    assert sniff_media_type(data) in (None, PDF, PNG, JPEG, TIFF, WEBP)


@given(st.text(max_size=40))
def test_document_names_are_safe_file_names(name: str) -> None:
    cleaned = document_name(Source(inline_base64="", filename=name[:255]))
    assert cleaned and "/" not in cleaned and "\\" not in cleaned
    assert not cleaned.startswith(".") and len(cleaned) <= 128


# -- schemes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://example.com/doc.pdf",
        "gopher://example.com/1",
        "data:application/pdf;base64,JVBERi0=",
        "/srv/ocr-blobs/doc.pdf",
        "inline:doc",
        "jar:file:///srv/ocr-blobs/x.zip!/a.pdf",
    ],
)
async def test_disallowed_schemes_are_refused(uri: str) -> None:
    error = await expect_error(
        ErrorCode.SOURCE_SCHEME_NOT_ALLOWED, Source(uri=uri), make_settings()
    )
    assert "OCR_ALLOWED_SCHEMES" in error.message


async def test_enabled_scheme_without_a_fetcher_says_so() -> None:
    error = await expect_error(
        ErrorCode.SOURCE_SCHEME_NOT_ALLOWED,
        Source(uri="ftp://example.com/doc.pdf"),
        make_settings(allowed_schemes=["ftp"]),
    )
    assert "no fetcher" in error.message


async def test_http_can_be_disabled_separately_from_https() -> None:
    await expect_error(
        ErrorCode.SOURCE_SCHEME_NOT_ALLOWED,
        Source(uri="http://example.com/doc.pdf"),
        make_settings(allowed_schemes=["https"]),
    )


# -- file:// -----------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "root"
    (directory / "sub dir").mkdir(parents=True)
    (directory / "sub dir" / "my doc.pdf").write_bytes(PDF_DATA)
    (tmp_path / "outside.pdf").write_bytes(PDF_DATA)
    (tmp_path / "root-evil").mkdir()
    (tmp_path / "root-evil" / "doc.pdf").write_bytes(PDF_DATA)
    return directory


async def test_file_under_a_root_is_read(root: Path, tmp_path: Path) -> None:
    uri = (root / "sub dir" / "my doc.pdf").as_uri()
    assert "%20" in uri
    document = await fetch_document(Source(uri=uri), make_settings(tmp_path))
    assert document.data == PDF_DATA and document.name == "my_doc.pdf"


async def test_file_outside_the_roots_is_refused(root: Path, tmp_path: Path) -> None:
    error = await expect_error(
        ErrorCode.SOURCE_PATH_NOT_ALLOWED,
        Source(uri="file:///etc/passwd"),
        make_settings(tmp_path),
    )
    assert error.message.startswith("file:///etc/passwd is outside the allowed roots (")
    assert str(root) in error.message and "OCR_FILE_ROOTS" in error.message


async def test_a_relative_root_is_the_folder_it_named_when_settings_loaded(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(None, file_roots=["root"])
    monkeypatch.chdir("/")  # the consumer's working directory is no longer where it was
    uri = (root / "sub dir" / "my doc.pdf").as_uri()
    assert (await fetch_document(Source(uri=uri), settings)).data == PDF_DATA
    error = await expect_error(
        ErrorCode.SOURCE_PATH_NOT_ALLOWED, Source(uri="file:///etc/passwd"), settings
    )
    # The allowed roots as the consumer checks them: absolute, not "root".
    assert f"outside the allowed roots ({root})" in error.message


@pytest.mark.parametrize(
    "tail",
    ["../outside.pdf", "sub%20dir/../../outside.pdf", "%2e%2e/outside.pdf", "../root-evil/doc.pdf"],
)
async def test_traversal_is_refused(root: Path, tmp_path: Path, tail: str) -> None:
    uri = f"file://{root}/{tail}"
    await expect_error(ErrorCode.SOURCE_PATH_NOT_ALLOWED, Source(uri=uri), make_settings(tmp_path))


async def test_symlinks_are_followed_before_the_check(root: Path, tmp_path: Path) -> None:
    (root / "escape.pdf").symlink_to(tmp_path / "outside.pdf")
    (root / "escape-dir").symlink_to(tmp_path / "root-evil")
    (root / "inside.pdf").symlink_to(root / "sub dir" / "my doc.pdf")
    settings = make_settings(tmp_path)
    for name in ("escape.pdf", "escape-dir/doc.pdf"):
        await expect_error(
            ErrorCode.SOURCE_PATH_NOT_ALLOWED, Source(uri=(root / name).as_uri()), settings
        )
    document = await fetch_document(Source(uri=(root / "inside.pdf").as_uri()), settings)
    assert document.data == PDF_DATA


async def test_a_root_that_is_a_symlink_is_resolved_too(root: Path, tmp_path: Path) -> None:
    (tmp_path / "alias").symlink_to(root)
    settings = make_settings(file_roots=[tmp_path / "alias"])
    document = await fetch_document(
        Source(uri=(root / "sub dir" / "my doc.pdf").as_uri()), settings
    )
    assert document.data == PDF_DATA


async def test_missing_files(root: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    await expect_error(
        ErrorCode.SOURCE_NOT_FOUND, Source(uri=(root / "nope.pdf").as_uri()), settings
    )
    # Outside the roots, existence is nobody's business: same refusal as for real files.
    await expect_error(
        ErrorCode.SOURCE_PATH_NOT_ALLOWED, Source(uri="file:///etc/no-such-file"), settings
    )


async def test_special_files_are_refused_without_hanging(root: Path, tmp_path: Path) -> None:
    os.mkfifo(root / "pipe.pdf")
    settings = make_settings(tmp_path)
    start = time.perf_counter()
    await expect_error(
        ErrorCode.SOURCE_FETCH_FAILED, Source(uri=(root / "pipe.pdf").as_uri()), settings
    )
    await expect_error(
        ErrorCode.SOURCE_FETCH_FAILED, Source(uri=(root / "sub dir").as_uri()), settings
    )
    assert time.perf_counter() - start < 2


async def test_file_size_limit(root: Path, tmp_path: Path) -> None:
    (root / "big.pdf").write_bytes(b"%PDF-" + b"0" * 10_000)
    error = await expect_error(
        ErrorCode.SOURCE_TOO_LARGE,
        Source(uri=(root / "big.pdf").as_uri()),
        make_settings(tmp_path, max_document_bytes=4096),
    )
    assert "OCR_MAX_DOCUMENT_BYTES=4096" in error.message


@pytest.mark.parametrize(
    "uri", ["file://fileserver/share/doc.pdf", "file:relative/doc.pdf", "file:///a.pdf?x=1"]
)
async def test_odd_file_uris_are_refused(uri: str, tmp_path: Path) -> None:
    await expect_error(ErrorCode.SOURCE_PATH_NOT_ALLOWED, Source(uri=uri), make_settings(tmp_path))


# -- a tiny HTTP server on 127.0.0.1 ------------------------------------------------------

Handler = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass
class LocalServer:
    port: int
    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    connections: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def respond(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handler(writer: asyncio.StreamWriter) -> None:
        head = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in head.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    return respond(status, headers={"Location": location})


def endless(chunk: bytes, pause_s: float) -> Handler:
    """A body without Content-Length that never ends (until the client hangs up)."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        while True:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(pause_s)

    return handler


async def silent(writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    state = LocalServer(port=0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            host = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in head
                    if line.lower().startswith("host:")
                ),
                "",
            )
            state.requests.append((path, host))
            await state.routes.get(path, respond(404))(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield state
        listener.close()


def private_ok(**overrides: object) -> Settings:
    return make_settings(None, allow_private_networks=True, **overrides)


# -- http(s) with private networks allowed (the local server) -----------------------------


async def test_http_download(server: LocalServer) -> None:
    server.routes["/docs/scan%201.pdf"] = respond(200, PDF_DATA)
    document = await fetch_document(Source(uri=server.url("/docs/scan%201.pdf")), private_ok())
    assert document.data == PDF_DATA and document.name == "scan_1.pdf"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, ErrorCode.SOURCE_NOT_FOUND),
        (410, ErrorCode.SOURCE_NOT_FOUND),
        (403, ErrorCode.SOURCE_FETCH_FAILED),
        (500, ErrorCode.SOURCE_FETCH_FAILED),
        (304, ErrorCode.SOURCE_FETCH_FAILED),
    ],
)
async def test_http_errors(server: LocalServer, status: int, code: ErrorCode) -> None:
    server.routes["/x"] = respond(status, b"nope")
    error = await expect_error(code, Source(uri=server.url("/x")), private_ok())
    assert str(status) in error.message


async def test_declared_length_over_the_cap_is_refused_before_the_body(
    server: LocalServer,
) -> None:
    async def liar(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n%PDF-")
        await writer.drain()
        await asyncio.sleep(3600)  # a client waiting for the body would time out

    server.routes["/big"] = liar
    start = time.perf_counter()
    await expect_error(
        ErrorCode.SOURCE_TOO_LARGE,
        Source(uri=server.url("/big")),
        private_ok(max_document_bytes=100_000, fetch_timeout_s=5),
    )
    assert time.perf_counter() - start < 1


async def test_endless_body_stops_at_the_cap(server: LocalServer) -> None:
    server.routes["/flood"] = endless(b"%PDF-" + b"x" * 65_536, pause_s=0)
    start = time.perf_counter()
    error = await expect_error(
        ErrorCode.SOURCE_TOO_LARGE,
        Source(uri=server.url("/flood")),
        private_ok(max_document_bytes=1_000_000, fetch_timeout_s=10),
    )
    assert time.perf_counter() - start < 3
    assert "OCR_MAX_DOCUMENT_BYTES=1000000" in error.message


async def test_slow_drip_hits_the_overall_deadline(server: LocalServer) -> None:
    # Every read succeeds quickly, so only a whole-download deadline can stop this.
    server.routes["/drip"] = endless(b"x", pause_s=0.05)
    start = time.perf_counter()
    error = await expect_error(
        ErrorCode.SOURCE_TIMEOUT, Source(uri=server.url("/drip")), private_ok(fetch_timeout_s=1)
    )
    assert 0.9 < time.perf_counter() - start < 2.5
    assert "OCR_FETCH_TIMEOUT_S" in error.message


async def test_silent_server_times_out(server: LocalServer) -> None:
    server.routes["/silent"] = silent
    await expect_error(
        ErrorCode.SOURCE_TIMEOUT, Source(uri=server.url("/silent")), private_ok(fetch_timeout_s=0.5)
    )


async def test_redirects_are_followed_up_to_five(server: LocalServer) -> None:
    server.routes["/final.pdf"] = respond(200, PDF_DATA)
    for hop in range(5):
        server.routes[f"/r{hop}"] = redirect(f"/r{hop + 1}" if hop < 4 else "/final.pdf")
    document = await fetch_document(Source(uri=server.url("/r0")), private_ok())
    assert document.data == PDF_DATA
    assert [path for path, _ in server.requests] == [
        "/r0",
        "/r1",
        "/r2",
        "/r3",
        "/r4",
        "/final.pdf",
    ]
    assert document.name == "r0"  # named after what the sender asked for


async def test_six_redirects_are_too_many(server: LocalServer) -> None:
    server.routes["/loop"] = redirect("/loop", status=307)
    error = await expect_error(
        ErrorCode.SOURCE_FETCH_FAILED, Source(uri=server.url("/loop")), private_ok()
    )
    assert "more than 5" in error.message
    assert len(server.requests) == 6


async def test_redirect_to_another_scheme_is_refused(server: LocalServer) -> None:
    server.routes["/to-file"] = redirect("file:///etc/passwd")
    server.routes["/no-location"] = respond(301)
    await expect_error(
        ErrorCode.SOURCE_SCHEME_NOT_ALLOWED, Source(uri=server.url("/to-file")), private_ok()
    )
    await expect_error(
        ErrorCode.SOURCE_FETCH_FAILED, Source(uri=server.url("/no-location")), private_ok()
    )


async def test_redirect_to_a_malformed_url_is_a_fetch_failure(server: LocalServer) -> None:
    # httpx raises InvalidURL (not an HTTPError) on this Location; it ended as INTERNAL.
    server.routes["/bad"] = redirect("http:127.0.0.1/x")
    error = await expect_error(
        ErrorCode.SOURCE_FETCH_FAILED, Source(uri=server.url("/bad")), private_ok()
    )
    assert "malformed redirect Location" in error.message
    for location in ("https:x", "http://["):
        server.routes["/odd"] = redirect(location)
        await expect_error(
            ErrorCode.SOURCE_FETCH_FAILED, Source(uri=server.url("/odd")), private_ok()
        )


async def test_connection_refused_is_a_fetch_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        await expect_error(
            ErrorCode.SOURCE_FETCH_FAILED,
            Source(uri=f"http://127.0.0.1:{port}/a.pdf"),
            private_ok(),
        )


# -- the address guard -------------------------------------------------------------------


@dataclass
class ConnectAttempts:
    targets: list[object] = field(default_factory=list)


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectAttempts]:
    """Record (and block) every outgoing TCP connect, at the socket and the loop level."""
    attempts = ConnectAttempts()

    def refuse(target: object) -> OSError:
        attempts.targets.append(target)
        return ConnectionRefusedError(f"test blocked a connect to {target!r}")

    def socket_connect(self: socket.socket, address: object) -> None:
        raise refuse(address)

    async def loop_connect(
        self: asyncio.AbstractEventLoop, *args: object, **kwargs: object
    ) -> None:
        raise refuse(args[1:3] if len(args) > 2 else kwargs)

    monkeypatch.setattr(socket.socket, "connect", socket_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", socket_connect)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_connection", loop_connect)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "sock_connect", loop_connect)
    yield attempts


def fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> list[str]:
    """Answer host names from `table`; returns the list of names looked up."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[netguard.IPAddress]:
        asked.append(host)
        return [ipaddress.ip_address(address) for address in table[host]]

    monkeypatch.setattr(netguard, "resolve_host", resolve)
    return asked


async def test_the_connect_guard_does_see_connections(
    server: LocalServer, no_connect: ConnectAttempts
) -> None:
    # Without this, "no attempt recorded" below could mean the guard is blind.
    server.routes["/a.pdf"] = respond(200, PDF_DATA)
    await expect_error(
        ErrorCode.SOURCE_FETCH_FAILED, Source(uri=server.url("/a.pdf")), private_ok()
    )
    assert no_connect.targets


@pytest.mark.parametrize(
    "uri",
    [
        "http://10.0.0.1/doc.pdf",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/doc.pdf",
        "http://[::ffff:127.0.0.1]/doc.pdf",
        "http://[fe80::1]/doc.pdf",
        "http://[fd12:3456::1]/doc.pdf",
        "https://192.168.1.20/doc.pdf",
        "http://100.64.0.1/doc.pdf",
        "http://224.0.0.1/doc.pdf",
        "http://0.0.0.0/doc.pdf",
        "http://2130706433/doc.pdf",
        "http://0x7f.1/doc.pdf",
        "http://localhost/doc.pdf",
    ],
)
async def test_private_addresses_are_refused_without_connecting(
    uri: str, no_connect: ConnectAttempts
) -> None:
    error = await expect_error(ErrorCode.SOURCE_HOST_NOT_ALLOWED, Source(uri=uri), make_settings())
    assert "OCR_ALLOW_PRIVATE_NETWORKS" in error.message
    assert no_connect.targets == []


async def test_loopback_server_sees_nothing(
    server: LocalServer, no_connect: ConnectAttempts
) -> None:
    server.routes["/a.pdf"] = respond(200, PDF_DATA)
    await expect_error(
        ErrorCode.SOURCE_HOST_NOT_ALLOWED, Source(uri=server.url("/a.pdf")), make_settings()
    )
    assert no_connect.targets == [] and server.connections == 0


async def test_host_names_resolving_to_private_addresses_are_refused(
    monkeypatch: pytest.MonkeyPatch, no_connect: ConnectAttempts
) -> None:
    fake_dns(
        monkeypatch,
        {
            "intranet.example.test": ["10.1.2.3"],
            "mixed.example.test": ["93.184.215.14", "192.168.0.7"],
            "nat64.example.test": ["64:ff9b::a9fe:a9fe"],  # 169.254.169.254 through NAT64
        },
    )
    for host in ("intranet", "mixed", "nat64"):
        await expect_error(
            ErrorCode.SOURCE_HOST_NOT_ALLOWED,
            Source(uri=f"https://{host}.example.test/d.pdf"),
            make_settings(),
        )
    assert no_connect.targets == []


class RecordingTransport(httpx.AsyncBaseTransport):
    """Stands in for the network: answers from a table keyed by (Host header, path)."""

    def __init__(self, answers: dict[tuple[str, str], httpx.Response]) -> None:
        self.answers = answers
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.answers[(request.headers["host"], request.url.path)]
        # As from the network: a body still to be streamed (a Response built with bytes is
        # read already, which no real transport does).
        return httpx.Response(
            answer.status_code, headers=answer.headers, stream=httpx.ByteStream(answer.content)
        )


def use_transport(monkeypatch: pytest.MonkeyPatch, transport: RecordingTransport) -> None:
    monkeypatch.setattr(httpfetch, "make_transport", lambda settings: transport)


async def test_connections_go_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rebinding: the second lookup would say 127.0.0.1, but there is no second lookup.
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> list[netguard.IPAddress]:
        asked.append(host)
        return [ipaddress.ip_address(a) for a in next(answers)]

    monkeypatch.setattr(netguard, "resolve_host", rebinding)
    transport = RecordingTransport(
        {("docs.example.test", "/a.pdf"): httpx.Response(200, content=PDF_DATA)}
    )
    use_transport(monkeypatch, transport)
    document = await fetch_document(Source(uri="https://docs.example.test/a.pdf"), make_settings())
    assert document.data == PDF_DATA
    assert asked == ["docs.example.test"]
    (request,) = transport.seen
    assert request.url.host == "93.184.215.14"
    assert request.headers["host"] == "docs.example.test"
    assert request.extensions["sni_hostname"] == "docs.example.test"


async def test_redirect_to_a_private_address_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(
        monkeypatch,
        {
            "public.example.test": ["93.184.215.14"],
            "internal.example.test": ["10.9.8.7"],
        },
    )
    transport = RecordingTransport(
        {
            ("public.example.test", "/a.pdf"): httpx.Response(
                302, headers={"Location": "http://internal.example.test/secret.pdf"}
            ),
            ("public.example.test", "/b.pdf"): httpx.Response(
                301, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
            ),
        }
    )
    use_transport(monkeypatch, transport)
    for path in ("/a.pdf", "/b.pdf"):
        error = await expect_error(
            ErrorCode.SOURCE_HOST_NOT_ALLOWED,
            Source(uri=f"http://public.example.test{path}"),
            make_settings(),
        )
        assert "resolves to" in error.message
    assert [request.url.path for request in transport.seen] == ["/a.pdf", "/b.pdf"]


async def test_pinned_address_with_a_real_server(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"docs.example.test": ["127.0.0.1"]})
    server.routes["/a.pdf"] = respond(200, PDF_DATA)
    document = await fetch_document(
        Source(uri=server.url("/a.pdf", host="docs.example.test")), private_ok()
    )
    assert document.data == PDF_DATA
    assert server.requests == [("/a.pdf", f"docs.example.test:{server.port}")]


async def test_messages_do_not_leak_credentials_or_signed_queries(
    no_connect: ConnectAttempts,
) -> None:
    error = await expect_error(
        ErrorCode.SOURCE_HOST_NOT_ALLOWED,
        Source(uri="http://user:hunter2@10.0.0.1/doc.pdf?X-Amz-Signature=topsecret"),
        make_settings(),
    )
    assert "hunter2" not in error.message and "topsecret" not in error.message
    assert "http://10.0.0.1/doc.pdf" in error.message


async def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    async def nxdomain(host: str, port: int) -> list[netguard.IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(netguard, "resolve_host", nxdomain)
    await expect_error(
        ErrorCode.SOURCE_FETCH_FAILED,
        Source(uri="https://nope.example.test/a.pdf"),
        make_settings(),
    )


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("224.0.0.251", False),
        ("233.252.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::a00:1", False),
        ("2002:a00:1::1", False),
        ("2001:db8::1", False),
        ("198.18.0.1", False),
        ("192.0.2.1", False),
    ],
)
def test_refusal_reason(address: str, public: bool) -> None:
    assert (netguard.refusal_reason(ipaddress.ip_address(address)) is None) is public


@given(st.integers(0, 2**32 - 1))
def test_ipv4_mapped_addresses_are_judged_like_their_ipv4(value: int) -> None:
    v4 = ipaddress.IPv4Address(value)
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    assert (netguard.refusal_reason(v4) is None) == (netguard.refusal_reason(mapped) is None)


_URI_TEXT = st.lists(
    st.sampled_from([*"abz09.-_~:/?#[]@!$&'()*+,;= \\\x00é", "%2e", "%2F", "%ff", "%00", ".."]),
    max_size=30,
).map("".join)


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "file", "ftp", "s3", "inline", "", "data"]),
    separator=st.sampled_from(["://", ":", ":///", "://[", "://user:pw@"]),
    rest=_URI_TEXT,
)
def test_arbitrary_uris_fail_only_with_coded_errors(scheme: str, separator: str, rest: str) -> None:
    async def everything_is_internal(host: str, port: int) -> list[netguard.IPAddress]:
        return [ipaddress.ip_address("10.0.0.1")]

    def no_socket(self: socket.socket, address: object) -> None:
        raise ConnectionRefusedError("the fuzz test never connects")

    settings = make_settings(None, file_roots=[Path("/nonexistent-ocr-root")], fetch_timeout_s=2)
    source = Source(uri=scheme + separator + rest)
    with (
        mock.patch.object(netguard, "resolve_host", everything_is_internal),
        mock.patch.object(socket.socket, "connect", no_socket),
        pytest.raises(OcrError),
    ):
        asyncio.run(fetch_document(source, settings))
