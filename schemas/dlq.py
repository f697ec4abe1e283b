"""Dead-letter envelope on `ocr.requests.dlq`: the unusable request and why."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.common import ErrorCode, VersionedModel

# Headers set on every DLQ record, so tools can filter without parsing the value.
DLQ_HEADER_CODE = "ocr_error_code"
DLQ_HEADER_MESSAGE = "ocr_error_message"
DLQ_HEADER_TOPIC = "ocr_original_topic"
DLQ_HEADER_PARTITION = "ocr_original_partition"
DLQ_HEADER_OFFSET = "ocr_original_offset"


class DlqEnvelope(VersionedModel):
    error_code: ErrorCode
    error_message: str = Field(max_length=4096)
    original_topic: str = Field(max_length=249)
    original_partition: int = Field(ge=0)
    original_offset: int = Field(ge=0)
    original_timestamp: datetime | None = None
    original_key_base64: str | None = None
    original_value_base64: str = Field(description="The request bytes exactly as received.")
    task_id: str | None = Field(default=None, description="When it could be read at all.")
    consumer_id: str = Field(default="", max_length=128)
    failed_at: datetime
