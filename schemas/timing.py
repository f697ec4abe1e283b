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
    fetch_ms: float = Field(default=0.0, ge=0)
    render_ms: float = Field(default=0.0, ge=0)
    infer_ms: float = Field(default=0.0, ge=0)
    postprocess_ms: float = Field(default=0.0, ge=0)
    publish_ms: float = Field(default=0.0, ge=0)


class TimingEvent(VersionedModel):
    task_id: TaskId
    attempt: int = Field(default=0, ge=0)
    kind: TimingKind
    page: int | None = Field(default=None, ge=1)
    pages: int = Field(default=1, ge=0, description="Pages covered by this event.")
    queued_at: datetime = Field(description="Timestamp of the request record in Kafka.")
    started_at: datetime
    finished_at: datetime
    stages: StageDurations
    engine: EngineIdentity | None = None
    consumer_id: str = Field(default="", max_length=128)
