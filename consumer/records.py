"""The request record as the consumer loop hands it to the task runner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.cloudevents import Headers, trace_context


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
        """The Kafka timestamp of the request: when it was queued for us."""
        if self.timestamp_ms is None or self.timestamp_ms < 0:
            return datetime.now(UTC)
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    @property
    def trace_context(self) -> Headers:
        """The request's W3C trace headers that its outputs carry on (valid ones only)."""
        return trace_context(self.headers)
