"""Where figures and page images go: the artifact store a consumer writes and the tools
read (a claim check out, as requests carry one in)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pydantic import Field, field_validator

from consumer.settings.base import SettingsPart, absolute_path
from consumer.settings.documents import RemoteStorage, is_s3_bucket_name

_S3_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._=+~-]+")


def artifact_store_uri(text: str) -> str | None:
    """OCR_ARTIFACTS_URI in its one canonical form: `s3://bucket[/prefix]` (no trailing
    slash) or `file:///absolute/folder`; '' means no store. Raises ValueError saying why."""
    text = text.strip()
    if not text:
        return None
    scheme, sep, rest = text.partition("://")
    if not sep:
        return absolute_path(Path(text)).as_uri()
    if scheme.lower() == "file":
        path = unquote(rest[len("localhost"):] if rest.startswith("localhost/") else rest)
        if not path.startswith("/"):
            raise ValueError(
                f"{text!r} names no absolute folder: use file:///folder (three slashes)"
            )
        return Path(os.path.normpath(path)).as_uri()
    if scheme.lower() == "s3":
        bucket, _, prefix = rest.partition("/")
        segments = [segment for segment in prefix.split("/") if segment]
        if not is_s3_bucket_name(bucket):
            raise ValueError(f"{text!r} names no valid S3 bucket (3-63 of a-z, 0-9, '.', '-')")
        if any(segment in (".", "..") for segment in segments):
            raise ValueError(f"{text!r}: the key prefix may not hold '.' or '..' segments")
        if not all(_S3_PREFIX_SEGMENT.fullmatch(segment) for segment in segments):
            # The URIs of figures end up in Markdown links, which spaces and brackets break.
            raise ValueError(
                f"{text!r}: the key prefix may hold only A-Z a-z 0-9 . _ - = + ~ and '/'"
            )
        return "/".join([f"s3://{bucket}", *segments])
    raise ValueError(
        f"{text!r} is not an artifact store: use s3://bucket/prefix, file:///folder or a "
        "folder path (empty: no store)"
    )


class Artifacts(SettingsPart):
    """Where the artifact store is: the consumer writes there, the tools read there."""

    part_title = "Artifacts"

    artifacts_uri: str | None = Field(
        None,
        description="Artifact store for figure crops: s3://bucket/prefix (with the OCR_S3_* "
        "endpoint and credentials), file:///folder or a folder (relative: to the working "
        "directory at start); unset: figures are not stored and the Markdown says so.",
        json_schema_extra={"short": "Figure store: s3://bkt/prefix or a folder."},
    )

    @field_validator("artifacts_uri", mode="before")
    @classmethod
    def _artifact_store(cls, value: Any) -> Any:
        if value is None or not isinstance(value, str):
            return value
        return artifact_store_uri(value)


class ArtifactOutput(SettingsPart):
    """What the consumer stores besides figures."""

    part_title = "Artifact output"

    artifact_page_images: bool = Field(
        False, description="Also store every rendered page image (PNG) in the artifact store."
    )


class ArtifactStoreSettings(Artifacts, RemoteStorage):
    """What opening the artifact store needs: where it is and how to reach it."""
