"""How to reach Kafka: the connection part of the settings, and the keyword arguments every
aiokafka client we create (consumer, producer, admin) is built with."""

from __future__ import annotations

import ssl
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

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
    """The SASL mechanisms that a user name and password are enough for."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


# aiokafka speaks these too, but they need settings we do not pass through.
_UNSUPPORTED_SASL = {
    "GSSAPI": "Kerberos options",
    "OAUTHBEARER": "a token provider",
}


class KafkaConnection(Secrets):
    part_title = "Kafka connection"

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        KafkaSecurityProtocol.PLAINTEXT, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        None, description="PLAIN (default), SCRAM-SHA-256 or -512."
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL user name (needed by SASL_*)."
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (needed by SASL_*)."
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
        "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
        "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", mode="before",
    )
    @classmethod
    def _kafka_empty_is_unset(cls, value: Any) -> Any:
        return empty_is_unset(value)

    @field_validator("kafka_sasl_username", "kafka_sasl_password", mode="before")
    @classmethod
    def _kafka_secret_file_problem(cls, value: Any) -> Any:
        return secret_files.check_secret(value)

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
                "does not pass through; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
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
            missing = [
                env_name(name)
                for name, value in (
                    ("kafka_sasl_username", self.kafka_sasl_username),
                    ("kafka_sasl_password", self.kafka_sasl_password),
                )
                if not (value.get_secret_value() if isinstance(value, SecretStr) else value)
            ]
            if missing:
                them = "it" if len(missing) == 1 else "them"
                raise ValueError(f"{setting} needs {' and '.join(missing)}; set {them}")
        else:
            refuse_unused(
                self, ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"),
                f"{setting} would not use {{them}}; set SASL_SSL (or SASL_PLAINTEXT) or "
                "unset {them}",
            )
        if not protocol.uses_tls:
            refuse_unused(
                self, ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"),
                f"{setting} does not use TLS; set SSL or SASL_SSL, or unset {{them}}",
            )
        check_tls_files(self, "kafka")
        return self


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
    """
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": protocol.value,
    }
    if protocol.uses_tls:
        kwargs["ssl_context"] = _tls_context(settings)
    if protocol.uses_sasl:
        # The settings made sure both are set; aiokafka names them sasl_plain_* for SCRAM too.
        assert settings.kafka_sasl_password is not None
        mechanism = settings.kafka_sasl_mechanism or SaslMechanism.PLAIN
        kwargs["sasl_mechanism"] = mechanism.value
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
