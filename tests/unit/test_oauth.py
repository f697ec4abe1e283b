"""OAUTHBEARER tokens (consumer/settings/kafka_oauth.py): the token endpoint's answers read
as RFC 6749 says, the refresh rule's invariant, and the provider against a token endpoint
on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import SaslAuthenticationFailed
from hypothesis import given
from hypothesis import strategies as st

from consumer.settings import kafka_oauth as oauth
from consumer.settings.kafka_oauth import (
    Grant,
    HeldToken,
    TokenEndpoint,
    TokenProvider,
    TokenRefused,
    TokenUnavailable,
    parse_token_response,
)
from tests.support.tls import TlsFiles

NOW = 1_800_000_000.0


def jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


def answer(status: int, document: object) -> Grant:
    return parse_token_response(status, json.dumps(document).encode(), NOW)


# -- the endpoint's answers ------------------------------------------------------------------


def test_a_grant_lives_expires_in_seconds_given_as_number_or_string() -> None:
    assert answer(200, {"access_token": "t", "token_type": "Bearer", "expires_in": 300}) == Grant(
        "t", 300.0
    )
    # Entra ID's v1 endpoint sends it as a string; token_type in any case (RFC 6749 5.1).
    assert answer(200, {"access_token": "t", "token_type": "bearer", "expires_in": "3599"}) == (
        Grant("t", 3599.0)
    )


def test_without_expires_in_the_jwt_exp_decides_then_a_default() -> None:
    token = jwt({"exp": NOW + 120, "sub": "ocr"})
    assert answer(200, {"access_token": token, "token_type": "Bearer"}).lifetime_s == 120.0
    assert answer(200, {"access_token": "opaque"}).lifetime_s == oauth.UNKNOWN_LIFETIME_S
    expired = jwt({"exp": NOW - 5})
    assert answer(200, {"access_token": expired, "expires_in": 0}).lifetime_s == (
        oauth.UNKNOWN_LIFETIME_S
    )


@pytest.mark.parametrize(
    ("status", "document", "says"),
    [
        (401, {"error": "invalid_client", "error_description": "Invalid client credentials"},
         "HTTP 401, invalid_client: Invalid client credentials); check "
         "OCR_KAFKA_OAUTH_CLIENT_ID and _CLIENT_SECRET"),
        (400, {"error": "invalid_scope"}, "check OCR_KAFKA_OAUTH_SCOPE"),
        (400, {"error": "unauthorized_client"}, "client_credentials grant"),
        # Keycloak's answer to a wrong secret: the 401 decides.
        (401, {"error": "unauthorized_client", "error_description": "Invalid client or "
               "Invalid client credentials"}, "check OCR_KAFKA_OAUTH_CLIENT_ID and _CLIENT_SECRET"),
        (404, "<html>Not Found</html>", "HTTP 404"),
        (200, {"id_token": "x"}, "holds no access_token"),
        (200, {"access_token": "t", "token_type": "mac"}, "issued a 'mac' token"),
        (302, {}, "redirects (HTTP 302)"),
    ],
    ids=["invalid-client", "invalid-scope", "unauthorized-client", "keycloak-wrong-secret",
         "not-found", "no-token",
         "not-bearer", "redirect"],
)
def test_refusals_say_what_to_change(status: int, document: object, says: str) -> None:
    with pytest.raises(TokenRefused) as caught:
        answer(status, document)
    assert says in str(caught.value)
    assert not caught.value.retriable


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_overload_and_server_errors_are_worth_retrying(status: int) -> None:
    with pytest.raises(TokenUnavailable) as caught:
        parse_token_response(status, b"upstream connect error", NOW)
    assert caught.value.retriable


@given(st.integers(100, 599), st.binary(max_size=300))
def test_any_answer_is_a_grant_or_a_token_error(status: int, body: bytes) -> None:
    try:
        grant = parse_token_response(status, body, NOW)
    except (TokenRefused, TokenUnavailable):
        return
    assert status == 200 and grant.access_token and grant.lifetime_s > 0


@given(
    st.dictionaries(
        st.sampled_from(["access_token", "token_type", "expires_in", "error"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    ),
    st.integers(100, 599),
)
def test_any_json_answer_is_a_grant_or_a_token_error(document: dict[str, Any], status: int) -> None:
    try:
        grant = answer(status, document)
    except (TokenRefused, TokenUnavailable):
        return
    assert grant.lifetime_s > 0 and grant.access_token == document["access_token"]


# -- the refresh rule ---------------------------------------------------------------------


@given(
    st.floats(0.001, 1e7, allow_nan=False),
    st.floats(0, 1, allow_nan=False),
)
def test_a_token_is_due_for_refresh_before_it_stops_being_usable(
    lifetime: float, fraction: float
) -> None:
    held = HeldToken("t", 1000.0, lifetime)
    now = 1000.0 + fraction * lifetime
    if not held.usable(now):
        assert held.refresh_due(now)
    assert held.expires_at < 1000.0 + lifetime


# -- the provider ---------------------------------------------------------------------------


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class ScriptedEndpoint:
    """Stands in for `TokenProvider._ask`: each call takes the next answer."""

    answers: list[Grant | oauth.TokenError]
    calls: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self) -> Grant:
        self.calls += 1
        await self.gate.wait()
        outcome = self.answers.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def provider_with(answers: list[Grant | oauth.TokenError]) -> tuple[
    TokenProvider, ScriptedEndpoint, FakeClock
]:
    clock = FakeClock()
    provider = TokenProvider(TokenEndpoint("https://idp/token", "c", "s"), clock=clock)
    endpoint = ScriptedEndpoint(answers)
    endpoint.gate.set()
    provider._ask = endpoint  # type: ignore[method-assign]
    return provider, endpoint, clock


async def test_connections_opening_together_share_one_request() -> None:
    provider, endpoint, _clock = provider_with([Grant("t1", 100)])
    endpoint.gate.clear()
    waiting = [asyncio.create_task(provider.token()) for _ in range(5)]
    await asyncio.sleep(0)
    endpoint.gate.set()
    assert await asyncio.gather(*waiting) == ["t1"] * 5
    assert endpoint.calls == 1


async def test_the_token_is_kept_until_its_refresh_is_due() -> None:
    provider, endpoint, clock = provider_with([Grant("t1", 100), Grant("t2", 100)])
    assert await provider.token() == "t1"
    clock.now = 79.9
    assert await provider.token() == "t1" and endpoint.calls == 1
    clock.now = 80.0
    assert await provider.token() == "t2" and endpoint.calls == 2


async def test_an_outage_hands_out_the_valid_token_and_backs_off() -> None:
    down = TokenUnavailable("the token endpoint idp did not answer")
    provider, endpoint, clock = provider_with([Grant("t1", 100), down, down, Grant("t2", 100)])
    await provider.token()
    clock.now = 81.0
    assert await provider.token() == "t1" and endpoint.calls == 2
    clock.now = 81.5  # within the first backoff (1 s): not asked again
    assert await provider.token() == "t1" and endpoint.calls == 2
    clock.now = 82.1
    assert await provider.token() == "t1" and endpoint.calls == 3
    clock.now = 84.2  # the backoff doubled to 2 s
    assert await provider.token() == "t2" and endpoint.calls == 4


async def test_without_a_valid_token_the_error_is_raised() -> None:
    refused = TokenRefused("the token endpoint refused us (HTTP 401, invalid_client)")
    provider, _endpoint, clock = provider_with([refused, Grant("t1", 100), refused])
    with pytest.raises(TokenRefused):
        await provider.token()
    clock.now = 10.0
    assert await provider.token() == "t1"
    clock.now = 10.0 + 95.0  # past expires_at (100 - 10): nothing valid to hand out
    with pytest.raises(TokenRefused):
        await provider.token()


# -- against a token endpoint on loopback ---------------------------------------------------------


@dataclass
class Seen:
    requests: list[tuple[dict[str, str], dict[str, list[str]]]] = field(default_factory=list)


@asynccontextmanager
async def token_endpoint(
    respond: Callable[[dict[str, str], dict[str, list[str]]], tuple[int, bytes]],
    context: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        form = parse_qs(body.decode())
        seen.requests.append((headers, form))
        status, payload = respond(headers, form)
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if context else "http"
    async with server:
        yield f"{scheme}://127.0.0.1:{port}/realms/kafka/token", seen


async def test_the_request_is_rfc_6749_client_credentials() -> None:
    def respond(headers: dict[str, str], form: dict[str, list[str]]) -> tuple[int, bytes]:
        return 200, json.dumps({"access_token": "abc", "token_type": "Bearer",
                                "expires_in": 60}).encode()

    async with token_endpoint(respond) as (url, seen):
        provider = TokenProvider(TokenEndpoint(url, "ocr consumer", "s:e+cr/et", "kafka read"))
        assert await provider.token() == "abc"
    headers, form = seen.requests[0]
    assert form == {"grant_type": ["client_credentials"], "scope": ["kafka read"]}
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    # Section 2.3.1: each part form-encoded, then Basic.
    assert base64.b64decode(headers["authorization"].removeprefix("Basic ")) == (
        b"ocr%20consumer:s%3Ae%2Bcr%2Fet"
    )


async def test_a_refusal_over_http_is_token_refused() -> None:
    def respond(headers: dict[str, str], form: dict[str, list[str]]) -> tuple[int, bytes]:
        return 401, b'{"error": "invalid_client"}'

    async with token_endpoint(respond) as (url, _seen):
        with pytest.raises(TokenRefused, match="invalid_client"):
            await TokenProvider(TokenEndpoint(url, "c", "wrong")).token()


async def test_an_endpoint_that_is_down_is_token_unavailable() -> None:
    async with token_endpoint(lambda h, f: (200, b"{}")) as (url, _seen):
        pass  # closed: nothing listens there any more
    with pytest.raises(TokenUnavailable, match="did not answer"):
        await TokenProvider(TokenEndpoint(url, "c", "s")).token()


async def test_an_untrusted_certificate_names_the_ca_setting(tls: TlsFiles) -> None:
    def respond(headers: dict[str, str], form: dict[str, list[str]]) -> tuple[int, bytes]:
        return 200, b'{"access_token": "t", "token_type": "Bearer"}'

    server = tls.server_context(require_client_cert=False)
    async with token_endpoint(respond, server) as (url, _seen):
        with pytest.raises(TokenRefused, match="OCR_KAFKA_OAUTH_CAFILE"):
            await TokenProvider(TokenEndpoint(url, "c", "s")).token()
        trusted = ssl.create_default_context(cafile=str(tls.ca))
        assert await TokenProvider(TokenEndpoint(url, "c", "s", verify=trusted)).token() == "t"


# -- the broker's answer to our token ------------------------------------------------------


async def test_an_error_challenge_after_the_token_is_a_refused_login() -> None:
    # RFC 7628 3.2.2: the broker answers a token it refuses with a JSON challenge, not an
    # error code; aiokafka 0.14 took it for success.
    provider = TokenProvider(TokenEndpoint("https://idp/token", "c", "s"))
    provider._held = HeldToken("t", 0.0, 1e9)
    connection = AIOKafkaConnection(
        "127.0.0.1", 9092, security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_provider=provider,
    )
    authenticator = connection.authenticator_oauth()
    first = await authenticator.step(None)
    assert first is not None and first[0].startswith(b"n,,\x01auth=Bearer t")
    with pytest.raises(SaslAuthenticationFailed, match="invalid_token"):
        await authenticator.step(b'{"status":"invalid_token"}')
    # An empty answer is the broker's success.
    accepted = connection.authenticator_oauth()
    await accepted.step(None)
    assert await accepted.step(b"") is None
