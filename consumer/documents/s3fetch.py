"""s3:// claim checks: objects of allow-listed buckets, read with boto3 off the event loop.

A request names a bucket and a key and nothing else: the endpoint, region and credentials
are the operator's (OCR_S3_ENDPOINT_URL, OCR_S3_REGION, and boto3's own credential chain:
the AWS_* variables, shared config files, a pod's web identity, an instance role). So a
request can neither send the consumer to another host nor bring credentials of its own, and
its bucket must be one of OCR_S3_BUCKETS. The object's length is checked against
OCR_MAX_DOCUMENT_BYTES before its body is read and again while reading; the whole fetch has
OCR_FETCH_TIMEOUT_S.

The key is everything after the bucket's slash, taken literally as S3 tools do (no
percent-decoding, no query string): `s3://docs/in box/a?.pdf` is key `in box/a?.pdf`.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from consumer.config import Settings, is_s3_bucket_name
from consumer.errors import OcrError, document_too_large
from consumer.log import get_logger
from consumer.settings.documents import RemoteStorage
from schemas.common import ErrorCode

log = get_logger(__name__)

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
MAX_KEY_BYTES: Final = 1024
_SHOWN_CHARS: Final = 200
_NOT_FOUND: Final = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_DENIED: Final = frozenset({"AccessDenied", "403", "AllAccessDisabled"})
_BAD_CREDENTIALS: Final = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
     "TokenRefreshRequired"}
)  # fmt: skip

# Reads of their own threads: a degraded store then holds at most these, never the loop's
# default executor, where page post-processing runs.
MAX_CONCURRENT_READS: Final = 8
_READ_CHUNK_WHILE_TIMED: Final = 64 * 1024
_executor = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_READS, thread_name_prefix="s3-fetch")

_clients: dict[tuple[str | None, str | None, str, float], Any] = {}
_clients_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class S3Object:
    bucket: str
    key: str

    def shown(self) -> str:
        text = f"s3://{self.bucket}/{self.key}"
        return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def parse_s3_uri(uri: str) -> S3Object:
    """`s3://bucket/key` -> S3Object; REQUEST_INVALID naming what is wrong otherwise."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() != "s3":
        raise OcrError(ErrorCode.REQUEST_INVALID, "source uri is not an s3:// uri")
    bucket, _, key = rest.partition("/")
    if not is_s3_bucket_name(bucket):
        raise OcrError(
            ErrorCode.REQUEST_INVALID,
            f"s3 uri names bucket {bucket[:70]!r}, which is not a valid bucket name "
            "(3-63 of a-z, 0-9, '.', '-'); use s3://bucket/key",
        )
    if not key:
        raise OcrError(
            ErrorCode.REQUEST_INVALID,
            f"s3 uri s3://{bucket}/ names no object key; use s3://bucket/key",
        )
    # A store or proxy that normalises paths would read `docs/../other/x` from bucket
    # `other`, outside OCR_S3_BUCKETS: such keys are refused, whatever the store does.
    if any(segment in ("", ".", "..") for segment in key.split("/")) or _CONTROL.search(key):
        raise OcrError(
            ErrorCode.REQUEST_INVALID,
            f"s3 uri s3://{bucket}/... has a key with an empty, '.' or '..' path segment or a "
            "control character; name the object by its plain key",
        )
    if len(key.encode()) > MAX_KEY_BYTES:
        raise OcrError(
            ErrorCode.REQUEST_INVALID,
            f"s3 object key is longer than S3's {MAX_KEY_BYTES} bytes; fix the uri",
        )
    return S3Object(bucket, key)


def check_bucket(obj: S3Object, settings: Settings) -> None:
    if obj.bucket in settings.s3_buckets:
        return
    if not settings.s3_buckets:
        advice = "s3:// sources need OCR_S3_BUCKETS: list the buckets the consumer may read"
    else:
        advice = (
            f"it is not one of OCR_S3_BUCKETS ({', '.join(settings.s3_buckets)}); use one of "
            "those or add it"
        )
    raise OcrError(ErrorCode.SOURCE_PATH_NOT_ALLOWED, f"{obj.shown()} is refused: {advice}")


async def fetch_s3(uri: str, settings: Settings) -> bytes:
    """Read an s3:// claim check within the limits of `settings`."""
    obj = parse_s3_uri(uri)
    check_bucket(obj, settings)
    timeout = settings.fetch_timeout_s
    deadline = time.monotonic() + timeout
    try:
        # The thread also stops itself at the deadline (between chunks, and botocore's read
        # timeout): a cancelled await does not stop a thread.
        async with asyncio.timeout(timeout):
            return await asyncio.get_running_loop().run_in_executor(
                _executor, _fetch_blocking, obj, settings, deadline
            )
    except TimeoutError:
        raise _timed_out(obj, timeout) from None


def _timed_out(obj: S3Object, timeout: float) -> OcrError:
    return OcrError(
        ErrorCode.SOURCE_TIMEOUT,
        f"reading {obj.shown()} took longer than {timeout:g} s (OCR_FETCH_TIMEOUT_S); make "
        "the document smaller or raise the limit",
    )


def _client(settings: RemoteStorage) -> Any:
    """One client per endpoint configuration: clients are thread-safe and pool connections,
    and creating one costs milliseconds (the first import of boto3 far more)."""
    key = (
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_addressing_style.value,
        settings.fetch_timeout_s,
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=min(10.0, settings.fetch_timeout_s),
                # Per socket read; the whole fetch's deadline is checked between chunks.
                read_timeout=min(30.0, settings.fetch_timeout_s),
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": settings.s3_addressing_style.value},
                max_pool_connections=32,
                user_agent_extra="ocr-stream",
            )
            # A session per client: boto3's default session is not safe across threads.
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.s3_endpoint_url,
                region_name=settings.s3_region,
                config=config,
            )
            _clients[key] = client
    return client


def s3_client(settings: RemoteStorage) -> Any:
    """The shared boto3 client for these settings' endpoint (also the artifact store's)."""
    return _client(settings)


def forget_clients() -> None:
    """Drop the cached clients (their credentials were resolved when they were made)."""
    with _clients_lock:
        _clients.clear()


def _fetch_blocking(obj: S3Object, settings: Settings, deadline: float) -> bytes:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    where = settings.s3_endpoint_url or "the AWS-configured S3 endpoint"
    try:
        return _read_capped(_client(settings), obj, settings, deadline)
    except ClientError as exc:
        raise _client_error(exc, obj) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"no usable S3 credentials to read {obj.shown()}: give the consumer "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE) or a role",
        ) from None
    except ReadTimeoutError:
        raise _timed_out(obj, settings.fetch_timeout_s) from None
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        raise OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"cannot reach {where} to read {obj.shown()} ({exc}); check OCR_S3_ENDPOINT_URL "
            "and the network",
        ) from None
    except BotoCoreError as exc:
        raise OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"reading {obj.shown()} from {where} failed: {type(exc).__name__}: {exc}",
        ) from None


def _read_capped(client: Any, obj: S3Object, settings: Settings, deadline: float) -> bytes:
    cap = settings.max_document_bytes
    too_large = document_too_large(obj.shown(), cap)
    if time.monotonic() > deadline:  # the fetch waited for a thread past its time
        raise _timed_out(obj, settings.fetch_timeout_s)
    response = client.get_object(Bucket=obj.bucket, Key=obj.key)
    body = response["Body"]
    try:
        if int(response.get("ContentLength") or 0) > cap:
            raise too_large
        chunks: list[bytes] = []
        received = 0
        while chunk := body.read(_READ_CHUNK_WHILE_TIMED):
            received += len(chunk)
            if received > cap:
                raise too_large
            if time.monotonic() > deadline:
                raise _timed_out(obj, settings.fetch_timeout_s)
            chunks.append(chunk)
    finally:
        body.close()
    log.debug("fetch_s3_done", bucket=obj.bucket, bytes=received)
    return b"".join(chunks)


def _client_error(exc: Any, obj: S3Object) -> OcrError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _NOT_FOUND or status == 404:
        return OcrError(
            ErrorCode.SOURCE_NOT_FOUND,
            f"{obj.shown()} does not exist ({code or status}); check the bucket and key, or "
            "upload the document again",
        )
    if code in _BAD_CREDENTIALS:
        return OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"S3 did not accept the consumer's credentials reading {obj.shown()} ({code}); "
            "they are wrong, expired or for another endpoint: renew or fix them",
        )
    if code in _DENIED or status == 403:
        return OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"S3 refused to let the consumer read {obj.shown()} ({code or status}); grant its "
            "credentials s3:GetObject on the bucket",
        )
    advice = "retry the request later" if isinstance(status, int) and status >= 500 else ""
    return OcrError(
        ErrorCode.SOURCE_FETCH_FAILED,
        f"S3 answered {code or status} for {obj.shown()}"
        + (f"; {advice}" if advice else f": {error.get('Message', '')}"),
    )
