"""Metrics names and values, and the /metrics /healthz /readyz server on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from prometheus_client import CollectorRegistry

from consumer.app import App
from consumer.config import Settings
from consumer.engines.base import EngineStats
from consumer.health import HealthServer
from consumer.metrics import LATENCY_BUCKETS, STAGE_BUCKETS, ConsumerMetrics
from tests.support.engines import ScriptedEngine


def _value(metrics: ConsumerMetrics, sample: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(sample, labels)


def test_each_instance_has_its_own_registry() -> None:
    first, second = ConsumerMetrics(), ConsumerMetrics()
    first.task_done("completed")
    assert _value(first, "ocr_tasks_total", status="completed") == 1
    assert _value(second, "ocr_tasks_total", status="completed") == 0
    shared = CollectorRegistry()
    assert ConsumerMetrics(shared).registry is shared


def test_known_label_values_exist_before_any_event() -> None:
    metrics = ConsumerMetrics()
    for status in ("completed", "failed", "duplicate"):
        assert _value(metrics, "ocr_tasks_total", status=status) == 0
    for status in ("ok", "failed"):
        assert _value(metrics, "ocr_pages_total", status=status) == 0
    for stage in ("fetch", "render", "infer", "postprocess", "publish"):
        assert _value(metrics, "ocr_stage_seconds_count", stage=stage) == 0


def test_pages_tasks_and_stages() -> None:
    metrics = ConsumerMetrics()
    metrics.page_done("ok", infer_s=0.3, queue_s=2.0)
    metrics.page_done("failed", infer_s=120.0, queue_s=-1.0)
    metrics.task_done("completed")
    metrics.stage("render", 0.07)
    metrics.task_queue_latency(42.0)
    assert _value(metrics, "ocr_pages_total", status="ok") == 1
    assert _value(metrics, "ocr_pages_total", status="failed") == 1
    assert _value(metrics, "ocr_inference_seconds_count") == 2
    assert _value(metrics, "ocr_inference_seconds_sum") == pytest.approx(120.3)
    assert _value(metrics, "ocr_inference_seconds_bucket", le="0.5") == 1
    # A negative queue time (clock skew) is clamped, not subtracted from the sum.
    assert _value(metrics, "ocr_page_queue_seconds_sum") == pytest.approx(2.0)
    assert _value(metrics, "ocr_stage_seconds_count", stage="render") == 1
    assert _value(metrics, "ocr_task_queue_seconds_bucket", le="60.0") == 1
    assert _value(metrics, "ocr_task_queue_seconds_bucket", le="30.0") == 0


def test_buckets_cover_ocr_latencies() -> None:
    assert LATENCY_BUCKETS[0] == 0.05
    assert LATENCY_BUCKETS[-1] == 600.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    # Fast stages (render + post-processing + publish: ~37 ms a page) resolve from 1 ms.
    assert STAGE_BUCKETS[0] == 0.001 and STAGE_BUCKETS[-1] == 600.0
    assert list(STAGE_BUCKETS) == sorted(set(STAGE_BUCKETS))


def test_a_fast_stage_lands_below_50_ms() -> None:
    metrics = ConsumerMetrics()
    for seconds in (0.004, 0.012, 0.021):
        metrics.stage("publish", seconds)
    metrics.page_done("ok", infer_s=0.3, queue_s=0.002)
    assert _value(metrics, "ocr_stage_seconds_bucket", stage="publish", le="0.005") == 1
    assert _value(metrics, "ocr_stage_seconds_bucket", stage="publish", le="0.025") == 3
    assert _value(metrics, "ocr_page_queue_seconds_bucket", le="0.0025") == 1


def test_process_and_gc_metrics_on_the_private_registry() -> None:
    metrics = ConsumerMetrics()
    names = metrics.metric_names()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "python_gc_collections_total", "python_info"):
        assert name in names, name
    assert (_value(metrics, "process_resident_memory_bytes") or 0) > 0
    # Two instances in one process do not collide (each its own collectors).
    assert ConsumerMetrics().registry is not metrics.registry


def test_redis_errors_and_publish_retries() -> None:
    metrics = ConsumerMetrics()
    metrics.redis_error("page_done")
    metrics.redis_error("page_done")
    metrics.publish_retry("ocr.results")
    assert _value(metrics, "ocr_redis_errors_total", operation="page_done") == 2
    assert _value(metrics, "ocr_publish_retries_total", topic="ocr.results") == 1


async def test_the_state_store_counts_redis_errors_it_waits_out(settings: Settings) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from consumer.state import TaskStateStore

    class FlakyRedis:
        calls = 0

        async def hset(self, *args: object) -> int:
            self.calls += 1
            if self.calls <= 2:
                raise RedisConnectionError("Connection refused")
            return 1

    metrics = ConsumerMetrics()
    store = TaskStateStore(
        FlakyRedis(), settings, on_error=metrics.redis_error  # type: ignore[arg-type]
    )
    await store.set_pages_total("t-1", 3)
    assert _value(metrics, "ocr_redis_errors_total", operation="pages_total") == 2


def test_gauges_lag_and_forgetting_a_partition() -> None:
    metrics = ConsumerMetrics()
    metrics.set_inflight(pages=12, tasks=3)
    metrics.set_paused(2)
    metrics.set_lag("ocr.requests", 0, 5)
    metrics.set_lag("ocr.requests", 1, -3)
    assert _value(metrics, "ocr_inflight_pages") == 12
    assert _value(metrics, "ocr_inflight_tasks") == 3
    assert _value(metrics, "ocr_paused_partitions") == 2
    assert _value(metrics, "ocr_consumer_lag", topic="ocr.requests", partition="0") == 5
    assert _value(metrics, "ocr_consumer_lag", topic="ocr.requests", partition="1") == 0
    metrics.forget_partition("ocr.requests", 0)
    metrics.forget_partition("ocr.requests", 7)  # never set: no error
    assert _value(metrics, "ocr_consumer_lag", topic="ocr.requests", partition="0") is None
    assert _value(metrics, "ocr_consumer_lag", topic="ocr.requests", partition="1") == 0


def test_dlq_and_errors_by_code() -> None:
    metrics = ConsumerMetrics()
    metrics.dlq("REQUEST_NOT_JSON")
    metrics.dlq("REQUEST_NOT_JSON")
    metrics.error("PAGE_TIMEOUT")
    assert _value(metrics, "ocr_dlq_total", code="REQUEST_NOT_JSON") == 2
    assert _value(metrics, "ocr_errors_total", code="PAGE_TIMEOUT") == 1


def test_engine_totals_become_counter_deltas_and_survive_a_restart() -> None:
    metrics = ConsumerMetrics()
    metrics.set_engine_stats(
        EngineStats(running=4, waiting=1, kv_cache_usage=0.5, prompt_tokens_total=100,
                    output_tokens_total=40, pages_total=2, extra={"preempted": 1.0})
    )
    metrics.set_engine_stats(EngineStats(prompt_tokens_total=150, output_tokens_total=90,
                                         pages_total=3))
    assert _value(metrics, "ocr_engine_running") == 0
    assert _value(metrics, "ocr_engine_prompt_tokens_total") == 150
    assert _value(metrics, "ocr_engine_output_tokens_total") == 90
    assert _value(metrics, "ocr_engine_pages_total") == 3
    assert _value(metrics, "ocr_engine_stat", name="preempted") == 1.0
    # The engine restarted: its totals start again from 0, all of it is new work.
    metrics.set_engine_stats(EngineStats(prompt_tokens_total=10, output_tokens_total=5))
    assert _value(metrics, "ocr_engine_prompt_tokens_total") == 160
    assert _value(metrics, "ocr_engine_output_tokens_total") == 95
    assert _value(metrics, "ocr_engine_pages_total") == 3


def test_metric_names_include_suffixed_forms() -> None:
    names = ConsumerMetrics().metric_names()
    for name in ("ocr_pages_total", "ocr_inference_seconds_bucket", "ocr_consumer_lag",
                 "ocr_engine_kv_cache_usage_ratio", "ocr_dlq_total", "ocr_consumer_info"):
        assert name in names


# HealthServer ---------------------------------------------------------------------------------


async def _http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    # Half-close like a client that has sent its whole request, so a short or empty request
    # ends at EOF instead of waiting for the server's read timeout.
    try:
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        # The server answered and closed with our oversized request unread: TCP may reset
        # the connection before the answer is read. Refusing it is what counts.
        return -1, {}, b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@pytest.fixture
def settings() -> Settings:
    return Settings(metrics_host="127.0.0.1", metrics_port=0)


async def test_serves_metrics_and_probes(settings: Settings) -> None:
    metrics = ConsumerMetrics()
    metrics.task_done("completed")
    state = {"ready": (False, "engine starting")}
    server = HealthServer(settings, metrics.registry, liveness=lambda: True,
                          readiness=lambda: state["ready"])
    async with server:
        assert server.port and server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        status, headers, body = await _http(server.port, _get("/metrics"))
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert b'ocr_tasks_total{status="completed"} 1.0' in body
        assert int(headers["Content-Length"]) == len(body)

        status, _, body = await _http(server.port, _get("/healthz"))
        assert status == 200 and json.loads(body)["status"] == "ok"

        status, headers, body = await _http(server.port, _get("/readyz"))
        assert status == 503
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"status": "unavailable", "reason": "engine starting"}

        state["ready"] = (True, "ready")
        status, _, body = await _http(server.port, _get("/readyz?verbose=1"))
        assert status == 200 and json.loads(body)["reason"] == "ready"

        status, headers, body = await _http(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert server.port is None


async def test_liveness_failure_and_raising_checks(settings: Settings) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    async with HealthServer(settings, CollectorRegistry(), liveness=lambda: False,
                            readiness=broken) as server:
        assert server.port is not None
        status, _, _ = await _http(server.port, _get("/healthz"))
        assert status == 503
        status, _, body = await _http(server.port, _get("/readyz"))
        assert status == 503 and "boom" in json.loads(body)["reason"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_get("/nope"), 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"\x00\xff\xfe garbage\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz\n", 200),  # a bare request line, then EOF
        (b"", 0),  # connect and close: nothing to answer
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n", 431),
    ],
)
async def test_garbage_requests_get_an_answer_or_a_close(
    settings: Settings, raw: bytes, expected: int
) -> None:
    async with HealthServer(settings, CollectorRegistry()) as server:
        assert server.port is not None
        status, _, _ = await _http(server.port, raw)
        assert status == expected or (expected == 431 and status == -1)
        # The server still answers after whatever came before.
        status, _, _ = await _http(server.port, _get("/healthz"))
        assert status == 200


async def test_stop_does_not_wait_for_a_stalled_client(settings: Settings) -> None:
    server = HealthServer(settings, CollectorRegistry())
    await server.start()
    assert server.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metr")  # never finishes the request
    await writer.drain()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(server.stop(), 2)
    writer.close()


# The App's probes (no Kafka, no Redis: it never gets past reaching them here; the probes
# of the later phases and the identity metric are in tests/integration/test_start_deadline.py)


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_app_probes_follow_the_start_and_the_engine(settings: Settings) -> None:
    engine = ScriptedEngine(start_gate=asyncio.Event())
    alone = settings.model_copy(update={
        "consumer_id": "unit-1", "kafka_bootstrap": f"127.0.0.1:{_closed_port()}",
        "redis_url": f"redis://127.0.0.1:{_closed_port()}/0",
    })
    app = App(alone, engine=engine, health_port=0)
    run = asyncio.create_task(app.run())
    try:
        for _ in range(200):
            if app.health.port:
                break
            await asyncio.sleep(0.01)
        assert app.health.port
        status, _, body = await _http(app.health.port, _get("/healthz"))
        assert status == 200, body
        status, _, body = await _http(app.health.port, _get("/readyz"))
        assert status == 503 and json.loads(body)["reason"] == "reaching Kafka and Redis"
        assert not engine.started, "the engine loads only once Kafka and Redis answered"

        engine.dead = "engine core process exited"
        status, _, body = await _http(app.health.port, _get("/healthz"))
        assert status == 503
        assert json.loads(body) == {
            "status": "unavailable", "reason": "engine dead: engine core process exited"
        }
        status, _, body = await _http(app.health.port, _get("/readyz"))
        assert status == 503 and json.loads(body)["reason"].startswith("engine dead")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    assert app.health.port is None  # stopped with the app


async def test_metrics_port_zero_serves_nothing() -> None:
    app = App(Settings(metrics_port=0), engine=ScriptedEngine(start_gate=asyncio.Event()))
    run = asyncio.create_task(app.run())
    await asyncio.sleep(0.1)
    assert app.health.port is None
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
