"""Prometheus metrics of the gateway, served at its /metrics (own registry).

Route labels are route templates (`/v1/tasks/{task_id}`), never concrete paths, so the
number of series stays fixed however many tasks there are. API keys appear nowhere.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Upload-to-202 is milliseconds to seconds; the synchronous endpoint waits up to minutes.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ocr_gateway_requests_total", "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "ocr_gateway_request_seconds", "Time to answer an HTTP request (SSE: until the "
            "stream ends).", ["route", "method"], buckets=_BUCKETS, registry=r,
        )
        self.submitted = Counter(
            "ocr_gateway_tasks_submitted_total", "Requests published, by how they came.",
            ["kind"], registry=r,
        )
        self.refused = Counter(
            "ocr_gateway_refused_total", "Requests refused with a 4xx, by error code.",
            ["code"], registry=r,
        )
        self.open_tasks = Gauge(
            "ocr_gateway_open_tasks", "Tasks submitted through the gateway and not yet final "
            "(all keys; sampled every few seconds).", registry=r,
        )
        self.view_caught_up = Gauge(
            "ocr_gateway_view_caught_up", "1 when the view has read its partitions to the end "
            "offsets seen at assignment.", registry=r,
        )
        self.view_lag = Gauge(
            "ocr_gateway_view_lag", "Records of ocr.progress + ocr.results not yet in the view "
            "(this replica's partitions).", registry=r,
        )
        self.view_records = Counter(
            "ocr_gateway_view_records_total", "Records applied to the view.", registry=r,
        )
        self.view_skipped = Counter(
            "ocr_gateway_view_skipped_total", "Unreadable records skipped by the view.",
            registry=r,
        )
        self.cancels = Counter(
            "ocr_gateway_cancels_total", "Cancel control records published.", registry=r,
        )

    def metric_names(self) -> set[str]:
        """Every sample name this registry can expose, suffixes included, even before the
        first observation (so dashboards can be checked against it)."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names: set[str] = set()
        for family in self.registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        return names
