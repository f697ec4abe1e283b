"""The artifact store: where figure crops and page images go, a claim check out.

A result carries the URI of each file the consumer stored (`s3://bucket/prefix/key` or
`file:///root/key`), never the file. Readers (ocr-collect, the gateway) fetch the files
through the same kind of store, configured with the same OCR_ARTIFACTS_URI.

What it guarantees:
- a write is whole or absent: folder files are written under a temporary name, fsynced
  and renamed; S3 PUTs are atomic;
- blocking I/O never runs on the event loop: every call runs in this module's own thread
  pool (a degraded store holds at most its threads, never the loop's default executor
  where pages are post-processed), under a time limit (OCR_FETCH_TIMEOUT_S);
- a reader fetches only what lies inside its store: a URI of another bucket, another
  folder, or one that leaves the root through `..` or a symlink is refused
  (ARTIFACT_URI_NOT_ALLOWED), so a forged result cannot make a reader copy other files.

What it does not: it never deletes (a re-run overwrites the same keys; stale files of
an earlier run are the operator's lifecycle rule to expire), and it does not retry beyond
the S3 client's own retries: the caller decides what a failure means.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

from consumer.documents.s3fetch import s3_client
from consumer.errors import OcrError
from consumer.log import get_logger
from consumer.settings.artifacts import ArtifactStoreSettings
from schemas.common import ErrorCode

log = get_logger(__name__)

MAX_CONCURRENT_IO: Final = 8
# Largest file a reader fetches: a page image of OCR_MAX_PAGE_PIXELS is far below it.
MAX_ARTIFACT_BYTES: Final = 256 * 1024 * 1024
PROBE_KEY: Final = ".ocr-stream-write-check"
_READ_CHUNK: Final = 1024 * 1024

_executor = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_IO, thread_name_prefix="artifacts")


class ArtifactError(OcrError):
    """A store operation that failed; `code` is one of the ARTIFACT_* codes."""


class ArtifactStoreUnreachable(ArtifactError):
    """The store did not answer (no connection, or past OCR_FETCH_TIMEOUT_S), as opposed to
    one that answered with a refusal: the consumer's start-up tells the two apart."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    uri: str
    bytes: int


class ArtifactStore(Protocol):
    @property
    def uri(self) -> str:
        """The store's root, as OCR_ARTIFACTS_URI names it (canonical form)."""
        ...

    def uri_of(self, key: str) -> str:
        """The URI a file stored under `key` gets."""
        ...

    def owns(self, uri: str) -> bool:
        """Whether `uri` names a file inside this store (a reader fetches nothing else)."""
        ...

    async def put(self, key: str, data: bytes, media_type: str) -> StoredFile: ...

    async def read(self, uri: str) -> bytes: ...

    async def check(self) -> None:
        """Write a small probe file: raises ArtifactError when the store cannot be written."""
        ...


def check_key(key: str) -> str:
    """Keys are relative paths the consumer makes (task ids hold no '/'); anything that
    could step outside the root is a bug, refused here whatever the caller."""
    segments = key.split("/")
    if not key or any(part in ("", ".", "..") for part in segments) or "\0" in key:
        raise ValueError(f"artifact key {key!r} is not a plain relative path")
    return key


async def _in_thread(settings: ArtifactStoreSettings, what: str, call: Any, *args: Any) -> Any:
    timeout = settings.fetch_timeout_s
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.get_running_loop().run_in_executor(_executor, call, *args)
    except TimeoutError:
        raise ArtifactStoreUnreachable(
            ErrorCode.ARTIFACT_STORE_FAILED,
            f"{what} took longer than {timeout:g} s (OCR_FETCH_TIMEOUT_S); check the "
            "artifact store's health",
        ) from None


# --- a folder -----------------------------------------------------------------------------


class FolderStore:
    """Files under a root folder (a local disk, or a volume every reader mounts at the
    same path)."""

    def __init__(self, root: Path, settings: ArtifactStoreSettings) -> None:
        self._root = root
        self._settings = settings

    @property
    def uri(self) -> str:
        return self._root.as_uri()

    def uri_of(self, key: str) -> str:
        return (self._root / check_key(key)).as_uri()

    def _path_of(self, uri: str) -> Path | None:
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            return None
        path = Path(os.path.normpath(unquote(parts.path)))
        return path if path.is_relative_to(self._root) and path != self._root else None

    def owns(self, uri: str) -> bool:
        return self._path_of(uri) is not None

    async def put(self, key: str, data: bytes, media_type: str) -> StoredFile:
        path = self._root / check_key(key)
        await _in_thread(self._settings, f"writing {path}", self._write, path, data)
        return StoredFile(path.as_uri(), len(data))

    def _write(self, path: Path, data: bytes) -> None:
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        except OSError as exc:
            raise ArtifactError(
                ErrorCode.ARTIFACT_STORE_FAILED,
                f"cannot write {path} ({exc.strerror or exc}); check that the folder of "
                "OCR_ARTIFACTS_URI exists, is writable and has space",
            ) from None
        finally:
            with contextlib.suppress(OSError):  # gone after the rename, or never made
                partial.unlink()

    async def read(self, uri: str) -> bytes:
        path = self._path_of(uri)
        if path is None:
            raise not_allowed(uri, self.uri)
        data: bytes = await _in_thread(self._settings, f"reading {path}", self._read, path)
        return data

    def _read(self, path: Path) -> bytes:
        # Symlinks are resolved on every read: one inside the root may point outside it.
        try:
            real = path.resolve(strict=True)
        except FileNotFoundError:
            raise ArtifactError(
                ErrorCode.ARTIFACT_NOT_FOUND,
                f"{path.as_uri()} is not in the artifact store (deleted, or written by a "
                "consumer with another OCR_ARTIFACTS_URI)",
            ) from None
        except OSError as exc:
            raise _unreadable(path, exc) from None
        if not real.is_relative_to(self._root.resolve()):
            raise not_allowed(path.as_uri(), self.uri)
        try:
            with real.open("rb") as handle:
                data = handle.read(MAX_ARTIFACT_BYTES + 1)
        except OSError as exc:
            raise _unreadable(path, exc) from None
        if len(data) > MAX_ARTIFACT_BYTES:
            raise ArtifactError(
                ErrorCode.ARTIFACT_STORE_FAILED,
                f"{path.as_uri()} is larger than {MAX_ARTIFACT_BYTES} bytes: not an artifact "
                "this consumer wrote",
            )
        return data

    async def check(self) -> None:
        await self.put(PROBE_KEY, b"ok\n", "text/plain")


def _unreadable(path: Path, exc: OSError) -> ArtifactError:
    return ArtifactError(
        ErrorCode.ARTIFACT_STORE_FAILED,
        f"cannot read {path.as_uri()} ({exc.strerror or exc}); check the permissions of the "
        "artifact folder",
    )


# --- S3 ------------------------------------------------------------------------------------

_S3_NOT_FOUND: Final = frozenset({"NoSuchKey", "NotFound", "404"})
_S3_BAD_CREDENTIALS: Final = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
     "TokenRefreshRequired"}
)  # fmt: skip


class S3Store:
    """Objects under `s3://bucket/prefix`, through the consumer's S3 endpoint, region and
    credentials (OCR_S3_*, boto3's chain): the same client as s3:// claim checks. The
    bucket need not be in OCR_S3_BUCKETS, which lists what requests may name."""

    def __init__(self, bucket: str, prefix: str, settings: ArtifactStoreSettings) -> None:
        self._bucket = bucket
        self._prefix = prefix
        self._settings = settings

    @property
    def uri(self) -> str:
        return f"s3://{self._bucket}" + (f"/{self._prefix}" if self._prefix else "")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def uri_of(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._key(key)}"

    def _object_key(self, uri: str) -> str | None:
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme != "s3":
            return None
        bucket, _, key = rest.partition("/")
        inside = key.startswith(f"{self._prefix}/") if self._prefix else bool(key)
        if bucket != self._bucket or not inside or posixpath.normpath(key) != key:
            return None
        return key

    def owns(self, uri: str) -> bool:
        return self._object_key(uri) is not None

    async def put(self, key: str, data: bytes, media_type: str) -> StoredFile:
        uri = self.uri_of(key)
        await _in_thread(
            self._settings, f"storing {uri}", self._put, self._key(key), data, media_type
        )
        return StoredFile(uri, len(data))

    def _put(self, key: str, data: bytes, media_type: str) -> None:
        try:
            s3_client(self._settings).put_object(
                Bucket=self._bucket, Key=key, Body=data, ContentType=media_type
            )
        except Exception as exc:
            raise _s3_error(exc, f"s3://{self._bucket}/{key}", "write") from None

    async def read(self, uri: str) -> bytes:
        key = self._object_key(uri)
        if key is None:
            raise not_allowed(uri, self.uri)
        data: bytes = await _in_thread(self._settings, f"reading {uri}", self._get, key)
        return data

    def _get(self, key: str) -> bytes:
        shown = f"s3://{self._bucket}/{key}"
        try:
            response = s3_client(self._settings).get_object(Bucket=self._bucket, Key=key)
            body = response["Body"]
            try:
                if int(response.get("ContentLength") or 0) > MAX_ARTIFACT_BYTES:
                    raise _too_large(shown)
                chunks: list[bytes] = []
                received = 0
                while chunk := body.read(_READ_CHUNK):
                    received += len(chunk)
                    if received > MAX_ARTIFACT_BYTES:
                        raise _too_large(shown)
                    chunks.append(chunk)
            finally:
                body.close()
        except ArtifactError:
            raise
        except Exception as exc:
            raise _s3_error(exc, shown, "read") from None
        return b"".join(chunks)

    async def check(self) -> None:
        await self.put(PROBE_KEY, b"ok\n", "text/plain")


def _too_large(shown: str) -> ArtifactError:
    return ArtifactError(
        ErrorCode.ARTIFACT_STORE_FAILED,
        f"{shown} is larger than {MAX_ARTIFACT_BYTES} bytes: not an artifact this consumer "
        "wrote",
    )


def _s3_error(exc: Exception, shown: str, verb: str) -> ArtifactError:
    """One message per kind of S3 failure, saying what to fix."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    permission = "s3:PutObject" if verb == "write" else "s3:GetObject"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if verb == "read" and (code in _S3_NOT_FOUND or status == 404):
            return ArtifactError(
                ErrorCode.ARTIFACT_NOT_FOUND,
                f"{shown} does not exist ({code or status}): deleted by a lifecycle rule, or "
                "written by a consumer with another OCR_ARTIFACTS_URI",
            )
        if code == "NoSuchBucket":
            return ArtifactError(
                ErrorCode.ARTIFACT_STORE_FAILED,
                f"the bucket of {shown} does not exist; create it or fix OCR_ARTIFACTS_URI",
            )
        if code in _S3_BAD_CREDENTIALS:
            return ArtifactError(
                ErrorCode.ARTIFACT_STORE_FAILED,
                f"S3 did not accept this process's credentials to {verb} {shown} ({code}); "
                "they are wrong, expired or for another endpoint: renew or fix them",
            )
        if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
            return ArtifactError(
                ErrorCode.ARTIFACT_STORE_FAILED,
                f"S3 refused to {verb} {shown} ({code or status}); grant {permission} on the "
                "artifact bucket",
            )
        return ArtifactError(
            ErrorCode.ARTIFACT_STORE_FAILED,
            f"S3 answered {code or status} to the {verb} of {shown}: "
            f"{error.get('Message', '')}"[:1024],
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ArtifactError(
            ErrorCode.ARTIFACT_STORE_FAILED,
            f"no usable S3 credentials to {verb} {shown}: give this process "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE) or a role",
        )
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return ArtifactStoreUnreachable(
            ErrorCode.ARTIFACT_STORE_FAILED,
            f"cannot reach S3 to {verb} {shown} ({exc}); check OCR_S3_ENDPOINT_URL and the "
            "network",
        )
    return ArtifactError(
        ErrorCode.ARTIFACT_STORE_FAILED,
        f"the {verb} of {shown} failed: {type(exc).__name__}: {exc}"[:1024],
    )


# --- choosing ------------------------------------------------------------------------------


def not_allowed(uri: str, root: str) -> ArtifactError:
    shown = uri if len(uri) <= 200 else uri[:197] + "..."
    return ArtifactError(
        ErrorCode.ARTIFACT_URI_NOT_ALLOWED,
        f"{shown} is outside the artifact store {root} (OCR_ARTIFACTS_URI); only files of "
        "that store are fetched",
    )


def open_artifact_store(settings: ArtifactStoreSettings) -> ArtifactStore | None:
    """The store OCR_ARTIFACTS_URI names (already canonical: see
    consumer.settings.artifacts.artifact_store_uri), or None when it is unset."""
    location = settings.artifacts_uri
    if location is None:
        return None
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://"):].partition("/")
        return S3Store(bucket, prefix, settings)
    return FolderStore(Path(unquote(urlsplit(location).path)), settings)
