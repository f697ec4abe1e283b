"""Types shared by every event of the v1 contract."""

from __future__ import annotations

import math
import sys
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1

# A task id is the idempotency key and part of the result key `task_id/page`, so it must not
# contain '/'; the length bound keeps keys small and Redis key names sane.
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$"
MAX_TASK_ID_LENGTH = 128
TaskId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TASK_ID_LENGTH,
        pattern=TASK_ID_PATTERN,
        description="Idempotency key of the task: 1-128 of [A-Za-z0-9._:@+=-], no '/'.",
        examples=["invoice-2026-0042"],
    ),
]

MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1024
# Numbers a reader in any language can hold: the range of a double (I-JSON, RFC 7493).
MAX_METADATA_NUMBER = sys.float_info.max
MetadataValue = str | int | float | bool | None

# The same bounds as check_metadata, for the exported JSON Schema (a standard validator
# must refuse what the decoder refuses: tests/unit/test_request_contract.py).
_METADATA_NUMBER_RANGE = {"minimum": -MAX_METADATA_NUMBER, "maximum": MAX_METADATA_NUMBER}
METADATA_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": MAX_METADATA_ENTRIES,
    "propertyNames": {"maxLength": MAX_METADATA_KEY},
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "maxLength": MAX_METADATA_VALUE},
            {"type": "number", **_METADATA_NUMBER_RANGE},
            {"type": "boolean"},
            {"type": "null"},
        ]
    },
}


def integral_number(value: Any) -> Any:
    # JSON has one number type: 144.0 and 1.44e2 are the integer 144 to JSON Schema and to
    # producers whose JSON writer prints doubles, so they are taken as such; 144.5 is not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(integral_number)]
"""An integer field as JSON Schema's `integer`: 1.0 is 1, true is not a number."""


class ErrorCode(StrEnum):
    """Machine-readable failure codes carried by DLQ headers, progress and page results."""

    # The request itself (these end on the DLQ).
    REQUEST_NOT_UTF8 = "REQUEST_NOT_UTF8"
    REQUEST_NOT_JSON = "REQUEST_NOT_JSON"
    REQUEST_INVALID = "REQUEST_INVALID"
    REQUEST_UNSUPPORTED_VERSION = "REQUEST_UNSUPPORTED_VERSION"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    REQUEST_SCHEMA_REGISTRY_FRAMED = "REQUEST_SCHEMA_REGISTRY_FRAMED"
    # The broker handed over a batch no read returns (corrupt, a codec the consumer cannot
    # read, a payload that does not decompress): the dead letter has no original value.
    REQUEST_UNREADABLE = "REQUEST_UNREADABLE"
    TASK_ID_CONFLICT = "TASK_ID_CONFLICT"
    # Fetching the claim check.
    SOURCE_SCHEME_NOT_ALLOWED = "SOURCE_SCHEME_NOT_ALLOWED"
    SOURCE_PATH_NOT_ALLOWED = "SOURCE_PATH_NOT_ALLOWED"
    SOURCE_HOST_NOT_ALLOWED = "SOURCE_HOST_NOT_ALLOWED"
    SOURCE_NOT_FOUND = "SOURCE_NOT_FOUND"
    SOURCE_TOO_LARGE = "SOURCE_TOO_LARGE"
    SOURCE_TIMEOUT = "SOURCE_TIMEOUT"
    SOURCE_FETCH_FAILED = "SOURCE_FETCH_FAILED"
    SOURCE_HASH_MISMATCH = "SOURCE_HASH_MISMATCH"
    # The document.
    DOCUMENT_EMPTY = "DOCUMENT_EMPTY"
    DOCUMENT_CORRUPT = "DOCUMENT_CORRUPT"
    DOCUMENT_ENCRYPTED = "DOCUMENT_ENCRYPTED"
    DOCUMENT_UNSUPPORTED_TYPE = "DOCUMENT_UNSUPPORTED_TYPE"
    DOCUMENT_TOO_MANY_PAGES = "DOCUMENT_TOO_MANY_PAGES"
    PAGE_RANGE_EMPTY = "PAGE_RANGE_EMPTY"
    PAGE_TOO_MANY_PIXELS = "PAGE_TOO_MANY_PIXELS"
    DOCUMENT_TOO_COMPLEX = "DOCUMENT_TOO_COMPLEX"  # rendering it costs more than allowed
    # Pages and the engine.
    PAGE_RENDER_FAILED = "PAGE_RENDER_FAILED"
    PAGE_TIMEOUT = "PAGE_TIMEOUT"
    # The page's result would not fit a record of the results topic (or the broker refused
    # it as too large): the page fails, the rest of the document goes on.
    PAGE_OUTPUT_TOO_LARGE = "PAGE_OUTPUT_TOO_LARGE"
    ENGINE_ERROR = "ENGINE_ERROR"
    PROMPT_UNSUPPORTED = "PROMPT_UNSUPPORTED"
    RESOLUTION_MODE_UNSUPPORTED = "RESOLUTION_MODE_UNSUPPORTED"
    TASK_TIMEOUT = "TASK_TIMEOUT"
    TASK_CANCELLED = "TASK_CANCELLED"  # a cancel request ended it; the message is its reason
    PAGES_FAILED = "PAGES_FAILED"
    # The artifact store (figure crops, page images).
    ARTIFACT_STORE_FAILED = "ARTIFACT_STORE_FAILED"
    ARTIFACT_NOT_FOUND = "ARTIFACT_NOT_FOUND"
    ARTIFACT_URI_NOT_ALLOWED = "ARTIFACT_URI_NOT_ALLOWED"
    INTERNAL = "INTERNAL"


class ContractModel(BaseModel):
    """Base of every event: unknown fields are refused, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_enum_values=False)


class VersionedModel(ContractModel):
    """An event that names its schema version first, so unknown versions fail precisely."""

    schema_version: JsonInt = Field(
        default=SCHEMA_VERSION,
        description="Contract version; this release speaks only 1.",
        json_schema_extra={"const": SCHEMA_VERSION},
    )

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported schema_version {value}: this release understands only "
                f"{SCHEMA_VERSION}; upgrade the consumer or publish a v{SCHEMA_VERSION} event"
            )
        return value


class ErrorInfo(ContractModel):
    """A failure a user can act on: a stable code and a human message."""

    code: ErrorCode = Field(description="Stable machine-readable code (see ErrorCode).")
    message: str = Field(
        max_length=2048, description="What went wrong and what to change, for a person."
    )


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Bound free metadata: it is echoed on every output event, so it must stay small."""
    if len(value) > MAX_METADATA_ENTRIES:
        raise ValueError(f"metadata has {len(value)} entries; at most {MAX_METADATA_ENTRIES}")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(f"metadata key {key[:20]!r}... is longer than {MAX_METADATA_KEY}")
        if isinstance(item, str) and len(item) > MAX_METADATA_VALUE:
            raise ValueError(
                f"metadata value of {key!r} has {len(item)} characters; at most "
                f"{MAX_METADATA_VALUE}"
            )
        if isinstance(item, float) and not math.isfinite(item):
            # NaN, Infinity and 1e400 parse (Python's json accepts them) but are written
            # back as null: the echoed metadata would silently differ from what was sent.
            raise ValueError(
                f"metadata value of {key!r} holds NaN, Infinity or a number too large for a "
                "double; send it as a string"
            )
        if isinstance(item, int) and not isinstance(item, bool) and (
            abs(item) > MAX_METADATA_NUMBER
        ):
            # Exact in Python, but no double holds it: a Java or JavaScript reader of the
            # echoed metadata would fail or read infinity.
            raise ValueError(
                f"metadata value of {key!r} is an integer too large for a double; send it "
                "as a string"
            )
    return value

