"""Progress a person can read: percent done, time left from the task's own pace, a message.

Pure: the runner keeps one `PageRate` per task run, tells it when each page of this run
finished (monotonic seconds), and asks `describe` for the fields of every progress event.
Nothing here reads a clock.

Guarantees (property-tested): `percent` lies in 0..100 with one decimal and is 100 only
when every page is done (or the task completed); `eta_s` is None until a page of this run
finished and on final statuses, otherwise >= 0, and 0 once no page is left; the message
fits the contract's 256 characters. What it does not do: predict. The rate is the task's
own over its last RATE_WINDOW pages, so a task that starts sharing the engine with others
sees its estimate grow only as its pages slow down; pages recorded by an earlier run
(resumed tasks) count as done but not towards the rate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from schemas.common import ErrorInfo
from schemas.progress import MAX_PROGRESS_MESSAGE, TaskStatus

# Pages the rate is measured over: more than a batch of pages that finish together (the
# page budget), few enough to follow a change of pace within a long document.
RATE_WINDOW = 64


@dataclass(slots=True)
class PageRate:
    """Pages per second of one task run, over its last RATE_WINDOW pages.

    `started` is when the run began computing pages; the window holds the time before its
    oldest page (the start, or the page before) and the finishing times of its pages.
    """

    started: float
    _times: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self._times = deque([self.started], maxlen=RATE_WINDOW + 1)

    def page_done(self, at: float) -> None:
        # A clock cannot run backwards here, whatever the caller's: keep times ordered.
        self._times.append(max(at, self._times[-1]))

    @property
    def pages(self) -> int:
        """Pages in the window."""
        return len(self._times) - 1

    @property
    def last(self) -> float:
        return self._times[-1]

    def per_second(self) -> float | None:
        span = self._times[-1] - self._times[0]
        if self.pages == 0 or span <= 0:
            return None
        return self.pages / span


@dataclass(frozen=True, slots=True)
class Readable:
    percent: float
    eta_s: float | None
    message: str


def percent_done(done: int, total: int | None) -> float:
    """Pages done of total, 0-100 with one decimal; rounds down near the end, so that 100
    means every page."""
    if not total or total <= 0:
        return 0.0
    done = min(max(done, 0), total)
    value = math.floor(done * 1000 / total) / 10
    return value


def eta_seconds(rate: PageRate | None, remaining: int, now: float) -> float | None:
    """Seconds until `remaining` pages are done at the run's pace, counted from `now`."""
    if remaining <= 0:
        return 0.0
    per_second = rate.per_second() if rate is not None else None
    if rate is None or per_second is None:
        return None
    left = remaining / per_second - max(now - rate.last, 0.0)
    return round(max(left, 0.0), 1)


def duration_text(seconds: float) -> str:
    """'40 s', '3 min 20 s', '2 h 5 min': as precise as a person needs ('under 1 s' for
    what would round to nothing)."""
    whole = max(round(seconds), 0)
    if whole == 0 and seconds > 0:
        return "under 1 s"
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    minutes = rest // 60
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _pages(done: int, total: int | None, failed: int) -> str:
    counted = f"{done} of {total} pages" if total is not None else f"{done} pages"
    return counted + (f" ({failed} failed)" if failed else "")


def _fit(message: str) -> str:
    message = " ".join(message.split())
    if len(message) <= MAX_PROGRESS_MESSAGE:
        return message
    return message[: MAX_PROGRESS_MESSAGE - 1] + "…"


def describe(
    status: TaskStatus,
    *,
    pages_done: int,
    pages_total: int | None,
    pages_failed: int = 0,
    rate: PageRate | None = None,
    now: float = 0.0,
    error: ErrorInfo | None = None,
    replayed: bool = False,
    elapsed_s: float | None = None,
) -> Readable:
    """The readable fields of a progress event. `pages_done` counts failed pages too (as
    ProgressEvent does); `elapsed_s` is the run's duration, for the final message."""
    pages = _pages(pages_done, pages_total, pages_failed)
    percent = 100.0 if status is TaskStatus.COMPLETED else percent_done(pages_done, pages_total)
    took = f" in {duration_text(elapsed_s)}" if elapsed_s is not None else ""
    if replayed:
        return Readable(percent, None, _fit(f"{status.value} earlier: {pages}"))
    if status is TaskStatus.QUEUED:
        return Readable(percent, None, "queued")
    if status is TaskStatus.STARTED:
        if pages_done:
            return Readable(percent, None, _fit(f"resuming: {pages} already done"))
        total = "?" if pages_total is None else str(pages_total)
        return Readable(percent, None, _fit(f"started: {total} pages to do"))
    if status is TaskStatus.PAGE_DONE:
        remaining = (pages_total - pages_done) if pages_total is not None else -1
        eta = eta_seconds(rate, remaining, now) if remaining >= 0 else None
        left = f", about {duration_text(eta)} left" if eta else ""
        done = _pages(pages_done, pages_total, 0) + " done"
        failed = f" ({pages_failed} failed)" if pages_failed else ""
        return Readable(percent, eta, _fit(f"{done}{failed}, {percent:g}%{left}"))
    if status is TaskStatus.COMPLETED:
        return Readable(percent, None, _fit(f"completed{took}: {pages}"))
    if status is TaskStatus.CANCELLED:
        why = f": {error.message}" if error is not None and error.message else ""
        return Readable(percent, None, _fit(f"cancelled after {pages}{took}{why}"))
    code = f" {error.code.value}" if error is not None else ""
    return Readable(percent, None, _fit(f"failed{code} after {pages}{took}"))
