"""The OCR request: a claim check on a document plus what to do with it."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field, field_validator, model_validator

from schemas.common import (
    METADATA_JSON_SCHEMA,
    ContractModel,
    JsonInt,
    MetadataValue,
    TaskId,
    VersionedModel,
    check_metadata,
    integral_number,
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
# RFC 3339 date-time as its grammar writes it (pydantic alone also takes a missing offset,
# minutes without seconds or a space for the 'T', which JSON Schema's date-time refuses).
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)


def _rfc3339_text(value: Any) -> Any:
    # The field is parsed laxly (strict mode takes no string for a datetime outside JSON
    # mode, which validators run in), so this decides what may reach the parser.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("a date-time must be an RFC 3339 string")
    if _RFC3339.fullmatch(value) is None:
        raise ValueError(
            f"{value[:40]!r} is not an RFC 3339 date-time: write 2026-11-24T10:00:00Z or "
            "2026-11-24T11:00:00+01:00 (date, 'T', time with seconds, and an offset)"
        )
    return value


Rfc3339DateTime = Annotated[
    datetime,
    BeforeValidator(_rfc3339_text),
    Field(strict=False, json_schema_extra={"pattern": RFC3339_PATTERN}),
]


class PromptKind(StrEnum):
    """What the engine is asked to do with each page (DeepSeek-OCR's official prompts)."""

    MARKDOWN = "markdown"  # document to Markdown, with layout grounding
    OCR = "ocr"  # any image, text with boxes
    FREE_OCR = "free_ocr"  # text only, no layout
    FIGURE = "figure"  # parse a figure or chart
    DESCRIBE = "describe"  # describe the image in detail
    LOCATE = "locate"  # find `locate_text` and return its boxes


# "Exactly one of": a branch holds when its member is a string, so an explicit null counts
# as absent, as it does for the model.
_EXACTLY_ONE_LOCATION = {
    "oneOf": [
        {"required": [name], "properties": {name: {"type": "string"}}}
        for name in ("uri", "inline_base64")
    ]
}


class Source(ContractModel, json_schema_extra=_EXACTLY_ONE_LOCATION):
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
    filename: str | None = Field(
        default=None, max_length=255,
        description="Original file name, for people reading the results; not used to fetch.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.uri is None) == (self.inline_base64 is None):
            raise ValueError("source needs exactly one of 'uri' or 'inline_base64'")
        return self


# Bounds before the validator: on the other side of it pydantic exports them as "ge"/"le",
# which JSON Schema does not know (a validator would ignore them).
PageNumber = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(integral_number)]


class PageRange(ContractModel):
    """Inclusive 1-based page range; `last` absent means to the end of the document."""

    first: PageNumber = Field(description="First page, 1-based.")
    # No JSON Schema keyword compares two fields, so `last >= first` is not a decoding rule
    # (the schema is all of those): a reversed range fails its task with PAGE_RANGE_EMPTY,
    # like a range past the end of the document.
    last: PageNumber | None = Field(
        default=None,
        description="Last page, inclusive; at least `first` (a range that ends before it "
        "starts fails the task with PAGE_RANGE_EMPTY). Absent or null: to the last page.",
    )

    @property
    def reversed(self) -> bool:
        return self.last is not None and self.last < self.first


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
        page_range = PageRange(first=first, last=last)
        if page_range.reversed:
            raise ValueError(f"page range {first}-{last} ends before it starts")
        ranges.append(page_range)
    return ranges


_LOCATE_NEEDS_TEXT = {
    "if": {"required": ["prompt"], "properties": {"prompt": {"const": "locate"}}},
    "then": {
        "required": ["locate_text"],
        "properties": {"locate_text": {"type": "string", "minLength": 1}},
    },
}


class OcrRequest(VersionedModel, json_schema_extra=_LOCATE_NEEDS_TEXT):
    """A request on `ocr.requests`, keyed by `task_id`: plain UTF-8 JSON (I-JSON, RFC 7493:
    no duplicate member names, no lone surrogates), at most OCR_MAX_REQUEST_BYTES (1 MiB by
    default) as a record, any Kafka compression codec."""

    task_id: TaskId
    source: Source = Field(description="The claim check: where the document is.")
    pages: Annotated[list[PageRange], Field(max_length=256)] | None = Field(
        default=None, description="Page ranges to process; all pages when absent."
    )
    prompt: PromptKind = Field(
        default=PromptKind.MARKDOWN, description="What the engine does with each page."
    )
    locate_text: str | None = Field(
        default=None, max_length=512, description="What to find; required by prompt 'locate'."
    )
    dpi: JsonInt = Field(default=144, ge=36, le=600, description="Render resolution for PDF pages.")
    force: bool = Field(
        default=False, description="Recompute even if the task already completed."
    )
    attempt: JsonInt = Field(
        default=0, ge=0, le=1_000_000, description="Raised by replays; echoed on outputs."
    )
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict,
        description="Free key/values echoed on every output event: at most 32, keys up to 64 "
        "characters, strings up to 1024, numbers within a double's range.",
        json_schema_extra=METADATA_JSON_SCHEMA,
    )
    submitted_at: Rfc3339DateTime | None = Field(
        default=None, description="When the producer sent it (RFC 3339, with an offset)."
    )

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
