"""The Redis client as the consumer builds it: password, and TLS with a CA bundle and a
client certificate for rediss:// URLs, checked against a local TLS server that speaks
enough of the Redis protocol to answer PING."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from consumer.config import Settings
from consumer.state import redis_client
from tests.support.tls import TlsFiles

PASSWORD = "redis-secret-Pa55"


pytestmark = pytest.mark.usefixtures("clean_env")


def options(client: aioredis.Redis) -> tuple[type[Any], dict[str, Any]]:
    pool = client.connection_pool
    return pool.connection_class, pool.connection_kwargs


@dataclass
class FakeRedis:
    port: int = 0
    commands: list[list[bytes]] = field(default_factory=list)


async def _answer(state: FakeRedis, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    """RESP arrays in; PING, HELLO (RESP3, which redis-py 8 opens with) and anything else
    (AUTH, CLIENT SETINFO) answered."""
    try:
        while line := await reader.readline():
            args = []
            for _ in range(int(line[1:])):
                size = int((await reader.readline())[1:])
                args.append((await reader.readexactly(size + 2))[:-2])
            state.commands.append(args)
            command = args[0].upper()
            if command == b"PING":
                writer.write(b"+PONG\r\n")
            elif command == b"HELLO":
                writer.write(b"%1\r\n$5\r\nproto\r\n:" + args[1] + b"\r\n")
            else:
                writer.write(b"+OK\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def tls_redis(tls: TlsFiles) -> AsyncIterator[FakeRedis]:
    """A TLS server on 127.0.0.1 that requires a client certificate from our CA."""
    state = FakeRedis()
    listener = await asyncio.start_server(
        lambda r, w: _answer(state, r, w), "127.0.0.1", 0,
        ssl=tls.server_context(require_client_cert=True),
    )
    state.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield state
        listener.close()


# -- the options the client is built with ----------------------------------------------------


async def test_plain_redis_has_no_tls_options() -> None:
    settings = Settings(redis_url="redis://cache:6379/2", redis_password=PASSWORD)  # type: ignore[arg-type]
    client = redis_client(settings)
    try:
        connection_class, kwargs = options(client)
        assert connection_class is Connection
        assert not [key for key in kwargs if key.startswith("ssl")]
        assert kwargs["password"] == PASSWORD and kwargs["host"] == "cache" and kwargs["db"] == 2
    finally:
        await client.aclose()


async def test_rediss_verifies_with_the_system_cas_by_default() -> None:
    client = redis_client(Settings(redis_url="rediss://cache.example.test:6380/0"))
    try:
        connection_class, kwargs = options(client)
        assert connection_class is SSLConnection
        assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_check_hostname"] is True
        assert "ssl_ca_certs" not in kwargs and "ssl_certfile" not in kwargs
    finally:
        await client.aclose()


async def test_rediss_with_ca_and_client_certificate(tls: TlsFiles) -> None:
    settings = Settings(
        redis_url="rediss://cache.example.test:6380/0",
        redis_ssl_cafile=tls.ca, redis_ssl_certfile=tls.client_cert,
        redis_ssl_keyfile=tls.client_key,
    )
    client = redis_client(settings)
    try:
        connection_class, kwargs = options(client)
        assert connection_class is SSLConnection
        assert kwargs["ssl_ca_certs"] == str(tls.ca)
        assert kwargs["ssl_certfile"] == str(tls.client_cert)
        assert kwargs["ssl_keyfile"] == str(tls.client_key)
    finally:
        await client.aclose()


async def test_url_parameters_are_the_operators_explicit_choice() -> None:
    client = redis_client(Settings(redis_url="rediss://cache:6380/0?ssl_cert_reqs=none"))
    try:
        assert options(client)[1]["ssl_cert_reqs"] == "none"
    finally:
        await client.aclose()


# -- against a TLS server -----------------------------------------------------------------


@pytest.mark.parametrize("combined", [False, True], ids=["cert+key", "one-file"])
async def test_mutual_tls_with_our_ca(tls: TlsFiles, tls_redis: FakeRedis, combined: bool) -> None:
    settings = Settings(
        redis_url=f"rediss://127.0.0.1:{tls_redis.port}/0", redis_password=PASSWORD,  # type: ignore[arg-type]
        redis_ssl_cafile=tls.ca,
        redis_ssl_certfile=tls.client_combined if combined else tls.client_cert,
        redis_ssl_keyfile=None if combined else tls.client_key,
    )
    client = redis_client(settings)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()
    # The password went over the TLS connection (HELLO ... AUTH or AUTH, by protocol).
    assert any(PASSWORD.encode() in command for command in tls_redis.commands)


async def test_without_a_client_certificate_the_server_refuses(
    tls: TlsFiles, tls_redis: FakeRedis
) -> None:
    settings = Settings(redis_url=f"rediss://127.0.0.1:{tls_redis.port}/0", redis_ssl_cafile=tls.ca)
    client = redis_client(settings)
    try:
        with pytest.raises((RedisConnectionError, ssl.SSLError)):
            await client.ping()
    finally:
        await client.aclose()
    assert tls_redis.commands == []


async def test_without_our_ca_the_server_is_not_trusted(
    tls: TlsFiles, tls_redis: FakeRedis
) -> None:
    settings = Settings(
        redis_url=f"rediss://127.0.0.1:{tls_redis.port}/0",
        redis_ssl_certfile=tls.client_cert, redis_ssl_keyfile=tls.client_key,
    )
    client = redis_client(settings)
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()
    finally:
        await client.aclose()


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"redis_ssl_cafile": "/etc/hostname"},
         "OCR_REDIS_SSL_CAFILE set, but OCR_REDIS_URL is not a rediss:// URL"),
        ({"redis_url": "rediss://r:6380/0", "redis_ssl_keyfile": "/etc/hostname"},
         "OCR_REDIS_SSL_KEYFILE is set without OCR_REDIS_SSL_CERTFILE"),
        ({"redis_url": "rediss://r:6380/0", "redis_ssl_cafile": "/nonexistent/ca.pem"},
         "OCR_REDIS_SSL_CAFILE=/nonexistent/ca.pem does not exist"),
        ({"redis_url": "rediss://r:6380/0", "redis_ssl_certfile": "/tmp"},
         "OCR_REDIS_SSL_CERTFILE=/tmp is not a file"),
    ],
    ids=["tls-without-rediss", "key-without-cert", "ca-missing", "cert-directory"],
)
def test_bad_redis_tls_settings_are_refused(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    assert expected in str(caught.value)


def test_redis_tls_from_the_environment(clean_env: pytest.MonkeyPatch, tls: TlsFiles) -> None:
    clean_env.setenv("OCR_REDIS_URL", "rediss://redis:6380/0")
    clean_env.setenv("OCR_REDIS_SSL_CAFILE", str(tls.ca))
    clean_env.setenv("OCR_REDIS_SSL_CERTFILE", str(tls.client_combined))
    clean_env.setenv("OCR_REDIS_SSL_KEYFILE", "")  # blank: unset
    clean_env.setenv("OCR_REDIS_PASSWORD", PASSWORD)
    settings = Settings()
    assert settings.redis_ssl_cafile == Path(tls.ca) and settings.redis_ssl_keyfile is None
    assert PASSWORD not in repr(settings)
