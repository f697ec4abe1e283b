"""http(s) claim checks: SSRF-guarded, size-capped, deadline-bound downloads.

Every hop (the first URL and each redirect) is resolved and checked by `netguard`, then
connected to by the checked IP address itself: the URL's host is replaced by the address and
the original name travels in the Host header and TLS SNI (certificates are still verified
against the name). A second DNS lookup by the HTTP stack could otherwise return a private
address after the check passed (DNS rebinding). Bodies are read raw and decoded by
`contentcoding` in bounded steps, so the byte cap also holds for gzip/deflate bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Final

import httpx

from consumer.config import Settings
from consumer.documents import contentcoding, netguard
from consumer.errors import OcrError, document_too_large
from consumer.log import get_logger
from schemas.common import ErrorCode

log = get_logger(__name__)

MAX_REDIRECTS: Final = 5
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_NOT_FOUND_STATUSES: Final = frozenset({404, 410})
_USER_AGENT: Final = "ocr-stream/0.1 (+claim-check fetch)"
# Joining a large body copies it; beyond this size the copy runs off the loop.
_JOIN_OFF_LOOP_BYTES: Final = 4 * 1024 * 1024
_SHOWN_URL_CHARS: Final = 200


def make_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    """The transport downloads go through (tests substitute a recording one)."""
    del settings  # the same for every deployment today; kept for TLS/CA options later
    return httpx.AsyncHTTPTransport(retries=0)


def shown_url(url: httpx.URL) -> str:
    """The URL as it may appear in messages: no credentials, no (often signed) query."""
    bare = url.copy_with(username=None, password=None, query=None, fragment=None)
    text = str(bare)
    return text if len(text) <= _SHOWN_URL_CHARS else text[: _SHOWN_URL_CHARS - 3] + "..."


def _parse(uri: str) -> httpx.URL:
    try:
        url = httpx.URL(uri)
    except (httpx.InvalidURL, ValueError) as exc:
        raise OcrError(
            ErrorCode.REQUEST_INVALID, f"source uri is not a valid URL ({exc}); fix the uri"
        ) from None
    if not url.raw_host:
        raise OcrError(
            ErrorCode.REQUEST_INVALID,
            f"source uri {shown_url(url)} has no host; use http(s)://host/path",
        )
    return url


def _check_scheme(url: httpx.URL, settings: Settings, *, hop: int) -> None:
    allowed = {scheme.lower() for scheme in settings.allowed_schemes}
    if url.scheme in ("http", "https") and url.scheme in allowed:
        return
    where = "the source uri" if hop == 0 else f"redirect {hop} (to {shown_url(url)})"
    raise OcrError(
        ErrorCode.SOURCE_SCHEME_NOT_ALLOWED,
        f"{where} uses scheme {url.scheme!r}, which downloads may not use (allowed: "
        f"{', '.join(sorted(allowed & {'http', 'https'})) or 'none'}); serve the document "
        "over an allowed scheme or extend OCR_ALLOWED_SCHEMES",
    )


def _default_port(url: httpx.URL) -> int:
    if url.port is not None:
        return url.port
    return 443 if url.scheme == "https" else 80


def _pinned_request(
    client: httpx.AsyncClient, url: httpx.URL, address: netguard.IPAddress
) -> httpx.Request:
    """A GET for `url` that connects to `address` and still names the original host."""
    host_name = url.raw_host.decode("ascii")
    extensions: dict[str, str] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = host_name
    # A scoped IPv6 address (fe80::1%eth0) only gets here with private networks allowed,
    # where there is nothing to pin against; httpx cannot put a zone id in a URL.
    target = url if getattr(address, "scope_id", None) else url.copy_with(host=str(address))
    return client.build_request(
        "GET", target, headers={"Host": url.netloc.decode("ascii")}, extensions=extensions
    )


async def _send_to_first_reachable(
    client: httpx.AsyncClient, url: httpx.URL, addresses: list[netguard.IPAddress]
) -> httpx.Response:
    """Try the checked addresses in resolver order, like a browser falling back v6 -> v4."""
    failure: httpx.ConnectError | None = None
    for address in addresses:
        try:
            return await client.send(_pinned_request(client, url, address), stream=True)
        except httpx.ConnectError as exc:
            failure = exc
        except httpx.InvalidURL as exc:
            # httpx parses a redirect's Location inside send(), and a malformed one
            # (`http:127.0.0.1/x`) raises InvalidURL, which is no HTTPError: the server's
            # fault, so not INTERNAL.
            raise OcrError(
                ErrorCode.SOURCE_FETCH_FAILED,
                f"{shown_url(url)} answered with a URL that cannot be used ({exc}), such as "
                "a malformed redirect Location; fix the server or use the final URL",
            ) from None
    assert failure is not None  # addresses is never empty
    raise failure


def _status_error(response: httpx.Response, url: httpx.URL) -> OcrError:
    status = response.status_code
    shown = shown_url(url)
    if status in _NOT_FOUND_STATUSES:
        return OcrError(
            ErrorCode.SOURCE_NOT_FOUND,
            f"{shown} answered {status} (not found); check the URL or upload the document again",
        )
    if status in (401, 403):
        advice = "use a URL that needs no credentials, such as a presigned URL"
    elif status >= 500:
        advice = "the server failed; retry the request later"
    else:
        advice = "check the URL"
    return OcrError(ErrorCode.SOURCE_FETCH_FAILED, f"{shown} answered HTTP {status}; {advice}")


async def _read_capped(response: httpx.Response, url: httpx.URL, cap: int) -> bytes:
    """The decoded body, aborting as soon as it is known to exceed `cap` bytes.

    Read raw and decoded here in bounded steps (contentcoding), not with aiter_bytes():
    httpx would inflate a whole gzip chunk before we could count it.
    """
    shown = shown_url(url)
    too_large = document_too_large(shown, cap)
    decoder = contentcoding.decoder_for(
        response.headers.get_list("content-encoding", split_commas=True), shown
    )
    declared = response.headers.get("content-length", "").strip()
    # Only an unencoded length says how large the document is.
    if decoder.identity and declared.isdigit() and int(declared) > cap:
        raise too_large
    chunks: list[bytes] = []
    received = 0

    def keep(pieces: Iterator[bytes]) -> None:
        nonlocal received
        for piece in pieces:
            received += len(piece)
            if received > cap:
                raise too_large
            chunks.append(piece)

    async for raw in response.aiter_raw():
        keep(decoder.feed(raw))
    keep(decoder.finish())
    if received > _JOIN_OFF_LOOP_BYTES:
        return await asyncio.to_thread(b"".join, chunks)
    return b"".join(chunks)


async def _download(client: httpx.AsyncClient, start: httpx.URL, settings: Settings) -> bytes:
    url = start
    for hop in range(MAX_REDIRECTS + 1):
        _check_scheme(url, settings, hop=hop)
        addresses = await netguard.checked_addresses(
            url.raw_host.decode("ascii"),
            _default_port(url),
            allow_private=settings.allow_private_networks,
            shown_url=shown_url(url),
        )
        response = await _send_to_first_reachable(client, url, addresses)
        try:
            if response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise OcrError(
                        ErrorCode.SOURCE_FETCH_FAILED,
                        f"{shown_url(url)} redirects ({response.status_code}) without a "
                        "Location; fix the server or use the final URL",
                    )
                target = url.join(location)
                log.info(
                    "fetch_redirect",
                    hop=hop + 1,
                    status=response.status_code,
                    to=shown_url(target),
                )
                url = target
                continue
            if not 200 <= response.status_code < 300:
                raise _status_error(response, url)
            return await _read_capped(response, url, settings.max_document_bytes)
        finally:
            await response.aclose()
    raise OcrError(
        ErrorCode.SOURCE_FETCH_FAILED,
        f"{shown_url(start)} redirects more than {MAX_REDIRECTS} times; use the final URL",
    )


async def fetch_http(uri: str, settings: Settings) -> bytes:
    """Download an http(s) claim check within the limits of `settings`."""
    start = _parse(uri)
    deadline = settings.fetch_timeout_s
    timed_out = OcrError(
        ErrorCode.SOURCE_TIMEOUT,
        f"downloading {shown_url(start)} took longer than {deadline:g} s "
        "(OCR_FETCH_TIMEOUT_S); serve it faster, make it smaller, or raise the limit",
    )
    try:
        async with asyncio.timeout(deadline):
            async with httpx.AsyncClient(
                transport=make_transport(settings),
                # Proxies and .netrc from the environment would bypass the address check.
                trust_env=False,
                follow_redirects=False,
                timeout=httpx.Timeout(deadline),
                headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
            ) as client:
                return await _download(client, start, settings)
    except TimeoutError:
        raise timed_out from None
    except httpx.TimeoutException:
        raise timed_out from None
    # InvalidURL is no HTTPError; any other place a server's URL can raise it ends here.
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"downloading {shown_url(start)} failed: {type(exc).__name__}: {exc}; check that "
            "the server is reachable and serves the document",
        ) from None
