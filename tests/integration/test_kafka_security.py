"""Kafka security on a real broker, with clients no one here wrote on the same listeners.

One secured Apache Kafka (tests/support/secure_kafka.py) and one Keycloak
(tests/support/keycloak.py) for the module. For each way in that README "Configuration"
claims (SASL_SSL with PLAIN, SCRAM-SHA-256 and -512; SASL_PLAINTEXT with SCRAM-SHA-512; SSL
with a client certificate; OAUTHBEARER over SASL_SSL and SASL_PLAINTEXT): a Java
kafka-clients producer configured as a Java service on that estate sends requests, the
real `ocr-consumer` process (CPU engine, OCR_KAFKA_* for that listener) completes them, and
a librdkafka (confluent-kafka) reader with that listener's settings reads the final progress
events and the page results.

Then what a user who mistyped a setting sees: `ocr-consumer` exits with status 5 (Kafka
refuses us, README "Exit codes") within REFUSAL_LIMIT_S, not after OCR_START_TIMEOUT_S
(120 s here, so retrying until the deadline shows as a failure), and its error names the
cause and the setting to fix.

Each SASL mechanism has users of its own (secure_kafka.py): a client that used another
mechanism than it was told fails to log in rather than passing.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.config import Settings
from producer_tools.topic_admin import ensure_topics
from schemas.progress import TaskStatus
from schemas.result import PageStatus
from schemas.topics import TopicNames
from tests.integration.test_interop import request_json
from tests.support.documents import make_png
from tests.support.keycloak import AUDIENCE, Keycloak, running_keycloak
from tests.support.secure_clients import (
    Access,
    ConsumerProcess,
    JavaProducer,
    Outcome,
    broker_lets_in,
    consumer_env,
    fetch_token,
    mtls_access,
    oauth_access,
    read_with_librdkafka,
    sasl_access,
    secret_file,
)
from tests.support.secure_kafka import (
    OAuthIssuer,
    SecureBroker,
    running_secure_broker,
)
from tests.support.tls import TlsFiles, make_tls_files

EXIT_KAFKA_REFUSED = 5
# The contract for a refused start: exit 5 within about this long (python and the settings
# take a few seconds of it on a 2-CPU VM; no engine is loaded before Kafka answers).
REFUSAL_LIMIT_S = 30.0
START_TIMEOUT_S = "120"  # OCR_START_TIMEOUT_S: far above REFUSAL_LIMIT_S
READ_TIMEOUT_S = 150.0


# --- the module's servers -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("kafka-tls"))


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Another CA and its client certificate: the broker trusts neither."""
    return make_tls_files(tmp_path_factory.mktemp("foreign-ca"))


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[Keycloak]:
    with running_keycloak(tmp_path_factory.mktemp("keycloak"), tls) as server:
        yield server


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles, keycloak: Keycloak
) -> Iterator[SecureBroker]:
    issuer = OAuthIssuer(
        jwks_url=keycloak.jwks_url, issuer=keycloak.issuer, audience=AUDIENCE,
        allowed_urls=keycloak.allowed_urls,
    )
    with running_secure_broker(tmp_path_factory.mktemp("secure-kafka"), tls, issuer) as server:
        yield server


@pytest.fixture
async def case_settings(
    stack: Settings, broker: SecureBroker, run_id: str, redis_prefix: str
) -> Settings:
    """This test's topics on the secured broker (made through its PLAINTEXT listener), its
    own group and Redis prefix on the stack's Redis."""
    settings = stack.with_topic_names(TopicNames().with_prefix(f"sec-{run_id}")).model_copy(
        update={"kafka_bootstrap": broker.internal, "group_id": f"sec-{run_id}",
                "redis_key_prefix": redis_prefix, "consumer_id": f"sec-{run_id}"}
    )
    await ensure_topics(settings, settings.topic_specs())
    return settings


def png_base64(folder: Path) -> str:
    return base64.b64encode(make_png(folder / "page.png").read_bytes()).decode()


async def serve_and_read(
    access: Access, settings: Settings, java_classpath: str, folder: Path,
    requests: list[tuple[int, str, str]],
) -> tuple[ConsumerProcess, Outcome]:
    """The consumer started, the Java producer's requests sent, the librdkafka reader's
    view once every task is done (or the consumer or the producer died); the consumer is
    still running when this returns, unless it exited by itself."""
    consumer = ConsumerProcess(
        consumer_env(settings, access.consumer, START_TIMEOUT_S), folder / "consumer.log"
    )
    producer = JavaProducer(java_classpath, access, settings.topic_requests, folder, requests)
    await consumer.start()
    try:
        await producer.start()
        outcome = await asyncio.to_thread(
            read_with_librdkafka, access.rdkafka, settings, [t for _, t, _ in requests],
            READ_TIMEOUT_S, lambda: consumer.returncode is not None or producer.failed(),
        )
        if consumer.returncode is not None:
            await producer.kill()
        else:
            await producer.wait(READ_TIMEOUT_S)  # raises with the Java client's output
    except BaseException:
        await producer.kill()
        await consumer.kill()
        raise
    return consumer, outcome


def assert_completed(outcome: Outcome, task_ids: list[str], consumer: ConsumerProcess) -> None:
    context = (f"librdkafka errors: {outcome.errors[-5:]}\n"
               f"consumer (exit {consumer.returncode}):\n{consumer.tail()}")
    assert {t: (e.status, e.pages_total) for t, e in outcome.finals.items()} == {
        t: (TaskStatus.COMPLETED, 1) for t in task_ids
    }, context
    assert {t: {p: r.status for p, r in pages.items()} for t, pages in outcome.pages.items()} \
        == {t: {1: PageStatus.OK} for t in task_ids}, context


async def two_requests_complete(
    access: Access, settings: Settings, java_classpath: str, folder: Path, prefix: str,
    producer_name: str,
) -> None:
    """Two one-page requests from the Java producer complete, the librdkafka reader sees
    them, and the consumer was still running and stops cleanly."""
    png = png_base64(folder)
    task_ids = [f"{prefix}-{n}" for n in range(2)]
    requests = [(0, t, request_json(t, producer_name, "none", png)) for t in task_ids]

    consumer, outcome = await serve_and_read(access, settings, java_classpath, folder, requests)
    still_running = consumer.returncode is None
    code = await consumer.stop()

    assert_completed(outcome, task_ids, consumer)
    assert still_running and code == 0, consumer.tail()


# --- it works: each way in, three clients -----------------------------------------------------

CASES = {
    # name: (protocol, mechanism or "mTLS", how the consumer gets its secret)
    "sasl_ssl-plain": ("SASL_SSL", "PLAIN", "file"),
    "sasl_ssl-scram-sha-256": ("SASL_SSL", "SCRAM-SHA-256", "env"),
    "sasl_ssl-scram-sha-512": ("SASL_SSL", "SCRAM-SHA-512", "dir"),
    "sasl_plaintext-scram-sha-512": ("SASL_PLAINTEXT", "SCRAM-SHA-512", "file"),
    "ssl-mtls": ("SSL", "mTLS", ""),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_java_producer_consumer_and_librdkafka_reader_on(
    case: str, broker: SecureBroker, tls: TlsFiles, case_settings: Settings,
    java_classpath: str, tmp_path: Path, run_id: str,
) -> None:
    protocol, mechanism, secret_via = CASES[case]
    if mechanism == "mTLS":
        access = mtls_access(broker, tls, tmp_path)
    else:
        access = sasl_access(broker, tls, protocol, mechanism, tmp_path / "secrets", secret_via)
    await two_requests_complete(
        access, case_settings, java_classpath, tmp_path, f"{case}-{run_id}", "java-secure"
    )


# --- OAUTHBEARER with Keycloak ------------------------------------------------------------------

async def test_oauthbearer_over_sasl_ssl_java_consumer_and_librdkafka(
    broker: SecureBroker, tls: TlsFiles, keycloak: Keycloak, case_settings: Settings,
    java_classpath: str, tmp_path: Path, run_id: str,
) -> None:
    access = oauth_access(broker, tls, keycloak, tmp_path / "secrets", reauth=False)
    await two_requests_complete(
        access, case_settings, java_classpath, tmp_path, f"oauth-{run_id}", "java-oauth"
    )


async def test_oauthbearer_without_reauthentication_survives_expired_sessions(
    broker: SecureBroker, tls: TlsFiles, keycloak: Keycloak, case_settings: Settings,
    java_classpath: str, tmp_path: Path, run_id: str,
) -> None:
    """On the listener with connections.max.reauth.ms=15000 the broker closes every
    connection of a client that does not re-authenticate (KIP-368; aiokafka does not) 15 s
    after its login. Requests spread over more than a minute (past the 60 s token's
    expiry, so the consumer must log in again with a fresh token) all complete, and the
    consumer never exits."""
    access = oauth_access(broker, tls, keycloak, tmp_path / "secrets", reauth=True)
    png = png_base64(tmp_path)
    task_ids = [f"reauth-{run_id}-{n}" for n in range(4)]
    pauses = [0, 20_000, 20_000, 20_000]
    requests = [(pause, t, request_json(t, "java-oauth", "none", png))
                for pause, t in zip(pauses, task_ids, strict=True)]
    began = time.monotonic()

    consumer, outcome = await serve_and_read(
        access, case_settings, java_classpath, tmp_path, requests
    )
    served_s = time.monotonic() - consumer.started
    still_running = consumer.returncode is None
    code = await consumer.stop()

    assert_completed(outcome, task_ids, consumer)
    assert still_running and code == 0, consumer.tail()
    assert time.monotonic() - began > 60 and served_s > 60, served_s
    # The broker did close the consumer's expired sessions, again and again: what this test
    # is about. (Without the 15 s limit it closes one, when the first token expires.)
    client_id = f"ocr-stream-{case_settings.consumer_id}"
    expired = [line for line in broker.log_text().splitlines()
               if "Disconnecting expired channel" in line and client_id in line]
    assert len(expired) >= 3, f"the broker closed {len(expired)} expired sessions of {client_id}"


@pytest.mark.parametrize("token_kind", ["valid", "without-audience", "forged-signature"])
async def test_the_broker_refuses_tokens_it_must_not_trust(
    token_kind: str, broker: SecureBroker, keycloak: Keycloak, tls: TlsFiles,
) -> None:
    """The rig's own check, on both OAUTHBEARER listeners: Kafka's validator checks the
    signature against Keycloak's keys and the audience, so the OAuth tests above pass only
    with tokens the broker has reason to trust (Kafka 4.1.1 does neither unless told to,
    see secure_kafka.py). A valid token, the control, is let in."""
    assert broker.reauth is not None
    token = await asyncio.to_thread(
        fetch_token, keycloak,
        keycloak.no_audience if token_kind == "without-audience" else keycloak.interop,
    )
    if token_kind == "forged-signature":  # the claims of a valid token, signed by no one
        header, claims, _ = token.split(".")
        token = f"{header}.{claims}." + base64.urlsafe_b64encode(os.urandom(256)).decode()
    logged_before = len(broker.log_text().splitlines())

    outcomes = {
        protocol: await asyncio.to_thread(broker_lets_in, bootstrap, protocol, tls, token)
        for bootstrap, protocol in ((broker.sasl_ssl, "SASL_SSL"),
                                    (broker.reauth, "SASL_PLAINTEXT"))
    }

    if token_kind == "valid":
        assert outcomes == {"SASL_SSL": [], "SASL_PLAINTEXT": []}
        return
    assert all(outcomes.values()), f"the broker let a {token_kind} token in: {outcomes}"
    why = {"without-audience": "aud", "forged-signature": "invalid signature"}[token_kind]
    refusals = [line for line in broker.log_text().splitlines()[logged_before:]
                if "Could not validate the access token" in line and why in line]
    assert len(refusals) >= 2, broker.log_text().splitlines()[logged_before:][-10:]


# --- what a user who mistyped a setting sees -----------------------------------------------------

async def refused_start(
    settings: Settings, security: dict[str, str], folder: Path
) -> tuple[int | None, float, ConsumerProcess]:
    """Start the consumer with `security`: its exit status (None: still running 10 s
    past the limit, then killed), how long it took, and the process for its output."""
    consumer = ConsumerProcess(
        consumer_env(settings, security, START_TIMEOUT_S), folder / "consumer.log"
    )
    await consumer.start()
    code = await consumer.wait(REFUSAL_LIMIT_S + 10)
    return code, time.monotonic() - consumer.started, consumer


def assert_refused(
    code: int | None, took: float, consumer: ConsumerProcess, *, names: list[str],
    cause: str | None,
) -> None:
    """Exit 5 in time, and the consumer's own error names `cause` (a word, any case) and
    one of the settings in `names`."""
    said = consumer.errors()
    context = f"exit {code} after {took:.1f} s; the consumer said:\n{said[-3000:]}"
    assert code == EXIT_KAFKA_REFUSED, context
    assert took <= REFUSAL_LIMIT_S, context
    assert cause is None or cause.lower() in said.lower(), context
    assert any(name in said for name in names), context


@pytest.mark.parametrize("protocol,mechanism", [
    ("SASL_SSL", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
])
async def test_a_wrong_sasl_password_is_exit_5_naming_it(
    protocol: str, mechanism: str, broker: SecureBroker, tls: TlsFiles,
    case_settings: Settings, tmp_path: Path,
) -> None:
    access = sasl_access(broker, tls, protocol, mechanism, tmp_path / "secrets", "file")
    wrong = secret_file(tmp_path / "secrets", "wrong-password", "not-the-password")
    security = access.consumer | {"OCR_KAFKA_SASL_PASSWORD_FILE": str(wrong)}

    code, took, consumer = await refused_start(case_settings, security, tmp_path)

    assert_refused(code, took, consumer, cause="authentication",
                   names=["OCR_KAFKA_SASL_PASSWORD", "OCR_KAFKA_SASL_USERNAME"])


@pytest.mark.parametrize("client_cert", ["foreign-ca", "none"])
async def test_a_client_certificate_the_broker_does_not_accept_is_exit_5(
    client_cert: str, broker: SecureBroker, tls: TlsFiles, foreign_ca: TlsFiles,
    case_settings: Settings, tmp_path: Path,
) -> None:
    """mTLS with a certificate another CA signed, or with none: the broker ends the
    handshake; the consumer must say which certificate to fix, not retry for two minutes."""
    security = mtls_access(broker, tls, tmp_path).consumer
    if client_cert == "foreign-ca":
        security |= {"OCR_KAFKA_SSL_CERTFILE": str(foreign_ca.client_cert),
                     "OCR_KAFKA_SSL_KEYFILE": str(foreign_ca.client_key)}
    else:
        del security["OCR_KAFKA_SSL_CERTFILE"], security["OCR_KAFKA_SSL_KEYFILE"]

    code, took, consumer = await refused_start(case_settings, security, tmp_path)

    assert_refused(code, took, consumer, cause="certificate",
                   names=["OCR_KAFKA_SSL_CERTFILE"])


@pytest.mark.parametrize("cafile", ["unset", "foreign-ca"])
async def test_a_broker_certificate_that_does_not_verify_is_exit_5_naming_the_cafile(
    cafile: str, broker: SecureBroker, tls: TlsFiles, foreign_ca: TlsFiles,
    case_settings: Settings, tmp_path: Path,
) -> None:
    """Our test CA signed the broker's certificate: with the system's CAs (no
    OCR_KAFKA_SSL_CAFILE) or another CA, verification must fail, never silently pass."""
    access = sasl_access(broker, tls, "SASL_SSL", "SCRAM-SHA-256", tmp_path / "secrets")
    security = dict(access.consumer)
    if cafile == "unset":
        del security["OCR_KAFKA_SSL_CAFILE"]
    else:
        security["OCR_KAFKA_SSL_CAFILE"] = str(foreign_ca.ca)

    code, took, consumer = await refused_start(case_settings, security, tmp_path)

    assert_refused(code, took, consumer, cause="certificate", names=["OCR_KAFKA_SSL_CAFILE"])


async def test_a_wrong_oauth_client_secret_is_exit_5_naming_the_client(
    broker: SecureBroker, tls: TlsFiles, keycloak: Keycloak, case_settings: Settings,
    tmp_path: Path,
) -> None:
    access = oauth_access(broker, tls, keycloak, tmp_path / "secrets", reauth=False)
    wrong = secret_file(tmp_path / "secrets", "wrong-secret", "not-the-secret")
    security = access.consumer | {"OCR_KAFKA_OAUTH_CLIENT_SECRET_FILE": str(wrong)}

    code, took, consumer = await refused_start(case_settings, security, tmp_path)

    assert_refused(code, took, consumer, cause=None,
                   names=["OCR_KAFKA_OAUTH_CLIENT_SECRET", "OCR_KAFKA_OAUTH_CLIENT_ID"])


async def test_a_token_the_broker_refuses_is_exit_5_naming_the_oauth_settings(
    broker: SecureBroker, tls: TlsFiles, keycloak: Keycloak, case_settings: Settings,
    tmp_path: Path,
) -> None:
    """Keycloak issues the token, the broker refuses it: without OCR_KAFKA_OAUTH_SCOPE the
    token lacks the broker's audience (keycloak-realm.json). The broker only answers
    invalid_token; the consumer must still stop and point at the OAuth settings."""
    access = oauth_access(broker, tls, keycloak, tmp_path / "secrets", reauth=False)
    security = {k: v for k, v in access.consumer.items() if k != "OCR_KAFKA_OAUTH_SCOPE"}

    code, took, consumer = await refused_start(case_settings, security, tmp_path)

    assert_refused(code, took, consumer, cause="token",
                   names=["OCR_KAFKA_OAUTH_SCOPE", "OCR_KAFKA_OAUTH_TOKEN_URL"])
