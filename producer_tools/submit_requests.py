"""What `ocr-submit` publishes: one `OcrRequest` per input, its document handed over.

Hand-over. A request carries a claim check, not the document. A local FILE is copied
(temporary name, fsync, atomic rename) to OCR_BLOB_ROOT/<sha256[:2]>/<sha256>-<name> and
referenced as file://<absolute path> with its sha256, so the OCR consumer can verify what
it reads; the consumer must list that folder in its OCR_FILE_ROOTS (the local stack does
this for .run/blobs), and it must exist: a missing one is refused, not created. The blob
name contains the hash, so a file already handed over is not copied again. --inline sends
the bytes base64 inside the request instead, only when asked and only up to the contract's
limit (576 KiB of document). A URI (http(s)://, file://, s3://) is passed through as given.

Task ids. --task-id names the task of a single input. Otherwise the id is derived from
exactly what the OCR consumer compares to tell a duplicate from a conflict: the source
(file URI, sha256 and name, or the URI) plus pages, prompt, locate text and DPI, hashed:
`<sha256[:16] of the content>-<request hash[:16]>` for files, `uri-<request hash[:32]>`
for URIs. Submitting the same file with the same options again therefore gives the same id,
which the consumer recognises as a duplicate (it re-announces the final status instead of
recomputing; --force recomputes). Metadata and --force are not part of the id: they do not
change what is computed. The same bytes under another name give another id, because the
hand-over URI (which the consumer compares) differs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from consumer.log import get_logger
from producer_tools import UsageError, describe_validation
from schemas.common import TASK_ID_PATTERN, MetadataValue
from schemas.request import MAX_INLINE_BASE64, OcrRequest, PageRange, PromptKind, Source

log = get_logger(__name__)

PASS_THROUGH_SCHEMES = ("http", "https", "file", "s3")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Base64 turns 3 bytes into 4 characters.
MAX_INLINE_BYTES = MAX_INLINE_BASE64 // 4 * 3
# Keeps <sha256>-<name> well under the 255-byte file name limit of common file systems.
MAX_BLOB_NAME = 100
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")
CHUNK = 1024 * 1024


class SubmitError(UsageError):
    """An input or option that cannot become a request; the message says what to change."""


@dataclass(frozen=True, slots=True)
class RequestOptions:
    pages: list[PageRange] | None = None
    prompt: PromptKind = PromptKind.MARKDOWN
    locate_text: str | None = None
    dpi: int = 144
    force: bool = False
    inline: bool = False
    metadata: Mapping[str, MetadataValue] | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    label: str  # the input as the user gave it
    stem: str  # base name of --out files
    request: OcrRequest
    blob: Path | None = None  # where a local file was handed over

    @property
    def task_id(self) -> str:
        return self.request.task_id


def parse_metadata(items: Sequence[str] | None) -> dict[str, MetadataValue]:
    metadata: dict[str, MetadataValue] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SubmitError(f"--metadata {item!r} is not key=value")
        metadata[key] = value
    return metadata


def uri_scheme(text: str) -> str | None:
    """The scheme when `text` is a URI (scheme://...), else None (a local path)."""
    match = _URI.match(text)
    return match.group(1).lower() if match else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def blob_name(sha256: str, name: str) -> str:
    """`<sha256>-<name>` with the name reduced to URI- and shell-safe characters."""
    path = PurePosixPath(_UNSAFE_NAME.sub("_", name) or "document")
    suffix = path.suffix[:16]
    stem = path.name[: len(path.name) - len(path.suffix)] if path.suffix else path.name
    stem = stem[: MAX_BLOB_NAME - len(suffix)]
    return f"{sha256}-{stem}{suffix}"


def blob_path(blob_root: Path, sha256: str, name: str) -> Path:
    # Two hex characters of fan-out keep directories small on a busy hand-over folder.
    return blob_root / sha256[:2] / blob_name(sha256, name)


def check_blob_root(blob_root: Path) -> None:
    """The hand-over folder must exist already. It is the consumer's (one of its
    OCR_FILE_ROOTS, shared or mounted); creating a missing one would hand files to a folder
    no consumer reads, such as .run/blobs under whatever directory the tool started in."""
    if not blob_root.is_dir():
        raise SubmitError(
            f"the hand-over folder {blob_root} (OCR_BLOB_ROOT or --blob-root; a relative "
            "value is taken from the current directory) does not exist, and ocr-submit does "
            "not create it: it must be a folder the consumer reads (one of its "
            "OCR_FILE_ROOTS). Run ocr-submit from the repository after `make up` (the local "
            "stack's folder is .run/blobs there), or pass --blob-root with that folder"
        )


def hand_over(path: Path, blob_root: Path) -> tuple[Path, str]:
    """Copy `path` into the hand-over folder; returns (absolute blob path, sha256)."""
    digest = file_sha256(path)
    target = blob_path(blob_root, digest, path.name).resolve()
    # The name holds the content hash, and blobs only ever appear by atomic rename, so an
    # existing blob of the right size is this very file.
    if target.is_file() and target.stat().st_size == path.stat().st_size:
        return target, digest
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{digest[:16]}.{uuid.uuid4().hex[:8]}.partial")
    try:
        copied = hashlib.sha256()
        with path.open("rb") as source, partial.open("xb") as sink:
            while chunk := source.read(CHUNK):
                copied.update(chunk)
                sink.write(chunk)
            sink.flush()
            os.fsync(sink.fileno())
        if copied.hexdigest() != digest:
            raise SubmitError(
                f"{path} changed while it was being submitted; submit it again once it is "
                "completely written"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target, digest


def derive_task_id(source: Source, options: RequestOptions) -> str:
    """Deterministic id from what the OCR consumer compares for duplicates (see module doc)."""
    fingerprint = {
        "source": source.model_dump(mode="json"),
        "pages": [p.model_dump(mode="json") for p in options.pages] if options.pages else None,
        "prompt": options.prompt.value,
        "locate_text": options.locate_text,
        "dpi": options.dpi,
    }
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    if source.sha256 is not None:
        return f"{source.sha256[:16]}-{digest[:16]}"
    return f"uri-{digest[:32]}"


def output_stem(item: str) -> str:
    """File stem for --out: the input's base name without its extension."""
    uri = uri_scheme(item) is not None
    name = PurePosixPath(unquote(urlsplit(item).path)).name if uri else Path(item).name
    stem = PurePosixPath(name).stem if name else ""
    return stem or "document"


def _source_for(item: str, options: RequestOptions, blob_root: Path) -> tuple[Source, Path | None]:
    scheme = uri_scheme(item)
    if scheme is not None:
        if scheme not in PASS_THROUGH_SCHEMES:
            raise SubmitError(
                f"{item}: scheme {scheme!r} is not supported; give a local file or an "
                "http(s)://, file:// or s3:// URI"
            )
        if options.inline:
            raise SubmitError(f"{item}: --inline needs a local file, not a URI")
        return Source(uri=item), None
    path = Path(item)
    if not path.exists():
        raise SubmitError(
            f"{item}: no such file; give a local file or an http(s)://, file:// or s3:// URI"
        )
    if not path.is_file():
        raise SubmitError(f"{item}: not a regular file")
    name = path.name[:255]
    try:
        if options.inline:
            data = path.read_bytes()
            if len(data) > MAX_INLINE_BYTES:
                raise SubmitError(
                    f"{item} is {len(data)} bytes; inline documents are limited to "
                    f"{MAX_INLINE_BYTES} bytes ({MAX_INLINE_BASE64 // 1024} KiB of base64 in "
                    "the request); drop --inline to hand the file over by file:// URI"
                )
            source = Source(
                inline_base64=base64.b64encode(data).decode("ascii"),
                sha256=hashlib.sha256(data).hexdigest(),
                filename=name,
            )
            return source, None
        check_blob_root(blob_root)
        blob, digest = hand_over(path, blob_root)
    except PermissionError as exc:
        raise SubmitError(f"{item}: permission denied ({exc.filename})") from exc
    except OSError as exc:
        raise SubmitError(f"{item}: cannot hand it over to {blob_root}: {exc}") from exc
    return Source(uri=blob.as_uri(), sha256=digest, filename=name), blob


def build_submission(
    item: str,
    options: RequestOptions,
    blob_root: Path,
    *,
    task_id: str | None = None,
    now: datetime | None = None,
) -> Submission:
    """One input -> one request (handing a local file over on the way)."""
    source, blob = _source_for(item, options, blob_root)
    try:
        request = OcrRequest(
            task_id=task_id or derive_task_id(source, options),
            source=source,
            pages=options.pages,
            prompt=options.prompt,
            locate_text=options.locate_text,
            dpi=options.dpi,
            force=options.force,
            metadata=dict(options.metadata or {}),
            submitted_at=now or datetime.now(UTC),
        )
    except ValidationError as exc:
        raise SubmitError(f"{item}: the request is not valid: {describe_validation(exc)}") from exc
    return Submission(label=item, stem=output_stem(item), request=request, blob=blob)


def build_submissions(
    items: Sequence[str], options: RequestOptions, blob_root: Path, task_id: str | None = None
) -> list[Submission]:
    if task_id is not None:
        if len(items) != 1:
            raise SubmitError(
                f"--task-id names one task but {len(items)} inputs were given; submit them "
                "one at a time or let ocr-submit derive the ids"
            )
        if not re.match(TASK_ID_PATTERN, task_id):
            raise SubmitError(
                f"--task-id {task_id!r} is not a valid task id: use 1-128 of "
                "[A-Za-z0-9._:@+=-], starting with a letter or digit (no '/')"
            )
    submissions: list[Submission] = []
    seen: set[str] = set()
    now = datetime.now(UTC)
    for item in items:
        submission = build_submission(item, options, blob_root, task_id=task_id, now=now)
        if submission.task_id in seen:
            # The same document with the same options: one request does it.
            log.info("duplicate_input_skipped", input=item, task_id=submission.task_id)
            continue
        seen.add(submission.task_id)
        submissions.append(submission)
    return submissions
