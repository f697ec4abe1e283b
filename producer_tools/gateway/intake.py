"""What a submission brings: its options (form fields or JSON), its upload saved to disk.

Pure apart from `save_upload`. Options become ocr-submit's RequestOptions, so the request,
its task id and its checks are ocr-submit's.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Protocol

from pydantic import ValidationError

from producer_tools import describe_validation
from producer_tools.gateway.errors import GatewayCode, GatewayError, invalid
from producer_tools.submit_requests import RequestOptions, uri_scheme
from schemas.common import ErrorCode, MetadataValue
from schemas.request import PageRange, PromptKind, parse_page_ranges

# Only what the consumer fetches by itself. file:// is refused: an HTTP client must not
# make the consumer read files of the consumer's machine that it names.
URI_SCHEMES = ("http", "https", "s3")
CHUNK = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def parse_options(fields: Mapping[str, Any]) -> RequestOptions:
    """prompt, pages ("1-3,5"), dpi, locate_text, metadata (a JSON object) -> options."""
    prompt_text = _text(fields, "prompt") or PromptKind.MARKDOWN.value
    try:
        prompt = PromptKind(prompt_text)
    except ValueError:
        raise invalid(
            f"prompt {prompt_text[:40]!r} is not one of "
            f"{', '.join(p.value for p in PromptKind)}"
        ) from None
    locate_text = _text(fields, "locate_text")
    if prompt is PromptKind.LOCATE and not locate_text:
        raise invalid("prompt 'locate' needs locate_text (what to find on the pages)")
    return RequestOptions(
        pages=_pages(fields.get("pages")),
        prompt=prompt,
        locate_text=locate_text,
        dpi=_dpi(fields.get("dpi")),
        metadata=_metadata(fields.get("metadata")),
    )


def _text(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    return value.strip() or None


def _pages(value: Any) -> list[PageRange] | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str):
            return parse_page_ranges(value)
        if isinstance(value, list):
            return [PageRange.model_validate(item) for item in value]
    except (ValueError, ValidationError) as exc:
        detail = describe_validation(exc) if isinstance(exc, ValidationError) else str(exc)
        raise invalid(f"pages: {detail}") from None
    raise invalid('pages must be ranges like "1-3,5,9-" (or a list of {"first","last"})')


def _dpi(value: Any) -> int:
    if value is None or value == "":
        return 144
    try:
        dpi = int(value)
    except (TypeError, ValueError):
        raise invalid(f"dpi {str(value)[:20]!r} is not a whole number") from None
    if not 36 <= dpi <= 600:
        raise invalid(f"dpi {dpi} is outside 36-600")
    return dpi


def _metadata(value: Any) -> dict[str, MetadataValue] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise invalid(f"metadata is not JSON: {exc.msg}") from None
    if not isinstance(value, dict) or not all(
        isinstance(item, str | int | float | bool) or item is None for item in value.values()
    ):
        raise invalid("metadata must be a JSON object of strings, numbers, booleans or nulls")
    return value


def source_uri(body: Mapping[str, Any]) -> str:
    """The URI of a JSON submission: `source` as a string or as {"uri": ...}."""
    source = body.get("source")
    uri = source.get("uri") if isinstance(source, dict) else source
    if not isinstance(uri, str) or not uri:
        raise invalid('a JSON submission needs "source": "<uri>" (or {"uri": "<uri>"})')
    scheme = uri_scheme(uri)
    if scheme not in URI_SCHEMES:
        raise GatewayError(
            422, ErrorCode.SOURCE_SCHEME_NOT_ALLOWED,
            f"source scheme {scheme or 'none'!r} is not accepted here; give an http(s):// or "
            "s3:// URI, or upload the file as multipart 'file'",
        )
    return uri


def safe_name(filename: str | None) -> str:
    """A file name fit for the hand-over folder (ocr-submit names blobs after it)."""
    name = PurePath((filename or "").replace("\\", "/")).name
    name = _UNSAFE.sub("_", name).lstrip(".")
    return name[:120] or "upload"


class Upload(Protocol):
    filename: str | None

    async def read(self, size: int = -1) -> bytes: ...


async def save_upload(upload: Upload, limit: int, folder: Path) -> Path:
    """Write the upload to `folder` under its safe name; refuses one over `limit` bytes."""
    target = Path(tempfile.mkdtemp(prefix="upload-", dir=folder)) / safe_name(upload.filename)
    written = 0
    with target.open("wb") as sink:
        while chunk := await upload.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise too_large(limit)
            sink.write(chunk)
    if written == 0:
        raise GatewayError(422, ErrorCode.DOCUMENT_EMPTY, "the uploaded file is empty")
    return target


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, GatewayCode.UPLOAD_TOO_LARGE,
        f"the upload is larger than {limit} bytes (OCR_GATEWAY_MAX_UPLOAD_BYTES, at most the "
        "consumer's OCR_MAX_DOCUMENT_BYTES); split the document, or hand larger ones over by "
        'URI with a JSON body {"source": "s3://..."}',
    )
