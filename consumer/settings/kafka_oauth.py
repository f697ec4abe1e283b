"""SASL/OAUTHBEARER access tokens for our Kafka clients, from an OAuth 2 token endpoint.

The client-credentials grant (RFC 6749 section 4.4) with HTTP Basic client authentication
(section 2.3.1), which is what Kafka's own `OAuthBearerLoginCallbackHandler` (KIP-768) and
librdkafka's `sasl.oauthbearer.method=oidc` ask too: Keycloak, Okta, Microsoft Entra ID,
Auth0, Confluent Cloud identity pools.

aiokafka calls `TokenProvider.token()` each time it opens a connection (bootstrap, each
broker, the group coordinator). The provider keeps the token it got and asks for a new one
once `REFRESH_FRACTION` of its lifetime has passed (Kafka's sasl.login.refresh.window.factor),
one request at a time however many connections open together.

Failures are aiokafka `KafkaError`s, so that aiokafka treats them as a connection that
failed (logged, tried again) and never as a crash of its own tasks:
- `TokenRefused`: the endpoint refused us or is not a token endpoint (a wrong client id or
  secret, an unknown scope, a wrong URL, an untrusted certificate). Retrying will not help;
  at start the consumer exits 5 with the message (consumer/settings/kafka_login.py).
- `TokenUnavailable`: the endpoint did not answer, or answered 5xx or 429. Worth retrying.
While a token we hold is still valid, a failed refresh hands it out (logged), and the
endpoint is asked again after a backoff: an identity provider's short outage costs nothing.

Does not guarantee:
- that open connections carry a fresh token: aiokafka does not re-authenticate (KIP-368). A
  broker with `connections.max.reauth.ms` closes a connection once its token expires, and
  aiokafka reconnects with the token this provider then holds.
- that the broker accepts the token: audience, issuer, scope and principal claims are the
  broker's checks (a refusal is its SaslAuthenticationFailed).
- a lifetime beyond what the endpoint says: `expires_in` (RFC 6749 section 5.1), else the
  JWT's `exp`, else `UNKNOWN_LIFETIME_S`. Our clock is trusted for the rest.
The client secret and the tokens are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
from aiokafka import errors as kafka_errors
from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import AIOKafkaConnection, OAuthAuthenticator

from consumer.log import get_logger

if TYPE_CHECKING:
    from consumer.settings.kafka import KafkaConnection

log = get_logger(__name__)

REFRESH_FRACTION = 0.8
# A token is not handed out in its last tenth of life (at most this): the broker checks it
# a network round trip later, by its own clock.
EXPIRY_MARGIN_S = 30.0
UNKNOWN_LIFETIME_S = 300.0
REQUEST_TIMEOUT_S = 10.0
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0
# Enough of an error description to act on; an HTML error page is not read whole.
_DETAIL_CHARS = 300

CLIENT_SETTINGS = "OCR_KAFKA_OAUTH_CLIENT_ID and _CLIENT_SECRET"
URL_SETTING = "OCR_KAFKA_OAUTH_TOKEN_URL"


class TokenError(kafka_errors.KafkaError):  # type: ignore[misc]
    """No access token could be had; `retriable` says whether asking again may help."""


class TokenRefused(TokenError):
    retriable = False


class TokenUnavailable(TokenError):
    retriable = True


@dataclass(frozen=True, slots=True)
class Grant:
    """A token endpoint's answer: the access token and how long it lives."""

    access_token: str
    lifetime_s: float


@dataclass(frozen=True, slots=True)
class HeldToken:
    """A token and when we got it, by the monotonic clock.

    Invariant: a token is due for refresh before it stops being usable
    (REFRESH_FRACTION < 1 - margin / lifetime for every lifetime), so a provider that
    refreshes when due never hands out an unusable token while the endpoint answers."""

    value: str
    obtained_at: float
    lifetime_s: float

    def refresh_due(self, now: float) -> bool:
        return now >= self.obtained_at + REFRESH_FRACTION * self.lifetime_s

    def usable(self, now: float) -> bool:
        return now < self.expires_at

    @property
    def expires_at(self) -> float:
        margin = min(EXPIRY_MARGIN_S, self.lifetime_s / 10)
        return self.obtained_at + self.lifetime_s - margin


def parse_token_response(
    status: int, body: bytes, now_wall: float, location: str | None = None
) -> Grant:
    """A token endpoint's HTTP answer as a Grant, or the TokenError that says why not.

    Raises nothing else, whatever the bytes."""
    if status == 200:
        document = _json_object(body)
        token = document.get("access_token") if document is not None else None
        if not isinstance(token, str) or not token.strip():
            raise TokenRefused(
                f"the answer of the token endpoint holds no access_token ({_excerpt(body)}); "
                f"is {URL_SETTING} the token endpoint?"
            )
        assert document is not None
        token_type = document.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenRefused(
                f"the token endpoint issued a {token_type!r} token; Kafka's OAUTHBEARER "
                "takes Bearer tokens only"
            )
        return Grant(token, _lifetime(document.get("expires_in"), token, now_wall))
    if status in (408, 429) or status >= 500:
        raise TokenUnavailable(f"the token endpoint answered HTTP {status}: {_excerpt(body)}")
    if 300 <= status < 400:
        raise TokenRefused(
            f"the token endpoint redirects (HTTP {status}) to {location!r}; set {URL_SETTING} "
            "to the URL it redirects to"
        )
    document = _json_object(body)
    error = document.get("error") if document is not None else None
    if isinstance(error, str):
        described = document.get("error_description") if document is not None else None
        detail = f"{error}: {described}" if isinstance(described, str) else error
        # RFC 6749 5.2: a 401 means the client failed to authenticate, whatever code comes
        # with it (Keycloak says unauthorized_client for a wrong secret).
        advice = _ERROR_ADVICE["invalid_client"] if status == 401 else _ERROR_ADVICE.get(
            error, f"check {CLIENT_SETTINGS} and its scope"
        )
        raise TokenRefused(
            f"the token endpoint refused us (HTTP {status}, {detail[:_DETAIL_CHARS]}); {advice}"
        )
    raise TokenRefused(
        f"the token endpoint answered HTTP {status} ({_excerpt(body)}); check {URL_SETTING}"
    )


# RFC 6749 section 5.2's error codes, and what a user changes for each.
_ERROR_ADVICE = {
    "invalid_client": f"check {CLIENT_SETTINGS}",
    "unauthorized_client": "allow this client the client_credentials grant at the identity "
    "provider (Keycloak: service accounts enabled)",
    "invalid_scope": "check OCR_KAFKA_OAUTH_SCOPE",
    "unsupported_grant_type": f"the endpoint does not take client_credentials; check {URL_SETTING}",
    "invalid_request": f"check {CLIENT_SETTINGS} and OCR_KAFKA_OAUTH_SCOPE",
}


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _excerpt(body: bytes) -> str:
    text = body[:_DETAIL_CHARS].decode("utf-8", "replace").strip()
    return repr(text) if text else "an empty body"


def _lifetime(expires_in: object, token: str, now_wall: float) -> float:
    """Seconds the token lives: expires_in if it is a positive number (some endpoints send
    it as a string), else the JWT's exp, else UNKNOWN_LIFETIME_S."""
    seconds: float | None = None
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        seconds = float(expires_in)
    elif isinstance(expires_in, str):
        try:
            seconds = float(expires_in)
        except ValueError:
            seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        expiry = _jwt_expiry(token)
        seconds = expiry - now_wall if expiry is not None else None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return UNKNOWN_LIFETIME_S
    return seconds


def _jwt_expiry(token: str) -> float | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    expiry = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(expiry, int | float) and not isinstance(expiry, bool):
        return float(expiry)
    return None


@dataclass(frozen=True, slots=True)
class TokenEndpoint:
    """Where and as whom tokens are asked for."""

    url: str
    client_id: str
    client_secret: str
    scope: str | None = None
    verify: ssl.SSLContext | bool = True

    def basic_authorization(self) -> str:
        # RFC 6749 section 2.3.1: id and secret are form-encoded before Basic encoding.
        pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    def form(self) -> dict[str, str]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        return form


class _ErrorChallengeAware(OAuthAuthenticator):  # type: ignore[misc]
    """aiokafka's OAUTHBEARER exchange, with the broker's refusal read as one.

    A broker that refuses a token answers with an error challenge, a JSON document
    (RFC 7628 section 3.2.2), not with an error code. aiokafka 0.14 ends the exchange
    after sending the token whatever comes back, takes the connection as logged in, and
    the broker closes it at the next request: the clients retry for ever ("Unable to
    update metadata") and nothing says the token was refused. A non-empty answer to our
    token is that refusal."""

    async def step(self, payload: bytes | None) -> tuple[bytes, bool] | None:
        if self._token_sent and payload:
            challenge = payload[:_DETAIL_CHARS].decode("utf-8", "replace")
            raise kafka_errors.SaslAuthenticationFailed(
                f"the broker refused our OAuth token: {challenge}"
            )
        answer: tuple[bytes, bool] | None = await super().step(payload)
        return answer


def _oauth_authenticator(connection: AIOKafkaConnection) -> _ErrorChallengeAware:
    return _ErrorChallengeAware(
        sasl_oauth_token_provider=connection._sasl_oauth_token_provider
    )


class TokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """aiokafka's `sasl_oauth_token_provider`: one per Kafka client, used in its loop.

    Making one also makes every aiokafka connection of the process read a refused token
    as SaslAuthenticationFailed (`_ErrorChallengeAware`)."""

    def __init__(
        self, endpoint: TokenEndpoint, extensions: Mapping[str, str] | None = None, *,
        clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
    ) -> None:
        self._endpoint = endpoint
        self._extensions = dict(extensions or {})
        self._clock = clock
        self._wall = wall
        self._held: HeldToken | None = None
        self._lock = asyncio.Lock()
        self._retry_at = -math.inf
        self._retry_delay = FIRST_RETRY_S
        AIOKafkaConnection.authenticator_oauth = _oauth_authenticator

    @classmethod
    def from_settings(cls, settings: KafkaConnection) -> TokenProvider:
        from consumer.settings.kafka import sasl_extensions

        url = settings.kafka_oauth_token_url
        client_id = settings.kafka_oauth_client_id
        secret = settings.kafka_oauth_client_secret
        # The settings refuse OAUTHBEARER without these.
        assert url is not None and client_id is not None and secret is not None
        cafile = settings.kafka_oauth_cafile
        verify: ssl.SSLContext | bool = True
        if cafile is not None:
            verify = ssl.create_default_context(cafile=str(cafile))
        extensions = settings.kafka_oauth_extensions
        return cls(
            TokenEndpoint(url, client_id, secret.get_secret_value(),
                          settings.kafka_oauth_scope, verify),
            sasl_extensions(extensions) if extensions else None,
        )  # fmt: skip

    def extensions(self) -> dict[str, str]:
        return dict(self._extensions)

    async def token(self) -> str:
        held = self._held
        if held is not None and not held.refresh_due(self._clock()):
            return held.value
        async with self._lock:
            # Another connection may have refreshed it while this one waited.
            held, now = self._held, self._clock()
            if held is not None and not held.refresh_due(now):
                return held.value
            if held is not None and held.usable(now) and now < self._retry_at:
                return held.value
            try:
                grant = await self._ask()
            except TokenError as exc:
                now = self._clock()
                self._retry_at = now + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, MAX_RETRY_S)
                if held is None or not held.usable(now):
                    raise
                log.warning(
                    "oauth_token_refresh_failed", endpoint=self._endpoint.url,
                    error=str(exc), token_valid_for_s=round(held.expires_at - now, 1),
                    retry_in_s=round(self._retry_at - now, 1),
                )
                return held.value
            self._held = HeldToken(grant.access_token, self._clock(), grant.lifetime_s)
            self._retry_delay = FIRST_RETRY_S
            log.info(
                "oauth_token_obtained", endpoint=self._endpoint.url,
                lifetime_s=round(grant.lifetime_s, 1),
            )
            return grant.access_token

    async def _ask(self) -> Grant:
        endpoint = self._endpoint
        try:
            async with httpx.AsyncClient(
                verify=endpoint.verify, timeout=REQUEST_TIMEOUT_S, follow_redirects=False
            ) as client:
                response = await client.post(
                    endpoint.url, data=endpoint.form(),
                    headers={"Authorization": endpoint.basic_authorization(),
                             "Accept": "application/json"},
                )  # fmt: skip
        except httpx.HTTPError as exc:
            raise _transport_error(exc, endpoint.url) from None
        return parse_token_response(
            response.status_code, response.content, self._wall(),
            response.headers.get("location"),
        )


def _transport_error(exc: httpx.HTTPError, url: str) -> TokenError:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TokenRefused(
                f"the token endpoint's certificate is not trusted ({cause.verify_message}); "
                "set OCR_KAFKA_OAUTH_CAFILE to the PEM bundle of its CA"
            )
        cause = cause.__cause__ or cause.__context__
    host = urlsplit(url).netloc
    return TokenUnavailable(f"the token endpoint {host} did not answer ({type(exc).__name__}: "
                            f"{exc or 'no detail'})")
