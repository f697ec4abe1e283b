"""Task progress on `ocr.progress`, keyed by `task_id`."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator

from schemas.common import ErrorInfo, MetadataValue, TaskId, VersionedModel, check_metadata


class TaskStatus(StrEnum):
    QUEUED = "queued"  # accepted from the requests topic
    STARTED = "started"  # document fetched and opened; page count known
    PAGE_DONE = "page_done"  # one more page published
    COMPLETED = "completed"  # every page published (some may have failed: see pages_failed)
    FAILED = "failed"  # the task cannot be done: see error
    CANCELLED = "cancelled"  # a cancel request stopped it; pages published before are kept

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


MAX_PROGRESS_MESSAGE = 256


class ProgressEvent(VersionedModel):
    task_id: TaskId
    attempt: int = Field(default=0, ge=0, description="The request's attempt.")
    status: TaskStatus = Field(
        description="queued, started, page_done, then completed or failed (final)."
    )
    pages_done: int = Field(
        default=0, ge=0, description="Pages published so far, failed ones included."
    )
    pages_failed: int = Field(default=0, ge=0, description="Pages that ended with an error.")
    pages_total: int | None = Field(
        default=None, ge=0,
        description="Pages the task publishes (selected pages); known once started.",
    )
    page: int | None = Field(default=None, ge=1, description="The page that just finished.")
    percent: float = Field(
        default=0.0, ge=0.0, le=100.0,
        description="Share of the task's pages finished (failed ones count), 0-100, one "
        "decimal; 100 only once every page is done.",
    )
    eta_s: float | None = Field(
        default=None, ge=0.0,
        description="Estimated seconds until the last page is done, from this run's own "
        "page rate; null until a page of this run finished, and on final statuses.",
    )
    message: str = Field(
        default="", max_length=MAX_PROGRESS_MESSAGE,
        description="Short human-readable status, e.g. '7 of 12 pages, about 40 s left'.",
    )
    error: ErrorInfo | None = Field(default=None, description="Why the task failed.")
    replayed: bool = Field(
        default=False, description="True when a duplicate request re-announced a final status."
    )
    consumer_id: str = Field(
        default="", max_length=128, description="The consumer that published this event."
    )
    request_partition: int | None = Field(
        default=None, ge=0, description="Partition of the request record."
    )
    request_offset: int | None = Field(
        default=None, ge=0, description="Offset of the request record."
    )
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="The request's metadata, echoed."
    )
    emitted_at: datetime = Field(description="When the event was published.")

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)
