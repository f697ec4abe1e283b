"""The clients of the Kafka security tests (tests/integration/test_kafka_security.py), each
configured for one way into the secured broker (tests/support/secure_kafka.py) as its users
spell it: a Java service's client.properties (SecureProducer), librdkafka's configuration
(confluent-kafka) and ocr-consumer's OCR_KAFKA_* settings, secrets in files where a case
says so. The consumer and the Java producer run as processes of the test, stopped by their
PIDs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer as RdKafkaConsumer
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from consumer.config import Settings
from schemas.progress import ProgressEvent
from schemas.result import PageResult
from tests.support import java as java_support
from tests.support.keycloak import KAFKA_SCOPE, Keycloak, OAuthClient
from tests.support.secure_kafka import (
    OAUTH_LOGIN_MODULE,
    PLAIN_LOGIN_MODULE,
    SCRAM_LOGIN_MODULE,
    SecureBroker,
)
from tests.support.tls import TlsFiles

REPO = Path(__file__).resolve().parents[2]
CONSUMER_BIN = Path(sys.executable).parent / "ocr-consumer"
OAUTH_LOGIN_HANDLER = (
    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler"
)

@dataclass(frozen=True)
class Access:
    java: dict[str, str]  # Java client properties (a service's client.properties)
    rdkafka: dict[str, Any]  # librdkafka configuration
    consumer: dict[str, str]  # ocr-consumer's OCR_KAFKA_* (and secret files)
    jvm_args: tuple[str, ...] = ()


def secret_file(folder: Path, name: str, value: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(value + "\n")  # `echo secret > file` writes the newline too
    path.chmod(0o600)
    return path


def sasl_access(
    broker: SecureBroker, tls: TlsFiles, protocol: str, mechanism: str, folder: Path,
    secret_via: str = "env",
) -> Access:
    """`secret_via`: how ocr-consumer gets its password: "env" (OCR_KAFKA_SASL_PASSWORD),
    "file" (OCR_KAFKA_SASL_PASSWORD_FILE) or "dir" (OCR_SECRETS_DIR, user name too)."""
    bootstrap = broker.sasl_ssl if protocol == "SASL_SSL" else broker.scram
    client_user, client_password = (broker.user("client", mechanism),
                                    broker.password("client", mechanism))
    module = PLAIN_LOGIN_MODULE if mechanism == "PLAIN" else SCRAM_LOGIN_MODULE
    java = {
        "bootstrap.servers": bootstrap, "security.protocol": protocol,
        "sasl.mechanism": mechanism,
        "sasl.jaas.config":
            f'{module} required username="{client_user}" password="{client_password}";',
    }
    rdkafka: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "security.protocol": protocol,
        "sasl.mechanism": mechanism, "sasl.username": client_user,
        "sasl.password": client_password,
    }
    consumer = {
        "OCR_KAFKA_BOOTSTRAP": bootstrap, "OCR_KAFKA_SECURITY_PROTOCOL": protocol,
        "OCR_KAFKA_SASL_MECHANISM": mechanism,
    }
    user, password = broker.user("ocr", mechanism), broker.password("ocr", mechanism)
    if secret_via == "env":
        consumer |= {"OCR_KAFKA_SASL_USERNAME": user, "OCR_KAFKA_SASL_PASSWORD": password}
    elif secret_via == "file":
        consumer |= {
            "OCR_KAFKA_SASL_USERNAME": user,
            "OCR_KAFKA_SASL_PASSWORD_FILE": str(secret_file(folder, "kafka-password", password)),
        }
    else:  # a Kubernetes Secret volume: files named like the variables
        secret_file(folder, "OCR_KAFKA_SASL_USERNAME", user)
        secret_file(folder, "OCR_KAFKA_SASL_PASSWORD", password)
        consumer["OCR_SECRETS_DIR"] = str(folder)
    if protocol == "SASL_SSL":
        java |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": str(tls.ca)}
        rdkafka["ssl.ca.location"] = str(tls.ca)
        consumer["OCR_KAFKA_SSL_CAFILE"] = str(tls.ca)
    return Access(java, rdkafka, consumer)


def mtls_access(broker: SecureBroker, tls: TlsFiles, folder: Path) -> Access:
    folder.mkdir(parents=True, exist_ok=True)
    keystore = folder / "client-keystore.pem"  # Kafka's PEM key store: key and certificate
    keystore.write_bytes(tls.client_key.read_bytes() + tls.client_cert.read_bytes())
    return Access(
        java={
            "bootstrap.servers": broker.mtls, "security.protocol": "SSL",
            "ssl.truststore.type": "PEM", "ssl.truststore.location": str(tls.ca),
            "ssl.keystore.type": "PEM", "ssl.keystore.location": str(keystore),
        },
        rdkafka={
            "bootstrap.servers": broker.mtls, "security.protocol": "SSL",
            "ssl.ca.location": str(tls.ca), "ssl.certificate.location": str(tls.client_cert),
            "ssl.key.location": str(tls.client_key),
        },
        consumer={
            "OCR_KAFKA_BOOTSTRAP": broker.mtls, "OCR_KAFKA_SECURITY_PROTOCOL": "SSL",
            "OCR_KAFKA_SSL_CAFILE": str(tls.ca), "OCR_KAFKA_SSL_CERTFILE": str(tls.client_cert),
            "OCR_KAFKA_SSL_KEYFILE": str(tls.client_key),
        },
    )


def java_oauth(keycloak: Keycloak, client: OAuthClient) -> dict[str, str]:
    """Kafka's own OAuth login (KIP-768): client credentials in the JAAS configuration."""
    return {
        "sasl.mechanism": "OAUTHBEARER",
        "sasl.login.callback.handler.class": OAUTH_LOGIN_HANDLER,
        "sasl.oauthbearer.token.endpoint.url": keycloak.token_url(),
        "sasl.jaas.config": f'{OAUTH_LOGIN_MODULE} required clientId="{client.client_id}" '
                            f'clientSecret="{client.secret}";',
    }


def oauth_access(
    broker: SecureBroker, tls: TlsFiles, keycloak: Keycloak, folder: Path, *, reauth: bool
) -> Access:
    """SASL_SSL with the token endpoint on https (its own CA file setting), the
    secret in a file, a scope and extensions; or, on the 15 s re-authentication listener,
    SASL_PLAINTEXT with the endpoint on http and the secret in a variable."""
    bootstrap = broker.reauth if reauth else broker.sasl_ssl
    assert bootstrap is not None
    protocol = "SASL_PLAINTEXT" if reauth else "SASL_SSL"
    java = {"bootstrap.servers": bootstrap, "security.protocol": protocol,
            **java_oauth(keycloak, keycloak.interop)}
    rdkafka: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "security.protocol": protocol,
        "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": keycloak.interop.client_id,
        "sasl.oauthbearer.client.secret": keycloak.interop.secret,
        "sasl.oauthbearer.token.endpoint.url": keycloak.token_url(),
    }
    consumer = {
        "OCR_KAFKA_BOOTSTRAP": bootstrap, "OCR_KAFKA_SECURITY_PROTOCOL": protocol,
        "OCR_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "OCR_KAFKA_OAUTH_CLIENT_ID": keycloak.consumer.client_id,
        # Without this scope Keycloak leaves the broker's audience out (keycloak-realm.json).
        "OCR_KAFKA_OAUTH_SCOPE": KAFKA_SCOPE,
    }
    if reauth:
        consumer |= {
            "OCR_KAFKA_OAUTH_TOKEN_URL": keycloak.token_url(),
            "OCR_KAFKA_OAUTH_CLIENT_SECRET": keycloak.consumer.secret,
        }
    else:
        java |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": str(tls.ca)}
        rdkafka["ssl.ca.location"] = str(tls.ca)
        secret = secret_file(folder, "oauth-client-secret", keycloak.consumer.secret)
        consumer |= {
            "OCR_KAFKA_SSL_CAFILE": str(tls.ca),
            "OCR_KAFKA_OAUTH_TOKEN_URL": keycloak.token_url(https=True),
            "OCR_KAFKA_OAUTH_CAFILE": str(tls.ca),
            "OCR_KAFKA_OAUTH_CLIENT_SECRET_FILE": str(secret),
            # What Confluent Cloud wants; Kafka's validator accepts any.
            "OCR_KAFKA_OAUTH_EXTENSIONS": "logicalCluster=lkc-test,"
                                                    "identityPoolId=pool-test",
        }
    return Access(
        java, rdkafka, consumer,
        jvm_args=(f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={keycloak.allowed_urls}",),
    )


def consumer_env(
    settings: Settings, security: dict[str, str], start_timeout_s: str
) -> dict[str, str]:
    """The real process's environment: nothing OCR_* inherited, this test's topics, group
    and Redis prefix, the CPU engine, JSON logs, and `security` for the listener."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OCR_")}
    env |= {
        "OCR_REDIS_URL": settings.redis_url, "OCR_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "OCR_TOPIC_REQUESTS": settings.topic_requests,
        "OCR_TOPIC_RESULTS": settings.topic_results,
        "OCR_TOPIC_PROGRESS": settings.topic_progress,
        "OCR_TOPIC_TIMING": settings.topic_timing, "OCR_TOPIC_DLQ": settings.topic_dlq,
        "OCR_GROUP_ID": settings.group_id, "OCR_CONSUMER_ID": str(settings.consumer_id),
        "OCR_ENGINE": "rapidocr", "OCR_METRICS_PORT": "0", "OCR_LOG_FORMAT": "json",
        "OCR_START_TIMEOUT_S": start_timeout_s, "OCR_COMMIT_INTERVAL_S": "0.2",
        **security,
    }
    return env


class ConsumerProcess:
    """`ocr-consumer` (the console script) as a process of this test, stopped by its PID."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(CONSUMER_BIN), env=self.env, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT,
            )
        self.started = time.monotonic()

    @property
    def returncode(self) -> int | None:
        assert self.process is not None
        return self.process.returncode

    async def wait(self, timeout: float) -> int | None:
        """The exit status within `timeout` seconds, else None (the process is killed)."""
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            await self.kill()
            return None

    async def stop(self, grace: float = 60.0) -> int | None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait(grace)

    async def kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def errors(self) -> str:
        """What ocr-consumer itself said at error level (its JSON events, not aiokafka's
        own log lines, which quote the broker's error), and any plain line (a settings
        error is printed so): where a user looks for what to fix."""
        said = []
        for line in self.output().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                said.append(line)
                continue
            if not isinstance(event, dict):
                continue
            ours = str(event.get("logger", "")).startswith("consumer")
            if ours and str(event.get("level", "")).lower() in ("error", "critical"):
                said.append(json.dumps(event))
        return "\n".join(said)

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def write_properties(path: Path, properties: dict[str, str]) -> Path:
    # java.util.Properties reads backslashes as escapes; none of our values has one.
    path.write_text("".join(f"{name}={value}\n" for name, value in properties.items()))
    return path


class JavaProducer:
    """SecureProducer with `access.java` as its client.properties, sending (pause ms, task
    id, request JSON) each; a process of this test, killed by its PID if need be."""

    def __init__(self, java_classpath: str, access: Access, topic: str, folder: Path,
                 requests: list[tuple[int, str, str]]) -> None:
        properties = write_properties(folder / "client.properties", access.java)
        self.command = java_support.java_command(
            java_classpath, "SecureProducer", topic, jvm_args=access.jvm_args
        )
        self.stdin = "".join(f"{properties}\t{pause}\t{task}\t{value}\n"
                             for pause, task, value in requests).encode()
        self.process: asyncio.subprocess.Process | None = None
        self.sent: asyncio.Task[tuple[bytes, bytes]] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.sent = asyncio.create_task(self.process.communicate(self.stdin))

    def failed(self) -> bool:
        return self.process is not None and self.process.returncode not in (None, 0)

    async def wait(self, timeout: float) -> str:
        """Its output once it has sent everything; AssertionError if it failed."""
        assert self.process is not None and self.sent is not None
        try:
            out, err = await asyncio.wait_for(asyncio.shield(self.sent), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"the Java producer did not finish within {timeout:.0f} s"
            ) from None
        assert self.process.returncode == 0, (
            f"the Java producer exited {self.process.returncode}:\n"
            + (out + err).decode(errors="replace")[-4000:]
        )
        return out.decode()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
        if self.sent is not None:
            await asyncio.gather(self.sent, return_exceptions=True)


@dataclass
class Outcome:
    finals: dict[str, ProgressEvent]
    pages: dict[str, dict[int, PageResult]]
    errors: list[str]


def read_with_librdkafka(
    conf: dict[str, Any], settings: Settings, task_ids: list[str], timeout: float,
    give_up: Callable[[], bool],
) -> Outcome:
    """A librdkafka group member reading progress and results from the start until every
    task has its final event and its pages (or `timeout`, or `give_up()`)."""
    errors: list[str] = []
    reader = RdKafkaConsumer({
        **conf, "group.id": f"{settings.group_id}-librdkafka", "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "error_cb": lambda error: errors.append(str(error)),
    })
    outcome = Outcome({}, {t: {} for t in task_ids}, errors)

    def done() -> bool:
        return all(
            t in outcome.finals and len(outcome.pages[t]) >= (outcome.finals[t].pages_total or 0)
            for t in task_ids
        )

    try:
        reader.subscribe([settings.topic_progress, settings.topic_results])
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline and not give_up():
            message = reader.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                errors.append(str(message.error()))
                continue
            value = message.value()
            if value is None:
                continue
            if message.topic() == settings.topic_progress:
                event = ProgressEvent.model_validate_json(value)
                if event.task_id in outcome.pages and event.status.is_final:
                    outcome.finals[event.task_id] = event
            else:
                result = PageResult.model_validate_json(value)
                if result.task_id in outcome.pages:
                    outcome.pages[result.task_id][result.page] = result
    finally:
        reader.close()
    return outcome


def fetch_token(keycloak: Keycloak, client: OAuthClient) -> str:
    """An access token by the client-credentials grant, as any OAuth client gets one."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials",
                                   "client_id": client.client_id,
                                   "client_secret": client.secret}).encode()
    with urllib.request.urlopen(keycloak.token_url(), form, timeout=30) as response:
        return str(json.load(response)["access_token"])


def broker_lets_in(bootstrap: str, protocol: str, tls: TlsFiles, token: str) -> list[str]:
    """librdkafka presenting `token` as is (oauth_cb): [] when the broker answers a metadata
    request, else what went wrong."""
    errors: list[str] = []
    admin = AdminClient({
        "bootstrap.servers": bootstrap, "security.protocol": protocol,
        "sasl.mechanism": "OAUTHBEARER", "ssl.ca.location": str(tls.ca),
        "oauth_cb": lambda _config: (token, time.time() + 50),
        "error_cb": lambda error: errors.append(str(error)),
    })
    deadline = time.monotonic() + 15
    while True:
        try:
            admin.list_topics(timeout=1)
            return []
        except KafkaException as exc:
            admin.poll(0.1)  # serves error_cb
            # librdkafka retries a refused login for ever; its first report is enough.
            if any("authentication" in error.lower() for error in errors) \
                    or time.monotonic() > deadline:
                return [*errors, str(exc)]
