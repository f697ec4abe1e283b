"""Fixtures for tests against the real local stack (Kafka + Redis).

`stack` makes sure both answer at OCR_KAFKA_BOOTSTRAP / OCR_REDIS_URL: a stack that is
already running (`make up`) is used as is and left running; otherwise
`deploy/local/stack.sh up` starts one without the background consumer, and the last test
session using it stops it. Each test then gets its own topics, consumer group and Redis key
prefix, so tests never see each other's records or state and need no ordering.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import subprocess
import sys
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from consumer.config import Settings
from consumer.state import redis_client as make_redis_client
from producer_tools.topic_admin import delete_topics, ensure_topics, wait_for_broker
from schemas.topics import TopicNames
from tests.support import java as java_support

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack.sh"
# Cold start includes the Maven fetch of the Kafka jars (about 10 s on a fast link).
STACK_UP_TIMEOUT_S = 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _kafka_port_open(settings: Settings) -> bool:
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _redis_answers(settings: Settings) -> bool:
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    client = redis.Redis.from_url(
        settings.redis_url, password=password, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    try:
        return bool(client.ping())
    except (RedisError, OSError):
        return False
    finally:
        client.close()


def _stack_script(command: str) -> None:
    env = {**os.environ, "OCR_STACK_CONSUMER": "0", "OCR_PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(STACK_SCRIPT), command],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=STACK_UP_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"stack.sh {command} failed (exit {done.returncode}):\n"
            + (done.stdout + done.stderr)[-4000:]
        )


# Several pytest sessions may share one working tree (and so one .run/): each registers
# here, and a stack that a test session started is stopped by the last session to leave,
# never under another one's feet. A stack started by `make up` is never stopped by tests.
SESSIONS = Path(os.environ.get("OCR_RUN_DIR", REPO / ".run")) / "test-sessions"
STARTED_BY_TESTS = SESSIONS / "started"


@contextmanager
def _sessions_locked() -> Iterator[None]:
    SESSIONS.mkdir(parents=True, exist_ok=True)
    with (SESSIONS / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _live_sessions() -> list[int]:
    live = []
    for entry in SESSIONS.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            os.kill(int(entry.name), 0)
            live.append(int(entry.name))
        except ProcessLookupError:
            entry.unlink(missing_ok=True)  # a session that crashed without leaving
        except PermissionError:
            live.append(int(entry.name))
    return live


def _join_stack(settings: Settings) -> None:
    with _sessions_locked():
        (SESSIONS / str(os.getpid())).touch()
        if not (_kafka_port_open(settings) and _redis_answers(settings)):
            _stack_script("up")
            STARTED_BY_TESTS.touch()


def _leave_stack() -> None:
    with _sessions_locked():
        (SESSIONS / str(os.getpid())).unlink(missing_ok=True)
        if STARTED_BY_TESTS.exists() and not _live_sessions():
            _stack_script("down")
            STARTED_BY_TESTS.unlink(missing_ok=True)


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[Settings]:
    """Settings (from the OCR_* environment) of a running Kafka + Redis."""
    settings = Settings()
    await asyncio.to_thread(_join_stack, settings)
    try:
        # Also covers a broker that was started a moment ago and is still loading.
        await wait_for_broker(settings, timeout_s=60)
        yield settings
    finally:
        await asyncio.to_thread(_leave_stack)


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def topics(stack: Settings, run_id: str) -> AsyncIterator[Settings]:
    """`stack` with its own five topics (`t-<id>.ocr.requests`, ...), deleted afterwards.

    Partitions stay at the settings default (6), so tests of partition spreading and
    `task_partition` see what production sees.
    """
    base = f"t-{run_id}"
    settings = stack.with_topic_names(TopicNames().with_prefix(base))
    specs = settings.topic_specs()
    await ensure_topics(settings, specs)
    try:
        yield settings
    finally:
        try:
            await delete_topics(settings, [spec.name for spec in specs])
        except Exception as exc:  # cleanup must not hide the test's own outcome
            warnings.warn(f"could not delete test topics {base}.*: {exc}", stacklevel=1)


@pytest.fixture
async def redis_prefix(stack: Settings, run_id: str) -> AsyncIterator[str]:
    """A Redis key prefix of this test only; its keys are deleted afterwards."""
    prefix = f"t-{run_id}:"
    yield prefix
    client = make_redis_client(stack)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    except (RedisError, OSError) as exc:
        warnings.warn(f"could not delete Redis keys {prefix}*: {exc}", stacklevel=1)
    finally:
        await client.aclose()


@pytest.fixture
def stack_settings(topics: Settings, redis_prefix: str, run_id: str) -> Settings:
    """What a consumer under test needs: own topics, consumer group and Redis prefix."""
    return topics.model_copy(
        update={
            "group_id": f"t-{run_id}",
            "redis_key_prefix": redis_prefix,
            "consumer_id": f"test-{run_id}",
        }
    )


@pytest.fixture
async def redis_client(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    """A real redis.asyncio client on the stack's Redis (decoded responses)."""
    client = make_redis_client(stack)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def java_classpath() -> str:
    """The Java interop clients (tests/support/java), compiled once per session."""
    try:
        return java_support.classpath()
    except java_support.JavaUnavailable as exc:
        pytest.fail(f"the Java interop clients could not be built: {exc}")
