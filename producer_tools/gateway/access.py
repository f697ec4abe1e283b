"""API keys: which requests may use the gateway, and under which name they are counted.

Keys come from OCR_GATEWAY_API_KEYS (comma list) and/or OCR_GATEWAY_API_KEYS_FILE (one a
line). A key is never logged, stored or echoed: requests are counted (open-task cap,
metrics, logs) under its key id, the first 12 hex digits of its SHA-256. With no keys
configured the gateway asks for none and every request counts as `anonymous`.

Not guaranteed: keys gate the gateway, not single tasks. Any accepted key may read any
task whose id it knows (ids are derived from the document's SHA-256 and options).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from producer_tools.gateway.errors import GatewayCode, GatewayError

ANONYMOUS = "anonymous"


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def parse_keys(listed: str | None, file_text: str | None) -> frozenset[str]:
    keys = [part.strip() for part in (listed or "").split(",")]
    for line in (file_text or "").splitlines():
        keys.append(line.split("#", 1)[0].strip())
    return frozenset(key for key in keys if key)


def load_keys(listed: str | None, path: Path | None) -> frozenset[str]:
    return parse_keys(listed, path.read_text() if path is not None else None)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


class KeyRing:
    def __init__(self, keys: Iterable[str]) -> None:
        # Digests compared, so every comparison takes the same time whatever the key's length.
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: str | None) -> str:
        """The key id of an accepted request; raises 401 GatewayError otherwise."""
        if not self._digests:
            return ANONYMOUS
        if presented is None:
            raise GatewayError(
                401, GatewayCode.API_KEY_REQUIRED,
                "this gateway needs an API key: send 'Authorization: Bearer <key>' or "
                "'X-API-Key: <key>'",
            )
        digest = hashlib.sha256(presented.encode()).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise GatewayError(
                401, GatewayCode.API_KEY_INVALID,
                "the API key is not accepted here; ask the operator for a valid key",
            )
        return key_id(presented)
