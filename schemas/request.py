"""The OCR request: a claim check on a document plus what to do with it."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator

from schemas.common import (
    ContractModel,
    MetadataValue,
    TaskId,
    VersionedModel,
    check_metadata,
)

# Inline documents ride inside the Kafka record; the broker's default max message is 1 MB,
# so the base64 text stays under 768 KiB (576 KiB of document).
MAX_INLINE_BASE64 = 768 * 1024
# The largest record the requests topic takes (its max.message.bytes as ocr-topics creates
# it): above the consumer's 1 MiB default OCR_MAX_REQUEST_BYTES, so an oversized request
# still reaches the consumer and is dead-lettered instead of being refused by the broker.
MAX_REQUEST_RECORD_BYTES = 2 * 1024 * 1024
MAX_URI_LENGTH = 2048
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class PromptKind(StrEnum):
    """What the engine is asked to do with each page (DeepSeek-OCR's official prompts)."""

    MARKDOWN = "markdown"  # document to Markdown, with layout grounding
    OCR = "ocr"  # any image, text with boxes
    FREE_OCR = "free_ocr"  # text only, no layout
    FIGURE = "figure"  # parse a figure or chart
    DESCRIBE = "describe"  # describe the image in detail
    LOCATE = "locate"  # find `locate_text` and return its boxes


class Source(ContractModel):
    """Where the document is: exactly one of `uri` or `inline_base64`."""

    uri: str | None = Field(
        default=None,
        max_length=MAX_URI_LENGTH,
        description="file:// under an allowed root, http(s)://, or s3:// where enabled.",
        examples=["file:///srv/ocr-blobs/invoice.pdf"],
    )
    inline_base64: str | None = Field(
        default=None,
        max_length=MAX_INLINE_BASE64,
        description="The document itself, base64 (standard alphabet), for small files.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="Lower-case hex SHA-256 of the document bytes; checked when given.",
    )
    media_type: str | None = Field(
        default=None,
        max_length=128,
        description="Declared media type (application/pdf, image/png, ...); sniffed if absent.",
    )
    filename: str | None = Field(default=None, max_length=255)

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.uri is None) == (self.inline_base64 is None):
            raise ValueError("source needs exactly one of 'uri' or 'inline_base64'")
        return self


class PageRange(ContractModel):
    """Inclusive 1-based page range; `last` absent means to the end of the document."""

    first: int = Field(ge=1, le=1_000_000)
    last: int | None = Field(default=None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.last is not None and self.last < self.first:
            raise ValueError(f"page range {self.first}-{self.last} ends before it starts")
        return self


_RANGE_ITEM = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?$")


def parse_page_ranges(text: str) -> list[PageRange]:
    """Parse "1-3,5,9-" into ranges; raises ValueError with the offending item."""
    ranges: list[PageRange] = []
    for item in text.split(","):
        match = _RANGE_ITEM.match(item)
        if match is None:
            raise ValueError(f"bad page range item {item!r}: use N, N-M or N-")
        first = int(match.group(1))
        if match.group(2) is None:
            last: int | None = first
        else:
            last = int(match.group(3)) if match.group(3) else None
        ranges.append(PageRange(first=first, last=last))
    return ranges


class OcrRequest(VersionedModel):
    """A request on `ocr.requests`, keyed by `task_id`."""

    task_id: TaskId
    source: Source
    pages: Annotated[list[PageRange], Field(max_length=256)] | None = Field(
        default=None, description="Page ranges to process; all pages when absent."
    )
    prompt: PromptKind = PromptKind.MARKDOWN
    locate_text: str | None = Field(
        default=None, max_length=512, description="What to find; required by prompt 'locate'."
    )
    dpi: int = Field(default=144, ge=36, le=600, description="Render resolution for PDF pages.")
    force: bool = Field(
        default=False, description="Recompute even if the task already completed."
    )
    attempt: int = Field(
        default=0, ge=0, le=1_000_000, description="Raised by replays; echoed on outputs."
    )
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="Free key/values echoed on every output event."
    )
    submitted_at: datetime | None = None

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)

    @model_validator(mode="after")
    def _locate_needs_text(self) -> Self:
        if self.prompt is PromptKind.LOCATE and not self.locate_text:
            raise ValueError("prompt 'locate' needs 'locate_text'")
        return self

    def content_fingerprint(self) -> str:
        """What makes two requests with one task id 'the same task' (attempt/force excluded)."""
        import hashlib

        payload = self.model_dump_json(
            include={"task_id", "source", "pages", "prompt", "locate_text", "dpi"}
        )
        return hashlib.sha256(payload.encode()).hexdigest()
