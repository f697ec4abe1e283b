"""Connection settings shared by every aiokafka client we create (consumer, producer, admin)."""

from __future__ import annotations

import ssl
from typing import Any

from consumer.config import CompressionType, SaslMechanism, Settings, env_name


class KafkaTlsError(ValueError):
    """The TLS files named in the settings exist but cannot be used."""


def _tls_context(settings: Settings) -> ssl.SSLContext:
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


def client_kwargs(settings: Settings) -> dict[str, Any]:
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
        # Settings made sure both are set; aiokafka names them sasl_plain_* for SCRAM too.
        assert settings.kafka_sasl_password is not None
        mechanism = settings.kafka_sasl_mechanism or SaslMechanism.PLAIN
        kwargs["sasl_mechanism"] = mechanism.value
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return kwargs


def producer_kwargs(settings: Settings) -> dict[str, Any]:
    """client_kwargs plus what every producer of ours shares: the batch codec."""
    codec = settings.kafka_compression_type
    return {
        **client_kwargs(settings),
        "compression_type": None if codec is CompressionType.NONE else codec.value,
    }
