"""The request record as the consumer loop hands it to the task runner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.cloudevents import Headers, trace_context


def kafka_time(timestamp_ms: int | None) -> datetime | None:
    """A record's Kafka timestamp as a datetime; None when it has none (-1) or names no
    time a datetime holds (a producer's clock or value gone wild: year 10,000 or later)."""
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    # As the producer sent them, in order; a header without value (null) reads as b"".
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def queued_at(self) -> datetime:
        """The Kafka timestamp of the request: when it was queued for us. A missing one,
        or one later than now (a topic that accepts producer clocks in the future), reads
        as now: the request cannot have waited less than nothing."""
        now = datetime.now(UTC)
        queued = kafka_time(self.timestamp_ms)
        return queued if queued is not None and queued <= now else now

    @property
    def trace_context(self) -> Headers:
        """The request's W3C trace headers that its outputs carry on (valid ones only)."""
        return trace_context(self.headers)
