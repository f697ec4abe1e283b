"""Which documents may be read, from where, within which limits; how they travel; where
ocr-submit hands local files over."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from consumer.settings.base import SettingsPart, absolute_path

_S3_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def is_s3_bucket_name(name: str) -> bool:
    """S3's bucket naming rules: 3-63 of lower-case letters, digits, dots, hyphens, starting
    and ending with a letter or digit, no two dots in a row."""
    return bool(_S3_BUCKET_NAME.fullmatch(name)) and ".." not in name


class S3AddressingStyle(StrEnum):
    AUTO = "auto"  # botocore's choice: virtual-hosted where the bucket name allows it
    PATH = "path"  # endpoint/bucket/key: most S3-compatible stores (MinIO, Ceph, versitygw)
    VIRTUAL = "virtual"  # bucket.endpoint/key


class RemoteStorage(SettingsPart):
    """How documents and artifacts travel: the S3 endpoint and a transfer's deadline."""

    part_title = "Remote storage"

    fetch_timeout_s: float = Field(30.0, gt=0, description="Whole-download time limit.")
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint (unset: AWS); credentials from the AWS chain.",
        json_schema_extra={"short": "S3 endpoint (unset: AWS)."},
    )
    s3_region: str | None = Field(None, description="S3 region (unset: from the AWS config).")
    s3_addressing_style: S3AddressingStyle = Field(
        S3AddressingStyle.AUTO, description="S3 bucket addressing: auto, path or virtual."
    )

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/\s]+/?", value):
            raise ValueError(
                f"{value!r} is not an endpoint URL: use http(s)://host[:port], e.g. "
                "http://minio:9000 (unset for AWS)"
            )
        return value


class Documents(SettingsPart):
    part_title = "Documents"

    allowed_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["file", "http", "https", "s3", "inline"],
        description="URI schemes a request may use (comma list).",
    )
    file_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("/srv/ocr-blobs")],
        description="Directories file:// URIs must resolve under (comma list; relative: to "
        "the working directory at start).",
    )
    s3_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Buckets s3:// URIs may name (comma list; empty: s3:// refused).",
    )
    allow_private_networks: bool = Field(
        False, description="Allow http(s) to loopback/private/link-local addresses."
    )
    max_document_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="Largest document fetched."
    )
    max_pages: int = Field(2000, ge=1, description="Most pages in a document.")
    max_page_pixels: int = Field(
        40_000_000, ge=10_000, description="Most pixels in a rendered page or input image."
    )
    render_workers: int = Field(
        2, ge=1, description="Worker processes rendering pages (PyMuPDF holds the GIL)."
    )
    render_budget_s: float = Field(
        900.0, gt=0,
        description="Render-worker time one task may use, all its pages together; its "
        "remaining pages then fail DOCUMENT_TOO_COMPLEX.",
    )
    render_timeouts: int = Field(
        2, ge=1,
        description="Page renders of one task that may overrun OCR_PAGE_TIMEOUT_S or kill the "
        "renderer before its remaining pages fail DOCUMENT_TOO_COMPLEX.",
    )

    @field_validator("allowed_schemes", "file_roots", "s3_buckets", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("file_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        return [absolute_path(path) for path in value]

    @field_validator("s3_buckets")
    @classmethod
    def _bucket_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not is_s3_bucket_name(name)]
        if bad:
            raise ValueError(f"not S3 bucket names: {bad} (3-63 of a-z, 0-9, '.', '-')")
        return value


class HandOver(SettingsPart):
    part_title = "Hand-over"

    blob_root: Path = Field(
        Path(".run/blobs"),
        description="Existing folder ocr-submit hands files over to, under the consumer's "
        "OCR_FILE_ROOTS (relative: to the working directory).",
        json_schema_extra={"short": "Hand-over folder, in the consumer's roots."},
    )

    @field_validator("blob_root")
    @classmethod
    def _absolute_blob_root(cls, value: Path) -> Path:
        return absolute_path(value)
