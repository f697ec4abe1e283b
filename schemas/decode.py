"""Turn raw request bytes into an OcrRequest or a precise, coded refusal.

`decode_record` reads any record of the requests topic: one that names an `action` is a
control record (schemas/control.py), anything else a request. `decode_request` reads
requests only (tools that re-send requests): a control record is refused there.

The guarantee the consumer loop relies on: for ANY bytes, `decode_record` returns an
OcrRequest or a control record, or raises RequestDecodeError (and `decode_request` an
OcrRequest or RequestDecodeError). Anything else escaping would stop the consumer on
a record it can never get past, and every consumer that reads the record next (a crash
loop for the whole group). Known hostile inputs get their own message; whatever else a
parser throws is still turned into a refusal (tests/unit/test_fuzz_decode.py).

What is accepted is exactly what the exported JSON Schema accepts, read as I-JSON (RFC
7493): tests/unit/test_request_contract.py runs one corpus through both.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from schemas.common import MAX_TASK_ID_LENGTH, SCHEMA_VERSION, ErrorCode
from schemas.control import CancelRequest, ControlAction
from schemas.request import OcrRequest

# A little over the largest inline document plus envelope; bigger records are refused unread.
MAX_REQUEST_BYTES = 1024 * 1024
# No valid request holds a longer number (metadata numbers stay within a double, about
# 1.8e308); Python's int() refuses beyond 4,300 digits with a plain ValueError, and converting
# a long one costs quadratic time, so the parser stops at this many characters.
MAX_NUMBER_DIGITS = 400
# Confluent's Schema Registry serializers put a zero byte and a 4-byte schema id before the
# payload. No JSON text starts with a zero byte.
REGISTRY_MAGIC_BYTE = 0
REGISTRY_HEADER_BYTES = 5


class RequestDecodeError(Exception):
    """A request that can never be processed; it goes to the DLQ with this code and message."""

    def __init__(self, code: ErrorCode, message: str, task_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.task_id = task_id


class _Refused(Exception):
    """Raised from inside the JSON parser's hooks; becomes a RequestDecodeError."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:8]:
        where = ".".join(str(p) for p in error["loc"]) or "<request>"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 8
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _Refused(
            ErrorCode.REQUEST_INVALID,
            f"request holds a number of {len(text)} digits; no field takes one that long "
            "(metadata numbers must fit a double): send it as a string",
        )
    return int(text)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) == len(pairs):
        return document
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            # Parsers disagree on which copy wins (first, last, error): the request would
            # mean different things to different readers of the same record.
            raise _Refused(
                ErrorCode.REQUEST_NOT_JSON,
                f"request names member {name[:64]!r} twice in one object; send each once",
            )
        seen.add(name)
    return document


def _registry_framed(raw: bytes) -> RequestDecodeError:
    schema_id = int.from_bytes(raw[1:REGISTRY_HEADER_BYTES], "big")
    return RequestDecodeError(
        ErrorCode.REQUEST_SCHEMA_REGISTRY_FRAMED,
        f"request starts with a Schema Registry header (magic byte 0, schema id {schema_id}): "
        "ocr-stream reads plain UTF-8 JSON values with no framing; produce the JSON text "
        "itself (Java: StringSerializer or ByteArraySerializer instead of a Confluent "
        "Avro/JSON Schema/Protobuf serializer; confluent-kafka: produce bytes, no "
        "SerializingProducer)",
    )


def decode_record(
    raw: bytes | None, *, max_bytes: int = MAX_REQUEST_BYTES
) -> OcrRequest | CancelRequest:
    """The request or control record in `raw` (a control record names an `action`), or
    RequestDecodeError; never any other exception."""
    try:
        return _decode(raw, max_bytes)
    except RequestDecodeError:
        raise
    except _Refused as exc:
        raise RequestDecodeError(exc.code, exc.message) from exc
    except Exception as exc:
        # A parser failure nobody foresaw: still a refusal, never a crash of the loop.
        raise RequestDecodeError(
            ErrorCode.REQUEST_INVALID,
            f"request could not be read ({type(exc).__name__}: {str(exc)[:200]}); send a "
            "JSON object as the request schema describes",
        ) from exc


def decode_request(raw: bytes | None, *, max_bytes: int = MAX_REQUEST_BYTES) -> OcrRequest:
    """A request; a control record is refused (REQUEST_INVALID) like any other non-request."""
    decoded = decode_record(raw, max_bytes=max_bytes)
    if isinstance(decoded, CancelRequest):
        raise RequestDecodeError(
            ErrorCode.REQUEST_INVALID,
            f"record is a control record (action {decoded.action.value!r}), not a request",
            decoded.task_id,
        )
    return decoded


def _control_record(text: str, action: Any, task_id: str | None) -> CancelRequest:
    """A record naming an `action`: the control record of that action."""
    known = [item.value for item in ControlAction]
    if action not in known:
        shown = repr(action)[:64]
        raise RequestDecodeError(
            ErrorCode.REQUEST_INVALID,
            f"action {shown} is not one this consumer knows ({', '.join(known)}); a request "
            "names no action",
            task_id,
        )
    try:
        return CancelRequest.model_validate_json(text)
    except ValidationError as exc:
        raise RequestDecodeError(ErrorCode.REQUEST_INVALID, _describe(exc), task_id) from exc


def _decode(raw: bytes | None, max_bytes: int) -> OcrRequest | CancelRequest:
    if raw is None:
        raise RequestDecodeError(ErrorCode.REQUEST_INVALID, "record has no value (tombstone)")
    if len(raw) > max_bytes:
        raise RequestDecodeError(
            ErrorCode.REQUEST_TOO_LARGE,
            f"request is {len(raw)} bytes; the limit is {max_bytes}: send large documents "
            "by URI (claim check), not inline",
        )
    if len(raw) >= REGISTRY_HEADER_BYTES and raw[0] == REGISTRY_MAGIC_BYTE:
        raise _registry_framed(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestDecodeError(
            ErrorCode.REQUEST_NOT_UTF8, f"request is not UTF-8 (byte {exc.start})"
        ) from exc
    try:
        document: Any = json.loads(
            text, parse_int=_bounded_int, object_pairs_hook=_unique_members
        )
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
    if "action" in document:
        return _control_record(text, document["action"], task_id)
    try:
        return OcrRequest.model_validate_json(text)
    except ValidationError as exc:
        raise RequestDecodeError(ErrorCode.REQUEST_INVALID, _describe(exc), task_id) from exc
