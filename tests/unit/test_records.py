"""The request record's Kafka time (consumer/records.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from consumer.records import RequestRecord, kafka_time


def record(timestamp_ms: int | None) -> RequestRecord:
    return RequestRecord("ocr.requests", 0, 0, timestamp_ms, None, b"{}")


def test_queued_at_is_the_kafka_timestamp() -> None:
    when = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert record(int(when.timestamp() * 1000)).queued_at == when


@pytest.mark.parametrize("timestamp_ms", [
    2**62,  # no datetime holds it: fromtimestamp raised, and the task ended INTERNAL
    253_402_300_800_000,  # 10000-01-01
    32_503_680_000_000,  # 3000-01-01: a datetime, but no request waits less than nothing
    None,
    -1,
])
def test_queued_at_is_now_for_a_timestamp_that_is_none_or_in_the_future(
    timestamp_ms: int | None,
) -> None:
    """Issue 16, defect 9: a far-future record timestamp gave INTERNAL."""
    queued = record(timestamp_ms).queued_at
    assert abs(queued - datetime.now(UTC)) < timedelta(seconds=5)


def test_kafka_time_is_none_where_no_datetime_holds_it() -> None:
    assert kafka_time(2**62) is None and kafka_time(-1) is None and kafka_time(None) is None
    assert kafka_time(0) == datetime(1970, 1, 1, tzinfo=UTC)
