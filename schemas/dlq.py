"""Dead-letter envelope on `ocr.requests.dlq`: the unusable request and why.

Its headers (`ocr_error_code`, ...) are named in schemas/headers.py."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.common import MAX_TASK_ID_LENGTH, ErrorCode, VersionedModel
from schemas.request import MAX_REQUEST_RECORD_BYTES

# A dead letter holds at most one request record's key and value, base64-encoded: four
# characters for every three bytes, padded.
MAX_ORIGINAL_BASE64 = 4 * ((MAX_REQUEST_RECORD_BYTES + 2) // 3)


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
