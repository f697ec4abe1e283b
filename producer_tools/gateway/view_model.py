"""What the view remembers of a task and how each event changes it. Pure: no I/O.

The view applies the output topics' records in partition order; every record about a task
lies on one partition (the contract's task-id partitioning), so one task's records arrive
in the order they were published. Invariants, for any order of redelivery:

- A progress event is applied at most once: one at or below the partition offset already
  applied is ignored, so re-reading after a restart (at-least-once) changes nothing.
- A lower attempt never overrides a higher one (a stale run after a replay).
- A final status is not undone by a late non-final event of its attempt (a duplicate from
  a consumer that crashed after publishing it). Only `queued` opens a new run: a forced
  re-run starts with it.
- A task is reported final only once its page results are in the view too. Results and
  progress are separate topics read at their own pace, so the final status can be read
  before the last results; clients that see `completed` may fetch result.md at once.
  A re-announced final (`replayed`) counts at once: its results were published long ago.

Page results are kept per page by (attempt, offset), highest wins, as task_files.LatestPages
ranks them for ocr-collect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas.progress import ProgressEvent, TaskStatus
from schemas.result import PageResult


class ApiStatus(StrEnum):
    """What a client sees: the contract's statuses, with the running ones as one."""

    SUBMITTED = "submitted"  # published by the gateway; no progress read yet
    QUEUED = "queued"
    RUNNING = "running"  # started or pages done, or final with results still arriving
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (ApiStatus.COMPLETED, ApiStatus.FAILED, ApiStatus.CANCELLED)


class TaskProgress(BaseModel):
    """The view's entry of one task, stored as JSON in Redis."""

    model_config = ConfigDict(frozen=True)

    event: ProgressEvent  # the latest event applied
    offset: int  # its offset on the progress partition
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


def apply_progress(
    held: TaskProgress | None, event: ProgressEvent, offset: int
) -> TaskProgress | None:
    """The entry after `event`, or None when the event changes nothing (see module doc)."""
    if held is None:
        return _entry(None, event, offset)
    if offset <= held.offset:
        return None
    current = held.event
    if event.attempt < current.attempt:
        return None
    if (
        event.attempt == current.attempt
        and current.status.is_final
        and not event.status.is_final
        and event.status is not TaskStatus.QUEUED
    ):
        return None
    return _entry(held, event, offset)


def _entry(held: TaskProgress | None, event: ProgressEvent, offset: int) -> TaskProgress:
    new_run = held is None or event.status is TaskStatus.QUEUED or (
        event.attempt > held.event.attempt
    )
    queued_at = None if new_run or held is None else held.queued_at
    started_at = None if new_run or held is None else held.started_at
    finished_at = None
    when = event.emitted_at
    if event.status is TaskStatus.QUEUED:
        queued_at = when
    elif event.status is TaskStatus.STARTED:
        started_at = when
    if event.status.is_final:
        finished_at = when
    return TaskProgress(
        event=event, offset=offset, queued_at=queued_at, started_at=started_at,
        finished_at=finished_at,
    )


def results_in(event: ProgressEvent, pages_stored: int) -> bool:
    """Every page result the final event counts is in the view (or it is a re-announcement)."""
    return event.replayed or pages_stored >= event.pages_done


def api_status(progress: TaskProgress | None, pages_stored: int) -> ApiStatus:
    if progress is None:
        return ApiStatus.SUBMITTED
    event = progress.event
    if event.status.is_final:
        if not results_in(event, pages_stored):
            return ApiStatus.RUNNING
        return ApiStatus(event.status.value)
    if event.status is TaskStatus.QUEUED:
        return ApiStatus.QUEUED
    return ApiStatus.RUNNING


def percent(event: ProgressEvent | None, status: ApiStatus) -> float:
    """The event's own `percent` when its producer sent one, else pages_done of pages_total
    (events of consumers older than the field parse with its default, 0)."""
    if status is ApiStatus.COMPLETED:
        return 100.0
    if event is None:
        return 0.0
    if "percent" in event.model_fields_set:
        return round(event.percent, 1)
    if not event.pages_total:
        return 0.0
    return round(min(100.0, 100.0 * event.pages_done / event.pages_total), 1)


def eta_and_message(
    event: ProgressEvent | None, status: ApiStatus
) -> tuple[float | None, str | None]:
    """`eta_s` while running and `message`, when the consumer sent them."""
    if event is None:
        return None, None
    eta = None if status.is_final else event.eta_s
    return eta, event.message or None


# --- page results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageRank:
    attempt: int
    offset: int

    def encode(self) -> str:
        return f"{self.attempt}:{self.offset}"

    @classmethod
    def decode(cls, text: str) -> PageRank:
        attempt, _, offset = text.partition(":")
        return cls(int(attempt), int(offset))

    def beats(self, other: PageRank | None) -> bool:
        return other is None or (self.attempt, self.offset) > (other.attempt, other.offset)


def page_summary(result: PageResult) -> dict[str, Any]:
    """One line of the status answer per page: enough to show, no page text."""
    return {
        "page": result.page,
        "status": result.status.value,
        "finish_reason": result.finish_reason.value,
        "error": result.error.model_dump(mode="json") if result.error else None,
        "chars": len(result.markdown or result.text),
        "blocks": len(result.blocks),
        "render_ms": result.timings.render_ms,
        "infer_ms": result.timings.infer_ms,
    }
