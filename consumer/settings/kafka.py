"""How to reach Kafka: the connection part of the settings, and the keyword arguments every
aiokafka client we create (consumer, producer, admin) is built with."""

from __future__ import annotations

import re
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from consumer.settings import secret_files
from consumer.settings.base import (
    Secrets,
    check_tls_files,
    empty_is_unset,
    env_name,
    not_empty,
    refuse_unused,
)


class KafkaSecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_tls(self) -> bool:
        return self in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self in (KafkaSecurityProtocol.SASL_PLAINTEXT, KafkaSecurityProtocol.SASL_SSL)


class CompressionType(StrEnum):
    """Kafka's record batch codecs; what we consume may use any of them, whatever this says."""

    NONE = "none"
    GZIP = "gzip"
    SNAPPY = "snappy"
    LZ4 = "lz4"
    ZSTD = "zstd"


class SaslMechanism(StrEnum):
    """PLAIN and SCRAM log in with a user name and password; OAUTHBEARER with an access
    token from an OAuth 2 token endpoint (consumer/settings/kafka_oauth.py)."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    OAUTHBEARER = "OAUTHBEARER"

    @property
    def uses_password(self) -> bool:
        return self is not SaslMechanism.OAUTHBEARER


# aiokafka speaks this too, but it needs settings we do not pass through.
_UNSUPPORTED_SASL = {"GSSAPI": "Kerberos options"}

_PASSWORD_FIELDS = ("kafka_sasl_username", "kafka_sasl_password")
# What OAUTHBEARER needs, then what it may take.
_OAUTH_REQUIRED = (
    "kafka_oauth_token_url",
    "kafka_oauth_client_id",
    "kafka_oauth_client_secret",
)
_OAUTH_FIELDS = (
    *_OAUTH_REQUIRED,
    "kafka_oauth_scope",
    "kafka_oauth_extensions",
    "kafka_oauth_cafile",
)
# RFC 7628 section 3.1: an extension key is ALPHA+, a value VCHAR, space, tab, CR or LF
# (here VCHAR and space: a comma-separated setting has no use for the others); "auth" is the
# token's own key.
_EXTENSION_KEY = re.compile(r"[A-Za-z]+")
_EXTENSION_VALUE = re.compile(r"[\x20-\x7e]*")


class KafkaConnection(Secrets):
    part_title = "Kafka connection"

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        KafkaSecurityProtocol.PLAINTEXT, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        None, description="PLAIN (default), SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER.",
        json_schema_extra={"short": "PLAIN, SCRAM-SHA-256/-512 or OAUTHBEARER."},
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL user name (needed by PLAIN and SCRAM).",
        json_schema_extra={"short": "SASL user name (PLAIN, SCRAM)."},
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (needed by PLAIN and SCRAM)."
    )
    kafka_oauth_token_url: str | None = Field(
        None, description="OAUTHBEARER: the OAuth 2 token endpoint, asked for tokens with "
        "the client-credentials grant (Kafka's sasl.oauthbearer.token.endpoint.url).",
        json_schema_extra={"short": "OAUTHBEARER: OAuth 2 token endpoint URL."},
    )
    kafka_oauth_client_id: str | None = Field(
        None, description="OAUTHBEARER: client id at the token endpoint.",
        json_schema_extra={"short": "OAUTHBEARER: client id."},
    )
    kafka_oauth_client_secret: SecretStr | None = Field(
        None, description="OAUTHBEARER: client secret at the token endpoint."
    )
    kafka_oauth_scope: str | None = Field(
        None, description="OAUTHBEARER: scope asked for, space-separated (unset: none).",
        json_schema_extra={"short": "OAUTHBEARER: scope (unset: none)."},
    )
    kafka_oauth_extensions: str | None = Field(
        None, description="OAUTHBEARER: SASL extensions sent with the token, key=value,... "
        "(Confluent Cloud: logicalCluster=lkc-...,identityPoolId=pool-...).",
        json_schema_extra={"short": "OAUTHBEARER: SASL extensions, k=v,..."},
    )
    kafka_oauth_cafile: Path | None = Field(
        None, description="OAUTHBEARER: CA bundle of an https token endpoint (unset: the "
        "system's CAs).",
        json_schema_extra={"short": "OAUTHBEARER: token endpoint's CA bundle."},
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA bundle for TLS (unset: the system's CAs)."
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="mTLS client certificate (may hold the key)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="mTLS client key, if not in the certificate."
    )
    kafka_idempotence: bool = Field(
        True, description="Idempotent producer; false only for brokers without "
        "InitProducerId (Tansu's memory build).",
        json_schema_extra={"short": "Idempotent producer (false: Tansu memory)."},
    )
    kafka_compression_type: CompressionType = Field(
        CompressionType.ZSTD, description="Codec of the batches we produce: none, gzip, "
        "snappy, lz4 or zstd (measured: bench/README.md). Any codec is read.",
        json_schema_extra={"short": "Batch codec: none, gzip, snappy, lz4 or zstd."},
    )

    @field_validator(
        "kafka_sasl_mechanism", *_PASSWORD_FIELDS, *_OAUTH_FIELDS,
        "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", mode="before",
    )
    @classmethod
    def _kafka_empty_is_unset(cls, value: Any) -> Any:
        return empty_is_unset(value)

    @field_validator(
        *_PASSWORD_FIELDS, "kafka_oauth_client_id",
        "kafka_oauth_client_secret", mode="before",
    )
    @classmethod
    def _kafka_secret_file_problem(cls, value: Any) -> Any:
        return secret_files.check_secret(value)

    @field_validator("kafka_oauth_token_url")
    @classmethod
    def _token_endpoint_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"{value!r} is not an http(s) URL; give the token endpoint's full URL, e.g. "
                "https://idp.example.com/realms/kafka/protocol/openid-connect/token"
            )
        return value

    @field_validator("kafka_oauth_extensions")
    @classmethod
    def _extensions_parse(cls, value: str | None) -> str | None:
        if value is not None:
            sasl_extensions(value)
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _kafka_names(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        # Kafka's own tools accept either case; aiokafka wants upper case.
        name = value.strip().upper()
        if name in _UNSUPPORTED_SASL:
            raise ValueError(
                f"SASL mechanism {name} needs {_UNSUPPORTED_SASL[name]}, which ocr-stream "
                "does not pass through; use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"
            )
        return name

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_not_empty(cls, value: str) -> str:
        return not_empty(value)

    @model_validator(mode="after")
    def _kafka_security(self) -> Self:
        protocol = self.kafka_security_protocol
        setting = f"{env_name('kafka_security_protocol')}={protocol.value}"
        if protocol.uses_sasl:
            mechanism = self.kafka_sasl_mechanism or SaslMechanism.PLAIN
            needed, unused = (
                (_PASSWORD_FIELDS, _OAUTH_FIELDS) if mechanism.uses_password
                else (_OAUTH_REQUIRED, _PASSWORD_FIELDS)
            )
            missing = [
                env_name(name) for name in needed if not _given(getattr(self, name))
            ]
            if missing:
                them = "it" if len(missing) == 1 else "them"
                raise ValueError(
                    f"{setting} with SASL mechanism {mechanism.value} needs "
                    f"{' and '.join(missing)}; set {them}"
                )
            refuse_unused(
                self, unused, f"SASL mechanism {mechanism.value} would not use {{them}}; "
                "unset {them}",
            )
        else:
            refuse_unused(
                self, ("kafka_sasl_mechanism", *_PASSWORD_FIELDS, *_OAUTH_FIELDS),
                f"{setting} would not use {{them}}; set SASL_SSL (or SASL_PLAINTEXT) or "
                "unset {them}",
            )
        if not protocol.uses_tls:
            refuse_unused(
                self, ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"),
                f"{setting} does not use TLS; set SSL or SASL_SSL, or unset {{them}}",
            )
        check_tls_files(self, "kafka")
        cafile = self.kafka_oauth_cafile
        if cafile is not None and not cafile.is_file():
            raise ValueError(
                f"{env_name('kafka_oauth_cafile')}={cafile} is not a file; "
                "point it at the PEM bundle of the token endpoint's CA"
            )
        return self


def _given(value: object) -> bool:
    return bool(value.get_secret_value() if isinstance(value, SecretStr) else value)


def sasl_extensions(text: str) -> dict[str, str]:
    """`key=value,key=value` (librdkafka's sasl.oauthbearer.extensions) as a dict; raises
    ValueError naming the first pair RFC 7628 does not allow."""
    extensions: dict[str, str] = {}
    for pair in text.split(","):
        key, equals, value = pair.strip().partition("=")
        if not equals or not _EXTENSION_KEY.fullmatch(key) or key == "auth":
            raise ValueError(
                f"SASL extension {pair.strip()!r} is not key=value with a key of letters "
                "(not 'auth'); write key=value,key=value"
            )
        if not _EXTENSION_VALUE.fullmatch(value):
            raise ValueError(
                f"SASL extension {key!r} has a character RFC 7628 does not allow in a value "
                "(printable ASCII and space only)"
            )
        extensions[key] = value
    return extensions


class KafkaTlsError(ValueError):
    """The TLS files named in the settings exist but cannot be used."""


def _tls_context(settings: KafkaConnection) -> ssl.SSLContext:
    cafile = settings.kafka_ssl_cafile
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (ssl.SSLError, OSError) as exc:
        raise KafkaTlsError(
            f"{env_name('kafka_ssl_cafile')}={cafile} holds no usable CA certificate "
            f"({exc}); point it at the PEM bundle of the brokers' CA"
        ) from None
    certfile, keyfile = settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
    if certfile is not None:
        try:
            context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
        except (ssl.SSLError, OSError) as exc:
            raise KafkaTlsError(
                f"the client certificate {env_name('kafka_ssl_certfile')}={certfile} "
                f"(key: {keyfile or 'in the same file'}) cannot be loaded ({exc}); give a "
                "PEM certificate and its unencrypted private key"
            ) from None
    return context


def client_kwargs(settings: KafkaConnection) -> dict[str, Any]:
    """bootstrap + security kwargs accepted by AIOKafkaConsumer/Producer/AdminClient.

    The SASL password is in here in clear (aiokafka needs it so): never log this dict.
    With OAUTHBEARER it holds a token provider made for this client: call it once per
    client, inside the event loop the client runs in.
    """
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": protocol.value,
    }
    if protocol.uses_tls:
        kwargs["ssl_context"] = _tls_context(settings)
    if protocol.uses_sasl:
        mechanism = settings.kafka_sasl_mechanism or SaslMechanism.PLAIN
        kwargs["sasl_mechanism"] = mechanism.value
        if mechanism is SaslMechanism.OAUTHBEARER:
            from consumer.settings.kafka_oauth import TokenProvider

            kwargs["sasl_oauth_token_provider"] = TokenProvider.from_settings(settings)
        else:
            # The settings made sure both are set; aiokafka names them sasl_plain_* for
            # SCRAM too.
            assert settings.kafka_sasl_password is not None
            kwargs["sasl_plain_username"] = settings.kafka_sasl_username
            kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return kwargs


def producer_kwargs(settings: KafkaConnection) -> dict[str, Any]:
    """client_kwargs plus what every producer of ours shares: the batch codec."""
    codec = settings.kafka_compression_type
    return {
        **client_kwargs(settings),
        "compression_type": None if codec is CompressionType.NONE else codec.value,
    }
