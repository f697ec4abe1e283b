"""`ocr-consumer` at start: Kafka or Redis that cannot be reached within OCR_START_TIMEOUT_S
is exit status 4 and one error naming it and the setting to check (README, exit codes);
one that comes up within the deadline is waited for. Real processes: the consumer's entry
point, a closed port, a redis-server this test starts and stops (by its PID).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from consumer import __version__
from consumer.app import EXIT_ENGINE_DEAD, EXIT_SETTINGS, EXIT_UNREACHABLE, App
from consumer.config import Settings
from consumer.errors import EngineError
from tests.support.apps import running_app
from tests.support.engines import ScriptedEngine
from tests.support.kafka import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 3


def free_port() -> int:
    """A port nothing listens on (bound and released: closed, not filtered)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis(port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 20
    while True:
        try:
            if client.ping():
                client.close()
                return server
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or server.poll() is not None:
                stop(server)
                raise
            time.sleep(0.1)


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()  # this process only, by its PID
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[int]:
    """The port of a Redis that ran and was stopped: what a consumer meets after an outage."""
    port = free_port()
    stop(start_redis(port, tmp_path))
    yield port


def run_consumer(settings: Settings, **overrides: str) -> tuple[int, list[dict[str, object]]]:
    """`python -m consumer.app` with the test's settings and `overrides`: its exit status
    and its log events (JSON lines on stderr)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OCR_")}
    env.update({
        "OCR_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "OCR_REDIS_URL": settings.redis_url,
        "OCR_TOPIC_REQUESTS": settings.topic_requests, "OCR_GROUP_ID": settings.group_id,
        "OCR_START_TIMEOUT_S": str(DEADLINE_S), "OCR_METRICS_PORT": "0",
        "OCR_LOG_FORMAT": "json", "OCR_ENGINE": "rapidocr", **overrides,
    })
    done = subprocess.run([sys.executable, "-m", "consumer.app"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return done.returncode, events


def unreachable(events: list[dict[str, object]]) -> dict[str, str]:
    return {str(e["service"]): str(e["message"]) for e in events
            if e.get("event") == "unreachable_at_start"}


async def test_a_closed_kafka_port_is_exit_4_naming_kafka(stack_settings: Settings) -> None:
    port = free_port()
    code, events = await asyncio.to_thread(
        run_consumer, stack_settings, OCR_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}"
    )
    assert code == EXIT_UNREACHABLE == 4, events[-5:]
    named = unreachable(events)
    assert list(named) == ["Kafka"], events[-5:]
    assert named["Kafka"].startswith(
        f"Kafka at 127.0.0.1:{port} could not be reached within {DEADLINE_S} s (last error ")
    assert "check OCR_KAFKA_BOOTSTRAP" in named["Kafka"]
    # It gave up before loading an engine (minutes for vLLM, on every restart of a loop).
    assert not [e for e in events if e.get("event") == "engine_starting"]
    assert any(e.get("event") == "service_unreachable" for e in events), "retried meanwhile"


async def test_a_stopped_redis_is_exit_4_naming_redis(
    stack_settings: Settings, stopped_redis: int
) -> None:
    code, events = await asyncio.to_thread(
        run_consumer, stack_settings, OCR_REDIS_URL=f"redis://127.0.0.1:{stopped_redis}/0"
    )
    assert code == 4, events[-5:]
    named = unreachable(events)
    assert list(named) == ["Redis"], events[-5:]
    assert named["Redis"].startswith(
        f"Redis at 127.0.0.1:{stopped_redis} could not be reached within {DEADLINE_S} s")
    assert "ConnectionError" in named["Redis"] and "check OCR_REDIS_URL" in named["Redis"]


async def test_a_redis_that_comes_up_within_the_deadline_is_waited_for(
    stack_settings: Settings, stopped_redis: int, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{stopped_redis}/0", "start_timeout_s": 60.0,
        "metrics_port": 0,
    })
    servers: list[subprocess.Popen[bytes]] = []

    async def start_later() -> None:
        await asyncio.sleep(2.0)
        servers.append(await asyncio.to_thread(start_redis, stopped_redis, tmp_path))

    began = time.monotonic()
    starter = asyncio.create_task(start_later())
    try:
        async with running_app(settings, ScriptedEngine(), ready_timeout=60) as app:
            assert time.monotonic() - began >= 2.0, "ready before Redis was there"
            await starter
        assert app.exit_code == 0
    finally:
        starter.cancel()
        await asyncio.gather(starter, return_exceptions=True)
        for server in servers:
            stop(server)


async def test_the_probes_follow_the_start_phases(stack_settings: Settings) -> None:
    """reaching Kafka and Redis -> engine starting (identity published) -> ready."""
    engine = ScriptedEngine(start_gate=asyncio.Event())
    app = App(stack_settings.model_copy(update={"consumer_id": "probe-1", "metrics_port": 0}),
              engine=engine)
    run = asyncio.create_task(app.run())
    try:
        seen = [app.readiness()[1]]
        await wait_until(lambda: app.readiness()[1] == "engine starting", 30)
        seen.append(app.readiness()[1])
        info = app.metrics.registry.get_sample_value(
            "ocr_consumer_info",
            {"consumer_id": "probe-1", "engine": "scripted", "model": "test-double",
             "engine_version": "0", "mode": "", "version": __version__},
        )
        assert info == 1.0
        assert engine.start_gate is not None
        engine.start_gate.set()
        await wait_until(lambda: app.ready, 60)
        assert seen == ["reaching Kafka and Redis", "engine starting"]
    finally:
        app.stop()
        await asyncio.wait_for(run, 60)
    assert app.exit_code == 0


async def test_an_engine_that_cannot_exist_here_is_exit_2_saying_why(
    stack_settings: Settings,
) -> None:
    """OCR_ENGINE=vllm where vLLM is not installed (this machine): one error naming the
    extra to install, and the settings status, not a traceback and status 1."""
    code, events = await asyncio.to_thread(run_consumer, stack_settings, OCR_ENGINE="vllm")
    assert code == EXIT_SETTINGS == 2, events[-5:]
    [failed] = [e for e in events if e.get("event") == "engine_failed_to_start"]
    assert failed["code"] == "ENGINE_ERROR" and "ocr-stream[gpu]" in str(failed["error"])


class EngineThatFailsToStart(ScriptedEngine):
    async def start(self) -> None:
        raise EngineError("vLLM engine failed to start: CUDA out of memory")


async def test_an_engine_that_fails_to_start_is_exit_3(stack_settings: Settings) -> None:
    app = App(stack_settings.model_copy(update={"metrics_port": 0}),
              engine=EngineThatFailsToStart())
    await asyncio.wait_for(app.run(), 60)
    assert app.exit_code == EXIT_ENGINE_DEAD == 3
    assert not app.ready
