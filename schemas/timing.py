"""Timing events on `ocr.timing`, keyed by `task_id`: one per page and one per task."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from schemas.common import ContractModel, TaskId, VersionedModel
from schemas.result import EngineIdentity


class TimingKind(StrEnum):
    TASK = "task"
    PAGE = "page"


class StageDurations(ContractModel):
    """Milliseconds per stage. For a task, page stages are summed over its pages."""

    queue_ms: float = Field(default=0.0, ge=0, description="Kafka timestamp to start of work.")
    fetch_ms: float = Field(default=0.0, ge=0, description="Fetching the claim check.")
    render_ms: float = Field(default=0.0, ge=0, description="Rendering page images.")
    infer_ms: float = Field(default=0.0, ge=0, description="In the engine.")
    postprocess_ms: float = Field(default=0.0, ge=0, description="Post-processing output.")
    publish_ms: float = Field(default=0.0, ge=0, description="Publishing to Kafka.")


class TimingEvent(VersionedModel):
    task_id: TaskId
    attempt: int = Field(default=0, ge=0, description="The request's attempt.")
    kind: TimingKind = Field(description="task (whole task) or page (one page).")
    page: int | None = Field(default=None, ge=1, description="The page, for kind page.")
    pages: int = Field(default=1, ge=0, description="Pages covered by this event.")
    queued_at: datetime = Field(description="Timestamp of the request record in Kafka.")
    started_at: datetime = Field(description="When work on it started.")
    finished_at: datetime = Field(description="When work on it ended.")
    stages: StageDurations = Field(description="Milliseconds per stage.")
    engine: EngineIdentity | None = Field(default=None, description="The engine, if one ran.")
    consumer_id: str = Field(
        default="", max_length=128, description="The consumer that did the work."
    )
