"""Content-Encoding of http(s) downloads, decoded in bounded steps.

We ask for `identity`, but servers and object stores often send gzip anyway (a file stored
pre-compressed, a CDN's policy). httpx's own decoders inflate a whole network chunk in one
call: 64 KiB of gzip can become about 66 MB before the caller counts a byte (a decompression
bomb). Here every zlib call has `max_length`, so the caller's byte cap
(OCR_MAX_DOCUMENT_BYTES) bounds the decoded bytes we ever hold, to within one step.

gzip and deflate are decoded, since a demanding user expects a document a server chose to
compress to work. Other codings (br, zstd, compress, several stacked) are refused with a
coded message: we never asked for them, and the Python decoders for br and zstd available
to us offer no bound on one call's output.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Final, Protocol

from consumer.errors import OcrError
from schemas.common import ErrorCode

# Largest piece of decoded output produced by one decompression call.
DECODE_STEP: Final = 64 * 1024
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_GZIP_MAGIC: Final = b"\x1f\x8b"
_GZIP_NAMES: Final = frozenset({"gzip", "x-gzip"})
_IDENTITY: Final = "identity"
_SERVE_PLAIN = "serve it without Content-Encoding (identity), or gzip"


class BodyDecoder(Protocol):
    """Turns raw body chunks into decoded pieces of at most DECODE_STEP bytes each, lazily:
    a caller that stops iterating stops the decoding."""

    @property
    def identity(self) -> bool: ...

    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...


class _Identity:
    identity = True

    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def finish(self) -> Iterator[bytes]:
        return iter(())


def _has_zlib_header(head: bytes) -> bool:
    """RFC 1950: method 8, window <= 32 KiB, header checksum a multiple of 31."""
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and int.from_bytes(head[:2]) % 31 == 0


class _Zlib:
    """gzip (members back to back allowed, RFC 1952) or deflate (zlib-wrapped as RFC 9110
    says, or raw, as some servers send it)."""

    identity = False

    def __init__(self, coding: str, shown: str) -> None:
        self._coding = coding
        self._shown = shown
        self._gzip = coding in _GZIP_NAMES
        # deflate: which flavour is known once two bytes are in.
        self._inflater = zlib.decompressobj(_GZIP_WBITS) if self._gzip else None
        self._head = b""
        self._fed = False

    def _broken(self, why: str) -> OcrError:
        return OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"{self._shown} was sent with Content-Encoding {self._coding}, but {why}; "
            f"{_SERVE_PLAIN} correctly, then send the request again",
        )

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self._fed = True
        if self._inflater is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            wbits = zlib.MAX_WBITS if _has_zlib_header(data) else -zlib.MAX_WBITS
            self._inflater = zlib.decompressobj(wbits)
        yield from self._inflate(self._inflater, data)

    def _inflate(self, inflater: zlib._Decompress, data: bytes) -> Iterator[bytes]:
        pending = data
        while True:
            if inflater.eof:
                pending = inflater.unused_data + pending
                # Only gzip may continue with another member; anything else after the end
                # (padding, junk) is ignored, as browsers and httpx do.
                if not (self._gzip and pending.startswith(_GZIP_MAGIC)):
                    return
                inflater = self._inflater = zlib.decompressobj(_GZIP_WBITS)
            try:
                out = inflater.decompress(pending, DECODE_STEP)
            except zlib.error as exc:
                raise self._broken(f"the compressed data is corrupt ({exc})") from None
            pending = inflater.unconsumed_tail
            if out:
                yield out
            # A full step may leave output inside zlib even with no input left: go round
            # again with nothing, so it comes out in bounded steps too.
            if not pending and len(out) < DECODE_STEP and not inflater.eof:
                return

    def finish(self) -> Iterator[bytes]:
        if not self._fed:
            return  # an empty body, whatever its header says: the document check says so
        if self._inflater is None or not self._inflater.eof:
            # A cut-short stream would still decode to the start of the document, and a
            # PDF repaired from its start silently loses pages.
            raise self._broken("the compressed data ends before its end marker")
        yield from ()


def decoder_for(content_encodings: list[str], shown: str) -> BodyDecoder:
    """The decoder for a response's Content-Encoding values (comma lists already split)."""
    codings = [
        value.strip().lower() for value in content_encodings
        if value.strip() and value.strip().lower() != _IDENTITY
    ]
    if not codings:
        return _Identity()
    if len(codings) == 1 and (codings[0] in _GZIP_NAMES or codings[0] == "deflate"):
        return _Zlib(codings[0], shown)
    raise OcrError(
        ErrorCode.SOURCE_FETCH_FAILED,
        f"{shown} was sent with Content-Encoding {', '.join(codings)} although we asked for "
        f"identity; only gzip or deflate can be decoded within OCR_MAX_DOCUMENT_BYTES: "
        f"{_SERVE_PLAIN}",
    )
