"""Plain HTTP GETs against the consumer's health server, as Prometheus and the kubelet do."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:  # 503 from a probe is an answer, not a failure
        return int(error.code), bytes(error.read())


async def http_get(url: str) -> tuple[int, bytes]:
    """Status and body; off the event loop, which serves the request."""
    return await asyncio.to_thread(_get, url)
