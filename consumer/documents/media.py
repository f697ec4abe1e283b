"""Media types we accept, recognised from the document's own bytes.

Declared types are hints from upstream and are often wrong (a PDF sent as
application/octet-stream, a PNG named .jpg), so the bytes decide what a document is.
"""

from __future__ import annotations

from typing import Final

from consumer.errors import OcrError
from schemas.common import ErrorCode

PDF: Final = "application/pdf"
PNG: Final = "image/png"
JPEG: Final = "image/jpeg"
TIFF: Final = "image/tiff"
WEBP: Final = "image/webp"

SUPPORTED_MEDIA_TYPES: Final = frozenset({PDF, PNG, JPEG, TIFF, WEBP})
IMAGE_MEDIA_TYPES: Final = frozenset({PNG, JPEG, TIFF, WEBP})

# Spellings seen in the wild for the types above.
_ALIASES: Final = {
    "image/jpg": JPEG,
    "image/pjpeg": JPEG,
    "image/tif": TIFF,
    "image/x-tiff": TIFF,
    "image/x-png": PNG,
    "application/x-pdf": PDF,
}
# Declarations that say "bytes of some kind": nothing to refuse, the sniffer decides.
_GENERIC: Final = frozenset({"application/octet-stream", "binary/octet-stream"})

# MuPDF, like most readers, accepts a PDF header preceded by junk (mail or HTTP residue);
# the spec's implementation notes allow it within the first 1024 bytes.
_PDF_HEADER_WINDOW: Final = 1024


def sniff_media_type(data: bytes) -> str | None:
    """The supported media type the magic bytes announce, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF and BigTIFF
        return TIFF
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    if b"%PDF-" in data[:_PDF_HEADER_WINDOW]:
        return PDF
    return None


def normalize_declared(declared: str | None) -> str | None:
    """The declared type in canonical form; None when absent or merely generic.

    Raises DOCUMENT_UNSUPPORTED_TYPE for a declared type we cannot process, before any
    bytes are fetched: the sender told us it is something we do not handle.
    """
    if declared is None:
        return None
    essence = declared.split(";", 1)[0].strip().lower()
    if not essence or essence in _GENERIC:
        return None
    essence = _ALIASES.get(essence, essence)
    if essence not in SUPPORTED_MEDIA_TYPES:
        raise OcrError(
            ErrorCode.DOCUMENT_UNSUPPORTED_TYPE,
            f"declared media type {declared[:64]!r} is not supported; send a PDF, PNG, JPEG, "
            "TIFF or WebP document (or leave media_type out to let the consumer sniff it)",
        )
    return essence


def require_supported(data: bytes, declared: str | None) -> str:
    """The sniffed media type of `data`; refuses bytes that are no supported format."""
    sniffed = sniff_media_type(data)
    if sniffed is None:
        hint = f" although it was declared {declared}" if declared else ""
        raise OcrError(
            ErrorCode.DOCUMENT_UNSUPPORTED_TYPE,
            f"the document is not a PDF, PNG, JPEG, TIFF or WebP file{hint} (first bytes "
            f"{data[:8].hex(' ')}); convert it to one of those formats",
        )
    return sniffed
