"""A second single-node Kafka (KRaft) with the listeners our users secure their estates
with, for the Kafka security tests (tests/integration/test_kafka_security.py).

Same jars, JVM sizing and base configuration as the local stack (deploy/local/stack.sh and
deploy/local/kafka/server.properties.template, rendered and then overridden here), on free
127.0.0.1 ports, in a test folder, stopped by its PID. Listeners, all advertised on
127.0.0.1:

- INTERNAL (PLAINTEXT): controller traffic's neighbour, inter-broker, the tests' set-up
  (topic creation);
- SECURE (SASL_SSL): PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and, with an identity provider,
  OAUTHBEARER;
- MTLS (SSL, `ssl.client.auth=required`): the principal is the client certificate's DN;
- SCRAM (SASL_PLAINTEXT): SCRAM-SHA-512 only;
- REAUTH (SASL_PLAINTEXT, with an identity provider): OAUTHBEARER with
  `connections.max.reauth.ms=15000`, so the broker closes the connection of a client that
  does not re-authenticate (KIP-368) every 15 s.

Each SASL mechanism has its own users (`ocr-plain`, `ocr-scram256`, ... for the consumer;
`client-plain`, ... for the foreign clients), so a client that silently used another
mechanism than it was told fails to log in instead of passing. SCRAM credentials are
written at format time (`kafka-storage format --add-scram`), PLAIN ones sit in the
listener's JAAS configuration. OAUTHBEARER tokens are validated by Kafka's own
OAuthBearerValidatorCallbackHandler against the provider's JWKS, with audience and issuer
checked. The broker's certificate comes from tests/support/tls.py (PEM key and trust
stores); `kafka.network.Processor` logs at DEBUG, so a test can see the broker closing
expired sessions ("Disconnecting expired channel").
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.java import KAFKA_LIBS
from tests.support.started import wait_until_ready
from tests.support.tls import TlsFiles

REPO = Path(__file__).resolve().parents[2]
KAFKA_DIR = REPO / "deploy" / "local" / "kafka"
JAVA_OPTS = os.environ.get("OCR_KAFKA_JAVA_OPTS", "-Xms128m -Xmx512m").split()
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
REAUTH_MS = 15_000
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Per mechanism, the suffix of its users' names.
USER_SUFFIX = {"PLAIN": "plain", "SCRAM-SHA-256": "scram256", "SCRAM-SHA-512": "scram512"}
VALIDATOR = "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
JWT_VALIDATOR = "org.apache.kafka.common.security.oauthbearer.BrokerJwtValidator"
OAUTH_LOGIN_MODULE = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
PLAIN_LOGIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"


class SecureKafkaUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class OAuthIssuer:
    """What the broker checks OAUTHBEARER tokens against."""

    jwks_url: str
    issuer: str
    audience: str
    allowed_urls: str  # -Dorg.apache.kafka.sasl.oauthbearer.allowed.urls (Kafka 4)


@dataclass(frozen=True)
class SecureBroker:
    internal: str  # host:port of each listener
    sasl_ssl: str
    mtls: str
    scram: str
    reauth: str | None  # None without an identity provider
    tls: TlsFiles
    log: Path
    pid: int
    passwords: dict[str, str] = field(repr=False)  # user -> password

    @staticmethod
    def user(who: str, mechanism: str) -> str:
        """`who` is "ocr" (the consumer) or "client" (the foreign clients)."""
        return f"{who}-{USER_SUFFIX[mechanism]}"

    def password(self, who: str, mechanism: str) -> str:
        return self.passwords[self.user(who, mechanism)]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _jaas(module: str, **options: str) -> str:
    rendered = "".join(f' {name}="{value}"' for name, value in options.items())
    return f"{module} required{rendered};"


def _properties(
    folder: Path, ports: dict[str, int], tls: TlsFiles, passwords: dict[str, str],
    oauth: OAuthIssuer | None,
) -> str:
    base = (KAFKA_DIR / "server.properties.template").read_text()
    for marker, value in (
        ("@HOST@", "127.0.0.1"), ("@BROKER_PORT@", str(ports["INTERNAL"])),
        ("@CONTROLLER_PORT@", str(ports["CONTROLLER"])), ("@DATA_DIR@", str(folder / "data")),
    ):
        base = base.replace(marker, value)
    protocols = {"CONTROLLER": "PLAINTEXT", "INTERNAL": "PLAINTEXT", "SECURE": "SASL_SSL",
                 "MTLS": "SSL", "SCRAM": "SASL_PLAINTEXT"}
    if oauth is not None:
        protocols["REAUTH"] = "SASL_PLAINTEXT"
    listeners = ",".join(f"{name}://127.0.0.1:{ports[name]}" for name in protocols)
    advertised = ",".join(
        f"{name}://127.0.0.1:{ports[name]}" for name in protocols if name != "CONTROLLER"
    )
    plain_users = {f"user_{user}": password for user, password in passwords.items()
                   if user.endswith("-plain")}
    secure_mechanisms = [*MECHANISMS, *(["OAUTHBEARER"] if oauth is not None else [])]
    lines = [
        "# --- the security tests' overrides (tests/support/secure_kafka.py) ---",
        f"listeners={listeners}",
        f"advertised.listeners={advertised}",
        "listener.security.protocol.map="
        + ",".join(f"{name}:{protocol}" for name, protocol in protocols.items()),
        "inter.broker.listener.name=INTERNAL",
        # TLS for SECURE and MTLS: PEM stores straight from the test CA's files.
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={folder / 'server-keystore.pem'}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={tls.ca}",
        "listener.name.mtls.ssl.client.auth=required",
        f"listener.name.secure.sasl.enabled.mechanisms={','.join(secure_mechanisms)}",
        f"listener.name.secure.plain.sasl.jaas.config={_jaas(PLAIN_LOGIN_MODULE, **plain_users)}",
        f"listener.name.secure.scram-sha-256.sasl.jaas.config={_jaas(SCRAM_LOGIN_MODULE)}",
        f"listener.name.secure.scram-sha-512.sasl.jaas.config={_jaas(SCRAM_LOGIN_MODULE)}",
        "listener.name.scram.sasl.enabled.mechanisms=SCRAM-SHA-512",
        f"listener.name.scram.scram-sha-512.sasl.jaas.config={_jaas(SCRAM_LOGIN_MODULE)}",
    ]
    if oauth is not None:
        # Kafka 4.1.1's validator handler instantiates sasl.oauthbearer.jwt.validator.class,
        # whose default (DefaultJwtValidator, built without a key resolver) delegates to
        # ClientJwtValidator: no signature, audience or issuer check at all, JWKS URL or
        # not. Named here (read without listener prefix), BrokerJwtValidator checks all
        # three; test_kafka_security.py's test_the_broker_refuses_* prove it.
        lines.append(f"sasl.oauthbearer.jwt.validator.class={JWT_VALIDATOR}")
        for listener in ("secure", "reauth"):
            prefix = f"listener.name.{listener}.oauthbearer"
            lines += [
                f"{prefix}.sasl.jaas.config={_jaas(OAUTH_LOGIN_MODULE)}",
                f"{prefix}.sasl.server.callback.handler.class={VALIDATOR}",
                f"{prefix}.sasl.oauthbearer.jwks.endpoint.url={oauth.jwks_url}",
                f"{prefix}.sasl.oauthbearer.expected.audience={oauth.audience}",
                f"{prefix}.sasl.oauthbearer.expected.issuer={oauth.issuer}",
            ]
        lines += [
            "listener.name.reauth.sasl.enabled.mechanisms=OAUTHBEARER",
            f"listener.name.reauth.oauthbearer.connections.max.reauth.ms={REAUTH_MS}",
        ]
    return base + "\n" + "\n".join(lines) + "\n"


def _log4j_config(folder: Path) -> Path:
    """The local stack's logging, plus the network processor's DEBUG lines (one per
    connection closed, expired sessions included)."""
    path = folder / "log4j2.properties"
    path.write_text(
        (KAFKA_DIR / "log4j2.properties").read_text()
        + "\nlogger.processor.name = kafka.network.Processor\nlogger.processor.level = DEBUG\n"
    )
    return path


def _jvm(folder: Path, oauth: OAuthIssuer | None) -> list[str]:
    command = [
        "java", *JAVA_OPTS, "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={_log4j_config(folder)}",
    ]
    if oauth is not None:
        # Kafka 4 fetches JWKS and tokens only from URLs listed here.
        command.append(f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={oauth.allowed_urls}")
    return [*command, "-cp", f"{KAFKA_LIBS}/*"]


def _cluster_id() -> str:
    # What `kafka-storage.sh random-uuid` prints; never starting with '-' (an option).
    while True:
        value = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not value.startswith("-"):
            return value


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # this PID only
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(30)


@contextmanager
def running_secure_broker(
    folder: Path, tls: TlsFiles, oauth: OAuthIssuer | None = None
) -> Iterator[SecureBroker]:
    """Format, start and (on exit) stop the secured broker; yields once every listener is
    open and the internal one answers metadata requests."""
    if not (KAFKA_LIBS / ".complete").exists():
        raise SecureKafkaUnavailable(f"no Kafka jars in {KAFKA_LIBS} (`make deps` fetches them)")
    folder.mkdir(parents=True, exist_ok=True)
    names = ["CONTROLLER", "INTERNAL", "SECURE", "MTLS", "SCRAM"]
    if oauth is not None:
        names.append("REAUTH")
    ports = {name: free_port() for name in names}
    passwords = {
        f"{who}-{suffix}": secrets.token_hex(12)
        for who in ("ocr", "client") for suffix in USER_SUFFIX.values()
    }
    # Kafka's PEM key store: the private key (PKCS#8, unencrypted) and the certificate.
    (folder / "server-keystore.pem").write_bytes(
        tls.server_key.read_bytes() + tls.server_cert.read_bytes()
    )
    properties = folder / "server.properties"
    properties.write_text(_properties(folder, ports, tls, passwords, oauth))
    log_path = folder / "kafka.log"
    jvm = _jvm(folder, oauth)
    scram = [
        arg
        for user, password in passwords.items()
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
        if user.endswith(USER_SUFFIX[mechanism])
        for arg in ("--add-scram", f"{mechanism}=[name={user},password={password}]")
    ]
    with log_path.open("ab") as log:
        formatted = subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "--cluster-id", _cluster_id(),
             "--config", str(properties), *scram],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=120,
            check=False,
        )
    if formatted.returncode != 0:
        raise SecureKafkaUnavailable(
            f"formatting the secured broker's storage failed:\n{log_path.read_text()[-3000:]}"
        )
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(properties)], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )
    broker = SecureBroker(
        internal=f"127.0.0.1:{ports['INTERNAL']}", sasl_ssl=f"127.0.0.1:{ports['SECURE']}",
        mtls=f"127.0.0.1:{ports['MTLS']}", scram=f"127.0.0.1:{ports['SCRAM']}",
        reauth=f"127.0.0.1:{ports['REAUTH']}" if oauth is not None else None,
        tls=tls, log=log_path, pid=process.pid, passwords=passwords,
    )
    try:
        deadline = wait_until_ready(
            process, lambda: all(_port_open(port) for port in ports.values()),
            what="the secured broker", waiting_for=f"open {ports}", timeout_s=START_TIMEOUT_S,
            log=log_path, tail_chars=4000, error=SecureKafkaUnavailable,
        )
        # An open port is not a serving broker; a metadata round trip is.
        waited = subprocess.run(
            [sys.executable, "-m", "producer_tools.topics", "wait", "--wait",
             str(max(5, int(deadline - time.monotonic())))],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("OCR_KAFKA_")},
                 "OCR_KAFKA_BOOTSTRAP": broker.internal},
            cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
        )
        if waited.returncode != 0:
            raise SecureKafkaUnavailable(
                f"the secured broker does not answer metadata requests:\n{waited.stderr}\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        yield broker
    finally:
        _stop(process)
