"""Claim-check fetch: turn a request's Source into checked document bytes.

Everything about a Source is untrusted: the scheme must be allowed, file paths must stay
under the configured roots after symlinks are followed, http(s) hosts must be public (see
`netguard`), s3:// buckets must be listed (`s3fetch`), sizes and time are capped, and the
bytes themselves decide the media type.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from consumer.config import Settings
from consumer.documents import httpfetch, s3fetch
from consumer.documents.media import normalize_declared, require_supported
from consumer.errors import OcrError, document_too_large
from consumer.log import get_logger
from schemas.common import ErrorCode
from schemas.request import Source

log = get_logger(__name__)

INLINE: Final = "inline"
# Hashing runs on the loop below this size (well under a millisecond); above, in a thread.
_HASH_ON_LOOP_BYTES: Final = 256 * 1024
_NAME_CHARS: Final = re.compile(r"[^\w.\-]+")
_MAX_NAME: Final = 128
_READ_CHUNK: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FetchedDocument:
    data: bytes
    media_type: str  # sniffed from magic bytes
    sha256: str
    name: str  # file name or URI tail, safe to use in output names


async def fetch_document(source: Source, settings: Settings) -> FetchedDocument:
    """Fetch and check a claim check; every failure is an OcrError with a code."""
    declared = normalize_declared(source.media_type)
    data = await _fetch_bytes(source, settings)
    if not data:
        raise OcrError(
            ErrorCode.DOCUMENT_EMPTY,
            f"the document {_describe(source)} is empty (0 bytes); check that the upload "
            "finished before the request was published",
        )
    digest = await _sha256(data)
    if source.sha256 is not None and digest != source.sha256:
        raise OcrError(
            ErrorCode.SOURCE_HASH_MISMATCH,
            f"the document {_describe(source)} has sha256 {digest} but the request says "
            f"{source.sha256}; the document changed or was corrupted after the request was "
            "made: publish the request again with the current hash",
        )
    media_type = require_supported(data, declared)
    if declared is not None and declared != media_type:
        log.warning("media_type_mismatch", declared=declared, sniffed=media_type)
    return FetchedDocument(
        data=data, media_type=media_type, sha256=digest, name=document_name(source)
    )


def document_name(source: Source) -> str:
    """A file name for outputs: the declared filename, else the URI's last path segment."""
    candidate = source.filename or ""
    if not candidate and source.uri is not None:
        candidate = unquote(urlsplit(source.uri).path)
    candidate = candidate.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _NAME_CHARS.sub("_", candidate).strip("._")[:_MAX_NAME]
    return cleaned or "document"


def _describe(source: Source) -> str:
    return "(inline)" if source.uri is None else _shown_uri(source.uri)


def _shown_uri(uri: str) -> str:
    # Credentials and signed query strings must not leak into events.
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "(an unparseable uri)"
    shown = f"{parts.scheme}://{host}{parts.path}"
    return shown if len(shown) <= 200 else shown[:197] + "..."


async def _sha256(data: bytes) -> str:
    if len(data) <= _HASH_ON_LOOP_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


async def _fetch_bytes(source: Source, settings: Settings) -> bytes:
    allowed = {scheme.lower() for scheme in settings.allowed_schemes}
    if source.inline_base64 is not None:
        if INLINE not in allowed:
            raise OcrError(
                ErrorCode.SOURCE_SCHEME_NOT_ALLOWED,
                "inline documents are disabled (OCR_ALLOWED_SCHEMES has no 'inline'); send "
                "a file:// or http(s):// uri instead",
            )
        return _decode_inline(source.inline_base64, settings.max_document_bytes)
    assert source.uri is not None  # Source guarantees exactly one of the two
    try:
        scheme = urlsplit(source.uri).scheme.lower()
    except ValueError as exc:
        raise OcrError(
            ErrorCode.REQUEST_INVALID, f"source uri is not a valid URI ({exc}); fix the uri"
        ) from None
    if not scheme or scheme == INLINE or scheme not in allowed:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise OcrError(
            ErrorCode.SOURCE_SCHEME_NOT_ALLOWED,
            f"source uri has {shown}, which is not allowed (allowed: "
            f"{', '.join(sorted(allowed - {INLINE})) or 'none'}); use an allowed scheme or "
            "extend OCR_ALLOWED_SCHEMES",
        )
    if scheme in ("http", "https"):
        return await httpfetch.fetch_http(source.uri, settings)
    if scheme == "file":
        return await _fetch_file(source.uri, settings)
    if scheme == "s3":
        return await s3fetch.fetch_s3(source.uri, settings)
    raise OcrError(
        ErrorCode.SOURCE_SCHEME_NOT_ALLOWED,
        f"scheme {scheme!r} is listed in OCR_ALLOWED_SCHEMES but this release has no fetcher "
        "for it; stage the document under a file root or at an http(s) URL",
    )


def _decode_inline(text: str, cap: int) -> bytes:
    # Refuse by length before decoding so an oversized payload is never materialised.
    if len(text) // 4 * 3 > cap + 2:
        raise OcrError(
            ErrorCode.SOURCE_TOO_LARGE,
            f"the inline document decodes to more than OCR_MAX_DOCUMENT_BYTES={cap} bytes; "
            "send it by uri or raise the limit",
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OcrError(
            ErrorCode.REQUEST_INVALID,
            f"inline_base64 is not valid base64 ({exc}); encode the document with standard "
            "base64 (A-Z a-z 0-9 + /, '=' padding, no line breaks or spaces)",
        ) from None
    if len(data) > cap:
        raise OcrError(
            ErrorCode.SOURCE_TOO_LARGE,
            f"the inline document is {len(data)} bytes, above OCR_MAX_DOCUMENT_BYTES={cap}; "
            "send it by uri or raise the limit",
        )
    return data


async def _fetch_file(uri: str, settings: Settings) -> bytes:
    parts = urlsplit(uri)
    shown = _shown_uri(uri)
    if parts.netloc not in ("", "localhost"):
        raise OcrError(
            ErrorCode.SOURCE_PATH_NOT_ALLOWED,
            f"{shown} names host {parts.netloc!r}; file:// uris name a local path "
            "(file:///path); fetch remote documents over http(s)",
        )
    if parts.query or parts.fragment:
        raise OcrError(
            ErrorCode.SOURCE_PATH_NOT_ALLOWED,
            f"{shown} has a query or fragment; percent-encode '?' and '#' in file names (%3F, %23)",
        )
    try:
        path = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise OcrError(
            ErrorCode.SOURCE_PATH_NOT_ALLOWED,
            f"{shown} percent-encodes bytes that are not UTF-8; name files in UTF-8",
        ) from None
    if not path.startswith("/") or "\x00" in path:
        raise OcrError(
            ErrorCode.SOURCE_PATH_NOT_ALLOWED,
            f"{shown} is not an absolute path; write file:///absolute/path",
        )
    try:
        async with asyncio.timeout(settings.fetch_timeout_s):
            return await asyncio.to_thread(
                _read_under_roots, path, settings.file_roots, settings.max_document_bytes, shown
            )
    except TimeoutError:
        raise OcrError(
            ErrorCode.SOURCE_TIMEOUT,
            f"reading {shown} took longer than {settings.fetch_timeout_s:g} s "
            "(OCR_FETCH_TIMEOUT_S); check the storage behind the file root",
        ) from None


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _read_under_roots(path: str, file_roots: list[Path], cap: int, shown: str) -> bytes:
    """Blocking: resolve, check containment, open without following, re-check, read."""
    roots = [Path(os.path.realpath(root)) for root in file_roots]
    real = Path(os.path.realpath(path))
    outside = OcrError(
        ErrorCode.SOURCE_PATH_NOT_ALLOWED,
        f"{shown} is outside the allowed roots ({', '.join(str(r) for r in file_roots)}) "
        "after following symlinks; put the document under a root or add one with "
        "OCR_FILE_ROOTS",
    )
    if not _under(real, roots):
        raise outside
    try:
        # O_NOFOLLOW: the checked path has no symlinks left, so one appearing now is a swap.
        # O_NONBLOCK: opening a FIFO planted under a root must not hang the thread.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OcrError(
            ErrorCode.SOURCE_NOT_FOUND,
            f"{shown} does not exist; check the path and that the upload finished",
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise outside from None
        raise OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"cannot open {shown}: {exc.strerror}; make it readable by the consumer",
        ) from None
    try:
        return _read_open_file(fd, roots, cap, shown, outside)
    finally:
        os.close(fd)


def _read_open_file(fd: int, roots: list[Path], cap: int, shown: str, outside: OcrError) -> bytes:
    # A directory on the way may have been swapped for a symlink between the check and the
    # open; the kernel's view of the opened file settles where it really is.
    proc_link = f"/proc/self/fd/{fd}"
    if os.path.exists(proc_link) and not _under(Path(os.readlink(proc_link)), roots):
        raise outside
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"{shown} is not a regular file; point the uri at a document file",
        )
    too_large = document_too_large(shown, cap)
    if info.st_size > cap:
        raise too_large
    chunks: list[bytes] = []
    received = 0
    while received <= cap:  # the file may grow after fstat: read one byte past the cap
        chunk = os.read(fd, min(_READ_CHUNK, cap + 1 - received))
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    if received > cap:
        raise too_large
    return b"".join(chunks)
