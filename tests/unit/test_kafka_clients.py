"""Kafka security settings: validated when they load, turned into working aiokafka kwargs,
and the SASL password kept out of reprs, dumps and error messages."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient
from pydantic import ValidationError

from consumer import app
from consumer.config import KafkaSecurityProtocol, SaslMechanism, Settings
from consumer.settings.kafka import KafkaTlsError, client_kwargs
from consumer.settings.kafka_oauth import TokenProvider
from tests.support.tls import TlsFiles

PASSWORD = "hunter2-Kafka-secret"
OAUTH: dict[str, Any] = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "OAUTHBEARER",
    "kafka_oauth_token_url": "https://idp.example.com/token",
    "kafka_oauth_client_id": "ocr-consumer",
    "kafka_oauth_client_secret": PASSWORD,
}


pytestmark = pytest.mark.usefixtures("clean_env")


def sasl(protocol: str, mechanism: str | None = None, **extra: Any) -> Settings:
    return Settings(
        kafka_security_protocol=protocol,  # type: ignore[arg-type]
        kafka_sasl_mechanism=mechanism,  # type: ignore[arg-type]
        kafka_sasl_username="ocr-stream",
        kafka_sasl_password=PASSWORD,  # type: ignore[arg-type]
        **extra,
    )


def message(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    return str(caught.value)


async def handshake(context: ssl.SSLContext, server: ssl.SSLContext) -> str:
    """Connect with `context` to a local TLS server; '' when the server accepted us, else
    what went wrong."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Only reached once the server side of the handshake (client certificate) passed.
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with listener:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=context), 10
                )
                said = await asyncio.wait_for(reader.read(), 10)
                writer.close()
            except (ssl.SSLError, ConnectionError) as exc:
                return repr(exc)
            return "" if said == b"ok" else f"server hung up ({said!r})"
    finally:
        listener.close()


def aiokafka_accepts(kwargs: dict[str, Any]) -> None:
    # aiokafka checks protocol, mechanism and credentials when a client is made.
    AIOKafkaClient(**kwargs)


# -- the kwargs ---------------------------------------------------------------------------


async def test_plaintext_has_no_security_kwargs() -> None:
    kwargs = client_kwargs(Settings(kafka_bootstrap="k1:9092,k2:9092"))
    assert kwargs == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}
    aiokafka_accepts(kwargs)


async def test_ssl_with_a_ca_verifies_the_broker(tls: TlsFiles) -> None:
    kwargs = client_kwargs(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tls.ca))  # type: ignore[arg-type]
    assert set(kwargs) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"
    context: ssl.SSLContext = kwargs["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert {"commonName": "ocr-stream test CA"} in [
        dict(part[0] for part in cert["subject"]) for cert in context.get_ca_certs()
    ]
    aiokafka_accepts(kwargs)
    assert await handshake(context, tls.server_context(require_client_cert=False)) == ""
    # No client certificate: a broker that requires one refuses us.
    assert await handshake(context, tls.server_context(require_client_cert=True)) != ""


async def test_ssl_without_our_ca_refuses_a_broker_it_cannot_verify(tls: TlsFiles) -> None:
    context = client_kwargs(Settings(kafka_security_protocol="SSL"))["ssl_context"]  # type: ignore[arg-type]
    assert "CERTIFICATE_VERIFY_FAILED" in await handshake(
        context, tls.server_context(require_client_cert=False)
    )


@pytest.mark.parametrize("combined", [False, True], ids=["cert+key", "one-file"])
async def test_mutual_tls_presents_the_client_certificate(tls: TlsFiles, combined: bool) -> None:
    settings = Settings(
        kafka_security_protocol="SSL",  # type: ignore[arg-type]
        kafka_ssl_cafile=tls.ca,
        kafka_ssl_certfile=tls.client_combined if combined else tls.client_cert,
        kafka_ssl_keyfile=None if combined else tls.client_key,
    )
    kwargs = client_kwargs(settings)
    aiokafka_accepts(kwargs)
    server = tls.server_context(require_client_cert=True)
    assert await handshake(kwargs["ssl_context"], server) == ""


async def test_sasl_plaintext_plain() -> None:
    kwargs = client_kwargs(sasl("SASL_PLAINTEXT", "PLAIN"))
    assert kwargs == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "ocr-stream",
        "sasl_plain_password": PASSWORD,
    }
    aiokafka_accepts(kwargs)


async def test_oauthbearer_gets_a_token_provider_per_client() -> None:
    settings = Settings(**OAUTH, kafka_oauth_extensions="logicalCluster=lkc-1, pool=p 2")
    kwargs = client_kwargs(settings)
    provider = kwargs.pop("sasl_oauth_token_provider")
    assert isinstance(provider, TokenProvider)
    assert provider.extensions() == {"logicalCluster": "lkc-1", "pool": "p 2"}
    assert client_kwargs(settings)["sasl_oauth_token_provider"] is not provider
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert "sasl_plain_password" not in kwargs and PASSWORD not in repr(settings)
    aiokafka_accepts({**kwargs, "sasl_oauth_token_provider": provider})


async def test_sasl_without_a_mechanism_is_plain() -> None:
    assert client_kwargs(sasl("SASL_PLAINTEXT"))["sasl_mechanism"] == "PLAIN"


async def test_sasl_ssl_scram_sha_512(tls: TlsFiles) -> None:
    kwargs = client_kwargs(sasl("sasl_ssl", "scram-sha-512", kafka_ssl_cafile=tls.ca))
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "ocr-stream"
    assert kwargs["sasl_plain_password"] == PASSWORD
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    aiokafka_accepts(kwargs)


def test_names_are_read_in_either_case() -> None:
    settings = sasl(" sasl_ssl ", "scram-sha-256")
    assert settings.kafka_security_protocol is KafkaSecurityProtocol.SASL_SSL
    assert settings.kafka_sasl_mechanism is SaslMechanism.SCRAM_SHA_256


# -- refused when they load -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"kafka_security_protocol": "SASL-SSL"},
         "Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
        ({"kafka_security_protocol": "TLS"},
         "Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-1",
          "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
         "Input should be 'PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512' or 'OAUTHBEARER'"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI",
          "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
         "SASL mechanism GSSAPI needs Kerberos options"),
        ({"kafka_security_protocol": "SASL_SSL"},
         "OCR_KAFKA_SECURITY_PROTOCOL=SASL_SSL with SASL mechanism PLAIN needs "
         "OCR_KAFKA_SASL_USERNAME and OCR_KAFKA_SASL_PASSWORD; set them"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u",
          "kafka_sasl_password": ""},
         "OCR_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT with SASL mechanism PLAIN needs "
         "OCR_KAFKA_SASL_PASSWORD; set it"),
        ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"},
         "OCR_KAFKA_SASL_USERNAME, OCR_KAFKA_SASL_PASSWORD set, but "
         "OCR_KAFKA_SECURITY_PROTOCOL=PLAINTEXT would not use them"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u",
          "kafka_sasl_password": "p", "kafka_ssl_cafile": "/etc/hostname"},
         "OCR_KAFKA_SSL_CAFILE set, but OCR_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not "
         "use TLS"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
         "OCR_KAFKA_SSL_CAFILE=/nonexistent/ca.pem does not exist"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/tmp"},
         "OCR_KAFKA_SSL_CERTFILE=/tmp is not a file"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/etc/hostname"},
         "OCR_KAFKA_SSL_KEYFILE is set without OCR_KAFKA_SSL_CERTFILE"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "oauthbearer",
          "kafka_oauth_client_id": "c"},
         "with SASL mechanism OAUTHBEARER needs OCR_KAFKA_OAUTH_TOKEN_URL "
         "and OCR_KAFKA_OAUTH_CLIENT_SECRET; set them"),
        ({**OAUTH, "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
         "OCR_KAFKA_SASL_USERNAME, OCR_KAFKA_SASL_PASSWORD set, but SASL mechanism "
         "OAUTHBEARER would not use them"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u",
          "kafka_sasl_password": "p", "kafka_oauth_scope": "kafka"},
         "OCR_KAFKA_OAUTH_SCOPE set, but SASL mechanism PLAIN would not use it"),
        ({"kafka_oauth_client_id": "c"},
         "OCR_KAFKA_OAUTH_CLIENT_ID set, but OCR_KAFKA_SECURITY_PROTOCOL=PLAINTEXT "
         "would not use it"),
        ({**OAUTH, "kafka_oauth_token_url": "idp.example.com/token"},
         "'idp.example.com/token' is not an http(s) URL"),
        ({**OAUTH, "kafka_oauth_extensions": "logicalCluster=lkc-1,auth=x"},
         "SASL extension 'auth=x' is not key=value with a key of letters"),
        ({**OAUTH, "kafka_oauth_extensions": "pool=\u00e9"},
         "SASL extension 'pool' has a character RFC 7628 does not allow"),
        ({**OAUTH, "kafka_oauth_cafile": "/nonexistent/ca.pem"},
         "OCR_KAFKA_OAUTH_CAFILE=/nonexistent/ca.pem is not a file"),
    ],
    ids=["protocol-typo", "protocol-unknown", "mechanism-unknown", "mechanism-gssapi",
         "sasl-no-credentials", "sasl-empty-password", "credentials-unused", "ca-unused",
         "ca-missing", "cert-directory", "key-without-cert", "oauth-incomplete",
         "oauth-password-unused", "oauth-settings-unused-by-plain", "oauth-plaintext",
         "oauth-url", "oauth-extension-key", "oauth-extension-value", "oauth-cafile"],
)
def test_bad_security_settings_are_refused_precisely(
    values: dict[str, Any], expected: str
) -> None:
    assert expected in message(**values)


def test_empty_variables_mean_unset(clean_env: pytest.MonkeyPatch) -> None:
    # As a ConfigMap or Secret with blank keys gives them.
    for name in ("SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD", "SSL_CAFILE"):
        clean_env.setenv(f"OCR_KAFKA_{name}", "")
    settings = Settings()
    assert settings.kafka_sasl_password is None and settings.kafka_ssl_cafile is None


def test_unusable_tls_files_are_named(tls: TlsFiles, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificate here\n")
    with pytest.raises(KafkaTlsError, match=r"OCR_KAFKA_SSL_CAFILE=.*empty\.pem holds no usable"):
        client_kwargs(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=empty))  # type: ignore[arg-type]
    wrong_key = Settings(
        kafka_security_protocol="SSL",  # type: ignore[arg-type]
        kafka_ssl_certfile=tls.client_cert, kafka_ssl_keyfile=tls.server_key,
    )
    with pytest.raises(KafkaTlsError, match=r"OCR_KAFKA_SSL_CERTFILE=.*cannot be loaded"):
        client_kwargs(wrong_key)


# -- the password stays secret --------------------------------------------------------------


def test_the_password_is_not_in_reprs_or_dumps(tls: TlsFiles) -> None:
    settings = sasl("SASL_SSL", "SCRAM-SHA-512", kafka_ssl_cafile=tls.ca)
    for shown in (repr(settings), str(settings), settings.model_dump_json(),
                  str(settings.model_dump()), repr(settings.kafka_sasl_password)):
        assert PASSWORD not in shown


def test_the_password_is_not_in_validation_messages(clean_env: pytest.MonkeyPatch) -> None:
    # pydantic puts the whole input in a model-level error unless told not to.
    shown = message(kafka_sasl_password=PASSWORD, kafka_security_protocol="SASL_SSL")
    assert "OCR_KAFKA_SASL_USERNAME" in shown and PASSWORD not in shown
    shown = message(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u",
        kafka_sasl_password=PASSWORD, ngram_size=1,
    )
    assert "ngram_size 1" in shown and PASSWORD not in shown
    clean_env.setenv("OCR_KAFKA_SASL_PASSWORD", PASSWORD)
    clean_env.setenv("OCR_REDIS_PASSWORD", PASSWORD + "-redis")
    clean_env.setenv("OCR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert PASSWORD not in str(caught.value)


def test_the_consumer_does_not_print_the_password_for_bad_settings(
    capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch,
) -> None:
    # From the environment: a password flag is refused before settings load (ps shows it).
    clean_env.setenv("OCR_KAFKA_SASL_PASSWORD", PASSWORD)
    code = app.main(["--kafka-security-protocol", "SASL_SSL"])
    err = capsys.readouterr().err
    assert code != 0 and "OCR_KAFKA_SASL_USERNAME" in err
    assert PASSWORD not in err
