"""Dead-letter envelope on `ocr.requests.dlq`: the unusable request and why.

Its headers (`ocr_error_code`, ...) are named in schemas/headers.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import Field

from schemas.common import MAX_TASK_ID_LENGTH, ErrorCode, VersionedModel
from schemas.request import MAX_REQUEST_RECORD_BYTES

# A dead letter holds at most one request record's key and value, base64-encoded: four
# characters for every three bytes, padded.
MAX_ORIGINAL_BASE64 = 4 * ((MAX_REQUEST_RECORD_BYTES + 2) // 3)
# A whole DLQ record (its key, the envelope, its headers) stays within this: the consumer's
# producer sends at most 4 MiB (max_request_size) and the DLQ topic takes 5 MiB
# (schemas/topics.py). A record beyond it would be refused forever and stall its partition.
MAX_DLQ_RECORD_BYTES = 4 * 1024 * 1024
# Kept for all but the original key and value: the envelope's other fields (error_message is
# at most 4096 characters, 16 KiB of UTF-8), the headers, the record key, Kafka's overhead.
DLQ_RECORD_RESERVE = 64 * 1024
# The original key and value together, base64-encoded, stay within this.
MAX_ORIGINALS_BASE64 = MAX_DLQ_RECORD_BYTES - DLQ_RECORD_RESERVE
# The DLQ record's own key: the task id when there is one, else the original key cut to this
# many characters (the envelope holds it whole, or as much as fits).
MAX_DLQ_KEY_CHARS = 256


@dataclass(frozen=True, slots=True)
class Originals:
    """The refused record's key and value as a dead letter holds them, and what was cut."""

    key: bytes | None
    value: bytes
    cut: tuple[str, ...]


def fit_originals(key: bytes | None, value: bytes | None) -> Originals:
    """Each at most one request record (MAX_REQUEST_RECORD_BYTES), both together within
    MAX_ORIGINALS_BASE64 once base64-encoded. The value comes first (it is what an operator
    re-sends); the key gives way."""
    value = value or b""
    # Raw bytes whose two base64 encodings fit together (each pads up to 2 characters).
    room = 3 * ((MAX_ORIGINALS_BASE64 - 8) // 4)
    kept_value = value[: min(MAX_REQUEST_RECORD_BYTES, room)]
    kept_key = (
        None if key is None else key[: min(MAX_REQUEST_RECORD_BYTES, room - len(kept_value))]
    )
    cut = tuple(
        f"{what} cut to its first {len(kept)} of {len(raw)} bytes"
        for what, raw, kept in (("key", key, kept_key), ("value", value, kept_value))
        if raw is not None and kept is not None and len(kept) < len(raw)
    )
    return Originals(kept_key, kept_value, cut)


def dead_letter_key(task_id: str | None, key: bytes | None, partition: int, offset: int) -> str:
    """The DLQ record's key: the task id, else the original key (cut), else where it was."""
    if task_id:
        return task_id
    if key:
        return key.decode("utf-8", "replace")[:MAX_DLQ_KEY_CHARS]
    return f"{partition}:{offset}"


class DlqEnvelope(VersionedModel):
    error_code: ErrorCode = Field(description="Why the request was refused.")
    error_message: str = Field(
        max_length=4096, description="What is wrong and what to send instead."
    )
    original_topic: str = Field(max_length=249, description="Topic of the refused record.")
    original_partition: int = Field(ge=0, description="Its partition.")
    original_offset: int = Field(ge=0, description="Its offset.")
    original_timestamp: datetime | None = Field(
        default=None, description="Its Kafka timestamp, when it had one."
    )
    original_key_base64: str | None = Field(
        default=None, max_length=MAX_ORIGINAL_BASE64,
        description="Its key, base64 (standard alphabet); null for a record without key.",
    )
    original_value_base64: str = Field(
        max_length=MAX_ORIGINAL_BASE64,
        description="The request bytes exactly as received (a record is at most "
        f"{MAX_REQUEST_RECORD_BYTES} bytes; a longer one, possible only on a requests topic "
        "configured beyond that, is cut there and error_message says so).",
    )
    task_id: str | None = Field(
        default=None, max_length=MAX_TASK_ID_LENGTH,
        description="When it could be read at all (a longer string is no task id).",
    )
    consumer_id: str = Field(
        default="", max_length=128, description="The consumer that refused it."
    )
    failed_at: datetime = Field(description="When it was refused.")
