"""Why the brokers could not be reached at start: a login no retry fixes, or an outage.

aiokafka's bootstrap logs a refused login (wrong SASL password, a broker certificate we do
not trust, a client certificate the broker does not, an OAuth client the token endpoint
refuses) and then raises the same "Unable to bootstrap" as for a broker that is down. The
consumer would retry it until OCR_START_TIMEOUT_S and exit 4 saying "unreachable". So when
the bootstrap fails, `login_refusal` opens one connection per bootstrap address the way
our clients do (aiokafka's own `create_conn`, the same TLS context, SASL mechanism and
token provider) and judges what it raises: a `LoginRefused` makes the consumer exit 5 at
once (and a tool print it), with what to change.

Does not guarantee: a verdict for every misconfiguration. A plaintext client talking to a
TLS listener, or the wrong port, looks like a broker that does not answer (the broker just
closes the connection), and stays a retry that ends in exit 4, whose message names the
settings to check.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aiokafka import errors as kafka_errors
from aiokafka.conn import collect_hosts, create_conn

from consumer.log import get_logger
from consumer.settings.kafka import KafkaConnection, SaslMechanism, client_kwargs
from consumer.settings.kafka_oauth import TokenRefused

log = get_logger(__name__)

PROBE_TIMEOUT_S = 15.0
TLS_ALERT_WAIT_S = 3.0
_CONNECTION_KWARGS = (
    "ssl_context", "security_protocol", "sasl_mechanism", "sasl_plain_username",
    "sasl_plain_password", "sasl_oauth_token_provider",
)


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """A login no retry fixes: `cause` short and stable (logs, metrics), `message` says
    what happened and which setting to change."""

    cause: str
    message: str


async def login_refusal(settings: KafkaConnection) -> LoginRefused | None:
    """Why a bootstrap address refuses our login, or None: every address let us in, or
    failed in a way that may pass (down, slow, closed on us)."""
    kwargs = client_kwargs(settings)
    connection = {name: kwargs[name] for name in _CONNECTION_KWARGS if name in kwargs}
    for host, port, _family in collect_hosts(settings.kafka_bootstrap, randomize=False):
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                conn = await create_conn(
                    host, port, client_id="ocr-login-probe",
                    request_timeout_ms=int(PROBE_TIMEOUT_S * 1000), **connection,
                )
        except Exception as exc:  # everything a connection attempt may raise is judged
            mechanism = settings.kafka_sasl_mechanism or SaslMechanism.PLAIN
            refused = judge(exc, mechanism)
            context = kwargs.get("ssl_context")
            if refused is None and context is not None and _closed_on_us(exc):
                alert = await tls_alert(host, port, context)
                refused = judge(alert, mechanism) if alert is not None else None
            log.info("kafka_login_probe", address=f"{host}:{port}", error=repr(exc),
                     refused=refused.cause if refused else None)
            if refused is not None:
                return refused
            continue
        conn.close()
    return None


def _closed_on_us(exc: BaseException) -> bool:
    return isinstance(exc, kafka_errors.KafkaConnectionError | ConnectionError)


async def tls_alert(host: str, port: int, context: ssl.SSLContext) -> ssl.SSLError | None:
    """The TLS alert a server sends right after the handshake, if any.

    With TLS 1.3 a broker that refuses our client certificate (none, or one its CA did not
    sign) says so after the handshake has completed on our side; aiokafka, busy writing its
    first request, sees only the connection close. A read on a fresh connection gets the
    alert as an SSLError. A broker that accepts us sends nothing unasked: the read waits
    out TLS_ALERT_WAIT_S and this answers None."""
    try:
        async with asyncio.timeout(TLS_ALERT_WAIT_S):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                await reader.read(1)
            finally:
                writer.close()
    except ssl.SSLError as exc:
        return exc
    except (OSError, TimeoutError):
        return None
    return None


_LOGIN_REFUSED = (kafka_errors.SaslAuthenticationFailed, kafka_errors.AuthenticationFailedError)
# A TLS session cut short says nothing about trust: the broker may be restarting.
_TLS_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def judge(exc: BaseException, mechanism: SaslMechanism) -> LoginRefused | None:
    """The refusal a failed connection attempt stands for, or None when it may pass (the
    token endpoint or the broker down, a connection closed, a TLS session cut short)."""
    name = type(exc).__name__
    if isinstance(exc, TokenRefused):
        return LoginRefused("oauth_token_refused", str(exc))
    if isinstance(exc, _LOGIN_REFUSED):
        if mechanism is SaslMechanism.OAUTHBEARER:
            advice = (
                "the broker did not accept the token the endpoint gave us: compare its "
                "audience, issuer and scope with the listener's sasl.oauthbearer.expected."
                "audience/issuer and scope claim settings; OCR_KAFKA_OAUTH_SCOPE (the scope "
                "that brings the broker's audience), OCR_KAFKA_OAUTH_CLIENT_ID and "
                "OCR_KAFKA_OAUTH_TOKEN_URL (the issuer) decide them"
            )
        else:
            advice = (
                f"check OCR_KAFKA_SASL_USERNAME and OCR_KAFKA_SASL_PASSWORD, and that the "
                f"broker knows this user for {mechanism.value} (OCR_KAFKA_SASL_MECHANISM)"
            )
        return LoginRefused("authentication", f"Kafka refused our login ({name}: {exc}); {advice}")
    if isinstance(exc, kafka_errors.UnsupportedSaslMechanismError):
        return LoginRefused(
            "sasl_mechanism", f"{exc}; set OCR_KAFKA_SASL_MECHANISM to one the listener enables"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return LoginRefused(
            "tls_untrusted",
            f"the broker's TLS certificate is not trusted ({exc.verify_message}): set "
            "OCR_KAFKA_SSL_CAFILE to the PEM bundle of the CA that signed it, and connect by "
            "a name the certificate holds (OCR_KAFKA_BOOTSTRAP)",
        )
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _TLS_CUT):
        reason = getattr(exc, "reason", None) or exc
        return LoginRefused(
            "tls_handshake",
            f"the TLS handshake with the broker failed ({reason}): if the "
            "listener wants a client certificate, set OCR_KAFKA_SSL_CERTFILE (and _KEYFILE) to one "
            "its CA signed; if it is not a TLS listener, check OCR_KAFKA_SECURITY_PROTOCOL",
        )
    return None
