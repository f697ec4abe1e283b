"""What a failed login at start means (consumer/settings/kafka_login.py): refusals no retry
fixes name the setting to change; outages are no refusal."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

from consumer.config import SaslMechanism, Settings
from consumer.settings.kafka_login import judge, login_refusal, tls_alert
from consumer.settings.kafka_oauth import TokenRefused, TokenUnavailable
from tests.support.tls import TlsFiles

pytestmark = pytest.mark.usefixtures("clean_env")


def verify_failed() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    return error


@pytest.mark.parametrize(
    ("exc", "mechanism", "cause", "says"),
    [
        (kafka_errors.SaslAuthenticationFailed("Authentication failed: Invalid username"),
         SaslMechanism.SCRAM_SHA_512, "authentication",
         "check OCR_KAFKA_SASL_USERNAME and OCR_KAFKA_SASL_PASSWORD"),
        (kafka_errors.SaslAuthenticationFailed("invalid_token"), SaslMechanism.OAUTHBEARER,
         "authentication", "sasl.oauthbearer.expected.audience/issuer"),
        (kafka_errors.UnsupportedSaslMechanismError("Kafka broker does not support PLAIN"),
         SaslMechanism.PLAIN, "sasl_mechanism", "set OCR_KAFKA_SASL_MECHANISM"),
        (verify_failed(), SaslMechanism.PLAIN, "tls_untrusted", "set OCR_KAFKA_SSL_CAFILE"),
        (ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] certificate required"),
         SaslMechanism.PLAIN, "tls_handshake", "OCR_KAFKA_SSL_CERTFILE"),
        (TokenRefused("the token endpoint refused us (HTTP 401, invalid_client)"),
         SaslMechanism.OAUTHBEARER, "oauth_token_refused", "invalid_client"),
    ],
    ids=["wrong-password", "token-rejected", "mechanism", "untrusted", "client-cert",
         "oauth-client"],
)
def test_refused_logins_are_fatal_and_name_the_setting(
    exc: BaseException, mechanism: SaslMechanism, cause: str, says: str
) -> None:
    refused = judge(exc, mechanism)
    assert refused is not None and refused.cause == cause
    assert says in refused.message


@pytest.mark.parametrize(
    "exc",
    [
        TokenUnavailable("the token endpoint idp:443 did not answer"),
        kafka_errors.KafkaConnectionError("Connection at 127.0.0.1:9093 closed"),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
    ],
    ids=["token-endpoint-down", "closed", "tls-cut", "refused", "timeout"],
)
def test_outages_stay_transient(exc: BaseException) -> None:
    assert judge(exc, SaslMechanism.PLAIN) is None


async def listening(tls: TlsFiles) -> tuple[asyncio.Server, int]:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(
        hang_up, "127.0.0.1", 0, ssl=tls.server_context(require_client_cert=False)
    )
    return server, server.sockets[0].getsockname()[1]


async def test_a_broker_certificate_we_do_not_trust_is_a_refusal(tls: TlsFiles) -> None:
    server, port = await listening(tls)
    async with server:
        untrusted = Settings(kafka_bootstrap=f"127.0.0.1:{port}", kafka_security_protocol="SSL")  # type: ignore[arg-type]
        refused = await login_refusal(untrusted)
        assert refused is not None and refused.cause == "tls_untrusted", refused
        # With our CA the handshake passes; the server hanging up is no refusal.
        trusted: dict[str, Any] = {"kafka_ssl_cafile": tls.ca}
        assert await login_refusal(untrusted.model_copy(update=trusted)) is None


async def test_nothing_listening_is_no_refusal(unused_tcp_port: int) -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{unused_tcp_port}")
    assert await login_refusal(settings) is None


async def test_a_refused_client_certificate_is_read_from_the_alert(tls: TlsFiles) -> None:
    # TLS 1.3: the server refuses a client without a certificate after the handshake; only
    # a read sees why. A blocking server, as a JVM broker does, sends the alert before it
    # closes (asyncio's own server closes without flushing it).
    context = tls.server_context(require_client_cert=True)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn = listener.accept()[0]
            except OSError:
                return  # the test closed the listener
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as s:
                s.settimeout(5)
                s.recv(1)

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        no_certificate = ssl.create_default_context(cafile=str(tls.ca))
        alert = await tls_alert("127.0.0.1", port, no_certificate)
        assert alert is not None, "no alert read"
        refused = judge(alert, SaslMechanism.PLAIN)
        assert refused is not None and refused.cause == "tls_handshake"
        assert "OCR_KAFKA_SSL_CERTFILE" in refused.message
        with_certificate = ssl.create_default_context(cafile=str(tls.ca))
        with_certificate.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        assert await tls_alert("127.0.0.1", port, with_certificate) is None
    finally:
        listener.close()
