"""The trace context of the request being worked on, for every record published for it.

W3C `traceparent`/`tracestate` on a request follow every output of its task (results,
progress, timing) and its dead letter, as plain Kafka headers (schemas/cloudevents.py
`trace_context`: only valid ones pass). The loop starts each work (a run, a conflict, a
dead letter) in an asyncio task of its own and calls `follow(record)` first; asyncio copies
the context into every task started from there (a run's pages), so whatever is published
for that work carries the request's trace, with no call site passing it on and none able
to forget it. That is how consumer/log.py binds a task's id to its log lines, and how
OpenTelemetry carries its own context.

Does not: start spans or sample (no tracing library here: readers that trace link their
spans to the headers); carry a trace into work started outside a work's task (a benchmark
publishing by itself gets none, which is right).
"""

from __future__ import annotations

from contextvars import ContextVar

from consumer.records import RequestRecord
from schemas.cloudevents import Headers

_followed: ContextVar[tuple[tuple[str, bytes], ...]] = ContextVar("ocr_trace", default=())


def follow(record: RequestRecord) -> None:
    """From now on in this asyncio task (and the tasks it starts), outputs carry the trace
    context of `record`, or none when it had none."""
    _followed.set(tuple(record.trace_context))


def current() -> Headers:
    """The trace headers of the work this code runs for (empty outside any)."""
    return list(_followed.get())
