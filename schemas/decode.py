"""Turn raw request bytes into an OcrRequest or a precise, coded refusal."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from schemas.common import MAX_TASK_ID_LENGTH, SCHEMA_VERSION, ErrorCode
from schemas.request import OcrRequest

# A little over the largest inline document plus envelope; bigger records are refused unread.
MAX_REQUEST_BYTES = 1024 * 1024


class RequestDecodeError(Exception):
    """A request that can never be processed; it goes to the DLQ with this code and message."""

    def __init__(self, code: ErrorCode, message: str, task_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.task_id = task_id


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:8]:
        where = ".".join(str(p) for p in error["loc"]) or "<request>"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 8
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def decode_request(raw: bytes | None, *, max_bytes: int = MAX_REQUEST_BYTES) -> OcrRequest:
    if raw is None:
        raise RequestDecodeError(ErrorCode.REQUEST_INVALID, "record has no value (tombstone)")
    if len(raw) > max_bytes:
        raise RequestDecodeError(
            ErrorCode.REQUEST_TOO_LARGE,
            f"request is {len(raw)} bytes; the limit is {max_bytes}: send large documents "
            "by URI (claim check), not inline",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestDecodeError(
            ErrorCode.REQUEST_NOT_UTF8, f"request is not UTF-8 (byte {exc.start})"
        ) from exc
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestDecodeError(
            ErrorCode.REQUEST_NOT_JSON, f"request is not JSON: {exc.msg} at char {exc.pos}"
        ) from exc
    except RecursionError as exc:
        # A few KB of '[' exhaust the parser's stack; uncaught, this crashed the consumer
        # loop on every re-delivery of the record (a poison pill for the whole group).
        raise RequestDecodeError(
            ErrorCode.REQUEST_INVALID,
            "request nests JSON arrays or objects too deeply to parse; a request is an "
            "object a few levels deep",
        ) from exc
    if not isinstance(document, dict):
        raise RequestDecodeError(
            ErrorCode.REQUEST_INVALID,
            f"request must be a JSON object, got {type(document).__name__}",
        )
    named = document.get("task_id")
    # Longer than any task id: not one to file the dead letter under.
    task_id = named if isinstance(named, str) and len(named) <= MAX_TASK_ID_LENGTH else None
    version = document.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RequestDecodeError(
            ErrorCode.REQUEST_UNSUPPORTED_VERSION,
            f"schema_version {version!r} is not supported; this consumer speaks "
            f"{SCHEMA_VERSION}",
            task_id,
        )
    try:
        return OcrRequest.model_validate_json(text)
    except ValidationError as exc:
        raise RequestDecodeError(ErrorCode.REQUEST_INVALID, _describe(exc), task_id) from exc
