"""Prometheus metrics of one consumer process.

Every metric lives in the `ConsumerMetrics` instance's own registry (not the global one) so
tests can create many apps in one process, and so `/metrics` shows exactly this consumer.
The HTTP side (/metrics, /healthz, /readyz) is `consumer.health.HealthServer`.

Names are part of the operations contract: deploy/grafana/ocr-stream.json and
docs/operations.md refer to them, and tests/unit/test_deploy_manifests.py fails when the
dashboard names a series this module does not define.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from consumer.engines.base import EngineStats

# OCR latencies span four orders of magnitude: a tiny image on a warm GPU takes ~50 ms, a
# dense page on the CPU engine seconds, a queue behind a backlog minutes. Page and task
# timeouts default to 120 s and 3600 s; the last bucket (600 s) plus +Inf covers both.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
# Pipeline stages and the page queue start at 1 ms: render, post-processing and publish take
# about 37 ms a page together (bench/README.md, CPU pipeline), so with a first bucket at
# 50 ms their p95 would say nothing. One set for every stage (a histogram has one), so the
# slow ones (infer, a large fetch) reach 600 s too.
STAGE_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, *LATENCY_BUCKETS,
)

# Label values created up front so rate() over them is defined (0) before the first event;
# otherwise a dashboard shows "no data" instead of zero for a healthy consumer.
PAGE_STATUSES = ("ok", "failed")
TASK_STATUSES = ("completed", "failed", "duplicate")
STAGES = ("fetch", "render", "infer", "postprocess", "publish")


class ConsumerMetrics:
    """The consumer's metrics; every method is cheap and safe to call from the event loop."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Without `registry`, a private one that also exports the process's CPU, memory and
        file descriptors (process_*), the interpreter's garbage collections (python_gc_*)
        and python_info, as the global default registry does. A registry passed in is
        assumed to have them already (the default one does) or not to want them."""
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            GCCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.registry = registry
        r = self.registry

        self.pages = Counter(
            "ocr_pages", "Pages finished, by status (ok, failed).", ["status"], registry=r
        )
        self.inference_seconds = Histogram(
            "ocr_inference_seconds", "Engine time of one page, without post-processing.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.page_queue_seconds = Histogram(
            "ocr_page_queue_seconds",
            "Time a page waited for a slot of the in-flight page budget before rendering.",
            buckets=STAGE_BUCKETS, registry=r,
        )
        self.tasks = Counter(
            "ocr_tasks", "Tasks finished, by status (completed, failed, duplicate).",
            ["status"], registry=r,
        )
        self.stage_seconds = Histogram(
            "ocr_stage_seconds",
            "Duration of one pipeline stage (fetch, render, infer, postprocess, publish).",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )
        self.task_queue_seconds = Histogram(
            "ocr_task_queue_seconds",
            "From the request's Kafka timestamp to the start of its processing.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inflight_pages = Gauge(
            "ocr_inflight_pages", "Pages holding the in-flight budget now.", registry=r
        )
        self.inflight_tasks = Gauge("ocr_inflight_tasks", "Tasks open now.", registry=r)
        self.consumer_lag = Gauge(
            "ocr_consumer_lag",
            "Records between the log end and the group's resume offset, per assigned "
            "partition (paused ones included).",
            ["topic", "partition"], registry=r,
        )
        self.unstable_records = Gauge(
            "ocr_consumer_unstable_records",
            "Records past the partition's last stable offset, per assigned partition: in "
            "transactions not yet committed or aborted, and every record behind them, which "
            "read_committed waits for (from the latest fetch response; not reported while "
            "the partition is paused).",
            ["topic", "partition"], registry=r,
        )
        self.unstable_seconds = Gauge(
            "ocr_consumer_unstable_seconds",
            "How long the partition's last stable offset has not moved while records wait "
            "past it: a transaction left open (0 while transactions keep committing).",
            ["topic", "partition"], registry=r,
        )
        self.paused_partitions = Gauge(
            "ocr_paused_partitions",
            "Assigned partitions paused because the in-flight budget is full.", registry=r,
        )
        self.dlq_records = Counter(
            "ocr_dlq", "Requests sent to the dead-letter topic, by error code.",
            ["code"], registry=r,
        )
        self.errors = Counter(
            "ocr_errors", "Task and page failures, by error code.", ["code"], registry=r
        )
        self.redis_errors = Counter(
            "ocr_redis_errors",
            "Redis calls that failed and were retried (an outage is waited out), by operation.",
            ["operation"], registry=r,
        )
        self.publish_retries = Counter(
            "ocr_publish_retries",
            "Records sent again because the broker was away (timeout, connection, leader "
            "move), by topic.",
            ["topic"], registry=r,
        )
        self.work_failures = Counter(
            "ocr_work_failures",
            "Runs of received work (task, dead letter, conflict report) that raised, by kind "
            "and what followed (retry, parked, handed_over, gave_up, left_pending).",
            ["kind", "next"], registry=r,
        )
        self.read_errors = Counter(
            "ocr_kafka_read_errors",
            "Errors fetching or decoding request batches, by class (unreadable, transient, "
            "fatal).", ["kind"], registry=r,
        )
        self.records_skipped = Counter(
            "ocr_records_skipped",
            "Request offsets committed without their work: the batch could not be read "
            "(unreadable_batch) or their dead letter could not be published (dead_letter).",
            ["reason"], registry=r,
        )
        self.engine_running = Gauge(
            "ocr_engine_running", "Sequences the engine is decoding now.", registry=r
        )
        self.engine_waiting = Gauge(
            "ocr_engine_waiting", "Sequences queued inside the engine.", registry=r
        )
        self.engine_kv_cache_usage = Gauge(
            "ocr_engine_kv_cache_usage_ratio", "Engine KV-cache usage, 0..1.", registry=r
        )
        # Counters fed with deltas of the engine's own totals, so rate() works and a restarted
        # engine (totals back to 0) is a counter reset Prometheus already understands.
        self.engine_prompt_tokens = Counter(
            "ocr_engine_prompt_tokens", "Prompt tokens processed by the engine.", registry=r
        )
        self.engine_output_tokens = Counter(
            "ocr_engine_output_tokens", "Tokens generated by the engine.", registry=r
        )
        self.engine_pages = Counter(
            "ocr_engine_pages", "Pages the engine finished (its own count).", registry=r
        )
        self.engine_extra = Gauge(
            "ocr_engine_stat", "Engine-specific numbers (EngineStats.extra), by name.",
            ["name"], registry=r,
        )
        self.redis_available_gauge = Gauge(
            "ocr_redis_available",
            "0 while task-state operations wait out a Redis outage, else 1.", registry=r,
        )
        self.redis_outage_seconds = Counter(
            "ocr_redis_outage_seconds",
            "Seconds of Redis outages waited out (added when each ends).", registry=r,
        )
        self.redis_outages = Counter(
            "ocr_redis_outages", "Redis outages that task-state operations waited out.",
            registry=r,
        )
        self.redis_available_gauge.set(1)
        self.info = Info("ocr_consumer", "Identity of this consumer process.", registry=r)
        self._engine_totals = (0, 0, 0)
        self._lag_series: set[tuple[str, str]] = set()
        self._unstable_series: set[tuple[str, str]] = set()

        for status in PAGE_STATUSES:
            self.pages.labels(status=status)
        for status in TASK_STATUSES:
            self.tasks.labels(status=status)
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)

    # Pages and tasks -------------------------------------------------------------------------

    def page_done(self, status: str, infer_s: float, queue_s: float) -> None:
        self.pages.labels(status=status).inc()
        self.inference_seconds.observe(max(infer_s, 0.0))
        self.page_queue_seconds.observe(max(queue_s, 0.0))

    def task_done(self, status: str) -> None:
        self.tasks.labels(status=status).inc()

    def stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(max(seconds, 0.0))

    def task_queue_latency(self, seconds: float) -> None:
        # Producer clocks drift; a negative latency would corrupt the histogram's sum.
        self.task_queue_seconds.observe(max(seconds, 0.0))

    # Flow control -----------------------------------------------------------------------------

    def set_inflight(self, pages: int, tasks: int) -> None:
        self.inflight_pages.set(pages)
        self.inflight_tasks.set(tasks)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        key = (topic, str(partition))
        self._lag_series.add(key)
        self.consumer_lag.labels(topic=key[0], partition=key[1]).set(max(lag, 0))

    def set_unstable(self, topic: str, partition: int, records: int, seconds: float) -> None:
        key = (topic, str(partition))
        self._unstable_series.add(key)
        self.unstable_records.labels(topic=key[0], partition=key[1]).set(max(records, 0))
        self.unstable_seconds.labels(topic=key[0], partition=key[1]).set(max(seconds, 0.0))

    def forget_unstable(self, topic: str, partition: int) -> None:
        key = (topic, str(partition))
        if key in self._unstable_series:
            self._unstable_series.discard(key)
            self.unstable_records.remove(*key)
            self.unstable_seconds.remove(*key)

    def forget_partition(self, topic: str, partition: int) -> None:
        # A revoked partition's lag now belongs to another consumer; a stale series here would
        # double-count it in sum(ocr_consumer_lag) and in the autoscaler's view.
        key = (topic, str(partition))
        if key in self._lag_series:
            self._lag_series.discard(key)
            self.consumer_lag.remove(*key)
        self.forget_unstable(topic, partition)

    def set_paused(self, paused_partitions: int) -> None:
        self.paused_partitions.set(paused_partitions)

    # Failures ---------------------------------------------------------------------------------

    def dlq(self, code: str) -> None:
        self.dlq_records.labels(code=code).inc()

    def error(self, code: str) -> None:
        self.errors.labels(code=code).inc()

    def redis_error(self, operation: str) -> None:
        self.redis_errors.labels(operation=operation).inc()

    def publish_retry(self, topic: str) -> None:
        """One call per record sent again, from EventPublisher._send's retry branch."""
        self.publish_retries.labels(topic=topic).inc()

    def work_failed(self, kind: str, next_step: str) -> None:
        self.work_failures.labels(kind=kind, next=next_step).inc()
        if next_step == "gave_up":
            reason = "cancel" if kind == "cancel" else "dead_letter"
            self.records_skipped.labels(reason=reason).inc()

    def read_error(self, kind: str) -> None:
        self.read_errors.labels(kind=kind).inc()

    def record_skipped(self, reason: str) -> None:
        self.records_skipped.labels(reason=reason).inc()

    # Redis outages (consumer.redis_outage.OutageListener) ------------------------------------

    def redis_unavailable(self) -> None:
        self.redis_available_gauge.set(0)
        self.redis_outages.inc()

    def redis_available(self, down_s: float) -> None:
        self.redis_available_gauge.set(1)
        self.redis_outage_seconds.inc(max(down_s, 0.0))

    # Engine and identity ----------------------------------------------------------------------

    def set_engine_stats(self, stats: EngineStats) -> None:
        self.engine_running.set(stats.running)
        self.engine_waiting.set(stats.waiting)
        self.engine_kv_cache_usage.set(stats.kv_cache_usage)
        totals = (stats.prompt_tokens_total, stats.output_tokens_total, stats.pages_total)
        counters = (self.engine_prompt_tokens, self.engine_output_tokens, self.engine_pages)
        for counter, new, old in zip(counters, totals, self._engine_totals, strict=True):
            # A total below the last one means the engine restarted and counts from 0 again:
            # everything it reports now is new work.
            delta = new - old if new >= old else new
            if delta > 0:
                counter.inc(delta)
        self._engine_totals = totals
        for name, value in stats.extra.items():
            self.engine_extra.labels(name=name).set(value)

    def set_info(self, **labels: str) -> None:
        """ocr_consumer_info{consumer_id, engine, model, engine_version, mode, version} = 1;
        set once the engine is chosen (App.run)."""
        self.info.info(labels)

    # Introspection ----------------------------------------------------------------------------

    def metric_names(self) -> set[str]:
        """Every sample name this registry can expose (with _total, _bucket, ... suffixes)."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.add(family.name)
            for sample in family.samples:
                names.add(sample.name)
        # Histograms without observations still expose their suffixes, but an unlabelled
        # family with no children yet (ocr_consumer_lag before any assignment) exposes no
        # sample; list the suffixed forms of every family so dashboards can be checked early.
        for family in self.registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        return names
