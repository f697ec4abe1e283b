"""Readable progress: percent, the ETA from the task's own page rate, and messages."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.progress import (
    RATE_WINDOW,
    PageRate,
    describe,
    duration_text,
    eta_seconds,
    percent_done,
)
from schemas.common import ErrorCode, ErrorInfo
from schemas.progress import MAX_PROGRESS_MESSAGE, ProgressEvent, TaskStatus

FAST = settings(max_examples=300, deadline=None)


def steady(pages: int, every_s: float, start: float = 100.0) -> PageRate:
    rate = PageRate(started=start)
    for n in range(1, pages + 1):
        rate.page_done(start + n * every_s)
    return rate


# --- examples ------------------------------------------------------------------------------


def test_percent_has_one_decimal_and_reaches_100_only_at_the_end() -> None:
    assert percent_done(0, 12) == 0.0
    assert percent_done(7, 12) == 58.3
    assert percent_done(1, 3) == 33.3
    assert percent_done(2, 3) == 66.6
    assert percent_done(1999, 2000) == 99.9  # not rounded up to 100
    assert percent_done(2000, 2000) == 100.0
    assert percent_done(3, None) == 0.0


def test_eta_follows_the_runs_own_pace() -> None:
    rate = steady(4, 2.5)  # a page every 2.5 s
    assert rate.per_second() == pytest.approx(0.4)
    assert eta_seconds(rate, 8, now=rate.last) == 20.0
    assert eta_seconds(rate, 8, now=rate.last + 5) == 15.0  # time passed since the last page
    assert eta_seconds(rate, 8, now=rate.last + 60) == 0.0  # late, not negative
    assert eta_seconds(rate, 0, now=rate.last) == 0.0
    assert eta_seconds(PageRate(started=0.0), 8, now=5.0) is None  # no page yet
    assert eta_seconds(None, 8, now=5.0) is None


def test_the_rate_forgets_pages_beyond_its_window() -> None:
    rate = steady(RATE_WINDOW, 1.0)
    for _ in range(RATE_WINDOW):  # the task slows down to a page every 4 s
        rate.page_done(rate.last + 4.0)
    assert rate.pages == RATE_WINDOW
    assert rate.per_second() == pytest.approx(0.25)


def test_pages_finishing_together_count_from_the_run_start() -> None:
    rate = PageRate(started=0.0)
    for _ in range(8):  # a batch of 8 pages ends at once after 10 s
        rate.page_done(10.0)
    assert rate.per_second() == pytest.approx(0.8)
    rate.page_done(9.0)  # a clock that went back is not a negative duration
    assert rate.last == 10.0


def test_durations_read_like_a_person_would_say_them() -> None:
    assert [duration_text(s) for s in (0, 0.4, 40, 60, 200, 3600, 7500)] == [
        "0 s", "under 1 s", "40 s", "1 min", "3 min 20 s", "1 h", "2 h 5 min",
    ]


def test_messages_of_each_status() -> None:
    rate = steady(5, 2.0)
    page = describe(TaskStatus.PAGE_DONE, pages_done=7, pages_total=12, pages_failed=1,
                    rate=rate, now=rate.last)
    assert page.percent == 58.3 and page.eta_s == 10.0  # 5 pages left, one every 2 s
    assert page.message == "7 of 12 pages done (1 failed), 58.3%, about 10 s left"
    assert describe(TaskStatus.QUEUED, pages_done=0, pages_total=None).message == "queued"
    assert describe(TaskStatus.STARTED, pages_done=0, pages_total=12).message == (
        "started: 12 pages to do"
    )
    assert describe(TaskStatus.STARTED, pages_done=5, pages_total=12).message == (
        "resuming: 5 of 12 pages already done"
    )
    done = describe(TaskStatus.COMPLETED, pages_done=12, pages_total=12, elapsed_s=63)
    assert (done.percent, done.eta_s, done.message) == (
        100.0, None, "completed in 1 min 3 s: 12 of 12 pages",
    )
    failed = describe(TaskStatus.FAILED, pages_done=3, pages_total=12,
                      error=ErrorInfo(code=ErrorCode.TASK_TIMEOUT, message="took too long"))
    assert (failed.percent, failed.message) == (25.0, "failed TASK_TIMEOUT after 3 of 12 pages")
    cancelled = describe(
        TaskStatus.CANCELLED, pages_done=5, pages_total=2000, elapsed_s=12,
        error=ErrorInfo(code=ErrorCode.TASK_CANCELLED, message="sent by mistake"),
    )
    assert cancelled.message == "cancelled after 5 of 2000 pages in 12 s: sent by mistake"
    assert cancelled.eta_s is None
    again = describe(TaskStatus.COMPLETED, pages_done=12, pages_total=12, replayed=True)
    assert again.message == "completed earlier: 12 of 12 pages"


def test_the_fields_fit_the_contract() -> None:
    long_reason = ErrorInfo(code=ErrorCode.TASK_CANCELLED, message="x " * 900)
    readable = describe(TaskStatus.CANCELLED, pages_done=1, pages_total=3, error=long_reason)
    assert len(readable.message) == MAX_PROGRESS_MESSAGE
    ProgressEvent(
        task_id="t", status=TaskStatus.CANCELLED, percent=readable.percent,
        eta_s=readable.eta_s, message=readable.message, emitted_at=datetime.now(UTC),
    )


# --- properties ----------------------------------------------------------------------------

STATUS = st.sampled_from(list(TaskStatus))


@FAST
@given(st.integers(0, 5000), st.integers(1, 5000))
def test_percent_is_bounded_monotone_and_100_only_when_done(done: int, total: int) -> None:
    value = percent_done(done, total)
    assert 0.0 <= value <= 100.0
    assert value == round(value, 1)
    assert (value == 100.0) == (done >= total)
    assert percent_done(done + 1, total) >= value


@FAST
@given(
    st.lists(st.floats(0.0, 30.0, allow_nan=False), max_size=150),
    st.integers(0, 3000),
    st.floats(0.0, 100.0, allow_nan=False),
)
def test_eta_is_none_before_a_page_and_never_negative(
    gaps: list[float], remaining: int, wait: float
) -> None:
    rate = PageRate(started=10.0)
    for gap in gaps:
        rate.page_done(rate.last + gap)
    eta = eta_seconds(rate, remaining, now=rate.last + wait)
    if remaining == 0:
        assert eta == 0.0
    elif rate.last == 10.0:  # no page yet, or none took measurable time
        assert eta is None
    else:
        assert eta is not None and eta >= 0.0


@FAST
@given(st.floats(0.05, 60.0), st.integers(1, 200), st.integers(0, 2000))
def test_a_steady_pace_predicts_exactly(every_s: float, done: int, remaining: int) -> None:
    rate = steady(done, every_s)
    eta = eta_seconds(rate, remaining, now=rate.last)
    assert eta == pytest.approx(remaining * every_s, rel=1e-6, abs=0.051)


@FAST
@given(
    STATUS, st.integers(0, 3000), st.one_of(st.none(), st.integers(1, 3000)),
    st.integers(0, 3000), st.booleans(), st.text(max_size=3000),
    st.one_of(st.none(), st.floats(0.0, 1e6)),
)
def test_every_description_is_a_valid_progress_event(
    status: TaskStatus, done: int, total: int | None, failed: int, replayed: bool,
    reason: str, elapsed: float | None,
) -> None:
    if total is not None:
        done = min(done, total)
    failed = min(failed, done)
    rate = steady(min(done, 50), 0.5)
    error = ErrorInfo(code=ErrorCode.TASK_CANCELLED, message=reason[:2048])
    readable = describe(
        status, pages_done=done, pages_total=total, pages_failed=failed, rate=rate,
        now=rate.last, error=error, replayed=replayed, elapsed_s=elapsed,
    )
    event = ProgressEvent.model_validate(
        {"task_id": "t", "status": status, "pages_done": done, "pages_total": total,
         "percent": readable.percent, "eta_s": readable.eta_s, "message": readable.message,
         "emitted_at": "2026-12-07T10:00:00Z"},
        strict=False,
    )
    assert event.message == readable.message and readable.message
    if status.is_final:
        assert readable.eta_s is None
    if status is TaskStatus.COMPLETED:
        assert readable.percent == 100.0
