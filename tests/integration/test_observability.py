"""Metrics and probes of a running consumer on the real broker: scraped over HTTP, as
Prometheus and the kubelet see them, and consumer lag while backpressure pauses partitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer import __version__
from consumer.config import Settings
from consumer.metrics import ConsumerMetrics
from schemas.keys import task_partition
from schemas.progress import TaskStatus
from tests.support.apps import running_app
from tests.support.documents import file_request, make_pdf
from tests.support.engines import ScriptedEngine
from tests.support.http import http_get
from tests.support.kafka import TopicReader, produce_requests, wait_until

pytestmark = pytest.mark.integration

STAGES = ("fetch", "render", "infer", "postprocess", "publish")
# The lag reporter asks for the log ends every 5 s; two rounds and some slack.
LAG_TIMEOUT_S = 15.0


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={"file_roots": [tmp_path], "metrics_port": 0, "commit_interval_s": 0.2}
    )


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _lag(metrics: ConsumerMetrics, topic: str, partition: int) -> float | None:
    return metrics.registry.get_sample_value(
        "ocr_consumer_lag", {"topic": topic, "partition": str(partition)}
    )


async def test_metrics_and_readiness_over_http(settings: Settings, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "two.pdf", pages=2)
    async with running_app(settings, ScriptedEngine(), health_port=0) as app:
        status, body = await http_get(f"{app.health.url}/readyz")
        assert status == 200 and json.loads(body) == {"status": "ok", "reason": "ready"}
        status, _ = await http_get(f"{app.health.url}/healthz")
        assert status == 200

        await produce_requests(settings, [file_request("obs-1", pdf)])
        async with TopicReader(settings, settings.topic_progress) as reader:
            await reader.wait_for(lambda r: bool(r.final(settings, "obs-1")))
        [final] = reader.final(settings, "obs-1")
        assert final.status is TaskStatus.COMPLETED

        topic = settings.topic_requests
        # Every assigned partition has a lag series, also the five that never got a record.
        await wait_until(
            lambda: all(
                _lag(app.metrics, topic, p) is not None for p in range(settings.topic_partitions)
            ),
            LAG_TIMEOUT_S,
        )
        status, body = await http_get(f"{app.health.url}/metrics")
    assert status == 200
    samples = _samples(body.decode())
    assert _value(samples, "ocr_pages_total", status="ok") == 2
    assert _value(samples, "ocr_pages_total", status="failed") == 0
    assert _value(samples, "ocr_tasks_total", status="completed") == 1
    for stage in STAGES:  # fetch once per task, the rest once per page
        expected = 1 if stage == "fetch" else 2
        assert _value(samples, "ocr_stage_seconds_count", stage=stage) == expected, stage
    assert _value(samples, "ocr_inference_seconds_count") == 2
    assert _value(samples, "ocr_page_queue_seconds_count") == 2
    assert _value(samples, "ocr_task_queue_seconds_count") == 1
    lag = {
        dict(labels)["partition"]: value
        for (name, labels), value in samples.items()
        if name == "ocr_consumer_lag" and dict(labels)["topic"] == topic
    }
    assert sorted(lag, key=int) == [str(p) for p in range(settings.topic_partitions)]
    assert all(value >= 0 for value in lag.values())
    info = [labels for (name, labels), _ in samples.items() if name == "ocr_consumer_info"]
    assert len(info) == 1
    assert dict(info[0]) == {
        "consumer_id": settings.consumer_id, "engine": "scripted", "model": "test-double",
        "engine_version": "0", "mode": "", "version": __version__,
    }


async def test_lag_follows_the_log_end_while_partitions_are_paused(
    settings: Settings, tmp_path: Path
) -> None:
    pdf = make_pdf(tmp_path / "one.pdf", pages=1)
    # One task fills the budget and never finishes: every partition stays paused.
    one_task = settings.model_copy(update={"max_inflight_tasks": 1, "shutdown_grace_s": 0.0})
    partitions = settings.topic_partitions
    topic = settings.topic_requests
    hot = task_partition(b"lag-0", partitions)
    same_partition = [
        task_id for task_id in (f"lag-{i}" for i in range(1, 500))
        if task_partition(task_id.encode(), partitions) == hot
    ]
    async with running_app(one_task, ScriptedEngine(delay_s=600)) as app:
        await produce_requests(settings, [file_request("lag-0", pdf)])
        metrics = app.metrics
        await wait_until(
            lambda: metrics.registry.get_sample_value("ocr_paused_partitions") == partitions,
            30,
        )
        # lag-0 is unfinished: the group would resume at offset 0 of its partition.
        await wait_until(lambda: _lag(metrics, topic, hot) == 1, LAG_TIMEOUT_S)

        # A backlog arrives on the paused partition; nothing fetches it, so only the log
        # end can tell how far behind the partition is.
        await produce_requests(settings, [file_request(t, pdf) for t in same_partition[:5]])
        await wait_until(lambda: _lag(metrics, topic, hot) == 6, LAG_TIMEOUT_S)
        await produce_requests(settings, [file_request(t, pdf) for t in same_partition[5:8]])
        await wait_until(lambda: _lag(metrics, topic, hot) == 9, LAG_TIMEOUT_S)

        assert metrics.registry.get_sample_value("ocr_paused_partitions") == partitions
        for partition in set(range(partitions)) - {hot}:
            assert _lag(metrics, topic, partition) == 0


async def test_page_queue_time_is_the_wait_for_the_page_budget(
    settings: Settings, tmp_path: Path
) -> None:
    pdf = make_pdf(tmp_path / "three.pdf", pages=3)
    # One page at a time, 0.3 s each in the engine: page 1 starts at once, pages 2 and 3
    # each wait at least one page's time for the slot.
    serial = settings.model_copy(update={"max_inflight_pages": 1})
    async with running_app(serial, ScriptedEngine(delay_s=0.3)) as app:
        await produce_requests(settings, [file_request("queue-1", pdf)])
        async with TopicReader(settings, settings.topic_progress) as reader:
            await reader.wait_for(lambda r: bool(r.final(settings, "queue-1")))
    registry = app.metrics.registry
    assert registry.get_sample_value("ocr_page_queue_seconds_count") == 3
    assert registry.get_sample_value("ocr_page_queue_seconds_bucket", {"le": "0.1"}) == 1
    waited = registry.get_sample_value("ocr_page_queue_seconds_sum")
    assert waited is not None and waited >= 2 * 0.3
    # The task's own wait (Kafka timestamp to start) stays a metric of its own.
    assert registry.get_sample_value("ocr_task_queue_seconds_count") == 1
