"""What the HTTP API answers: response models (they are the OpenAPI document) and the pure
functions that build them from the view."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from producer_tools.gateway.page_html import markdown_html
from producer_tools.gateway.view_model import (
    ApiStatus,
    api_status,
    eta_and_message,
    percent,
)
from producer_tools.gateway.view_store import TaskSnapshot
from schemas.common import ErrorInfo
from schemas.result import Block, PageImageInfo, PageResult


class ErrorBody(BaseModel):
    error: ErrorInfo


class TaskAccepted(BaseModel):
    task_id: str
    status_url: str = Field(examples=["/v1/tasks/3f1c...-9a0b..."])
    status: ApiStatus = ApiStatus.SUBMITTED


class Timings(BaseModel):
    submitted_at: datetime | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_s: float | None = Field(None, description="Queued to started.")
    run_s: float | None = Field(None, description="Started to final.")
    total_s: float | None = Field(None, description="Submitted (or queued) to final.")


class PageSummary(BaseModel):
    page: int
    status: str
    finish_reason: str
    error: ErrorInfo | None = None
    chars: int
    blocks: int
    render_ms: float
    infer_ms: float


class TaskLinks(BaseModel):
    events: str
    result_md: str
    result_json: str
    result_zip: str


class TaskAnswer(BaseModel):
    task_id: str
    status: ApiStatus
    attempt: int = 0
    pages_done: int = 0
    pages_failed: int = 0
    pages_total: int | None = None
    percent: float = 0.0
    eta_s: float | None = None
    message: str | None = None
    error: ErrorInfo | None = None
    replayed: bool = False
    filename: str | None = None
    timings: Timings
    pages: list[PageSummary] = Field(default_factory=list)
    links: TaskLinks


class PageView(BaseModel):
    """One page for the web page: its Markdown, that Markdown as safe HTML, its blocks."""

    page: int
    status: str
    markdown: str
    html: str
    blocks: list[Block]
    image: PageImageInfo
    image_url: str | None
    error: ErrorInfo | None = None


class SyncAnswer(BaseModel):
    task_id: str
    status: ApiStatus
    markdown: str
    pages: list[dict[str, Any]] = Field(description="The page results (PageResult), in order.")


def task_url(task_id: str) -> str:
    return f"/v1/tasks/{task_id}"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def task_answer(task_id: str, snapshot: TaskSnapshot) -> TaskAnswer:
    progress = snapshot.progress
    status = api_status(progress, snapshot.pages_stored)
    event = progress.event if progress is not None else None
    submitted_at = _parse_time(snapshot.submission.get("submitted_at"))
    timings = Timings(submitted_at=submitted_at)
    if progress is not None:
        finished = progress.finished_at if status.is_final else None
        timings = Timings(
            submitted_at=submitted_at,
            queued_at=progress.queued_at,
            started_at=progress.started_at,
            finished_at=finished,
            queue_s=_seconds(progress.queued_at, progress.started_at),
            run_s=_seconds(progress.started_at, finished),
            total_s=_seconds(submitted_at or progress.queued_at, finished),
        )
    base = task_url(task_id)
    eta, message = eta_and_message(event, status)
    return TaskAnswer(
        task_id=task_id,
        status=status,
        attempt=event.attempt if event else 0,
        pages_done=event.pages_done if event else 0,
        pages_failed=event.pages_failed if event else 0,
        pages_total=event.pages_total if event else None,
        percent=percent(event, status),
        eta_s=eta,
        message=message,
        error=event.error if event and status.is_final else None,
        replayed=event.replayed if event else False,
        filename=snapshot.submission.get("filename"),
        timings=timings,
        pages=[PageSummary(**summary) for summary in snapshot.summaries],
        links=TaskLinks(
            events=f"{base}/events", result_md=f"{base}/result.md",
            result_json=f"{base}/result.json", result_zip=f"{base}/result.zip",
        ),
    )


def page_view(task_id: str, result: PageResult, has_image: bool) -> PageView:
    body = result.markdown or result.text
    return PageView(
        page=result.page,
        status=result.status.value,
        markdown=body,
        html=markdown_html(body),
        blocks=list(result.blocks),
        image=result.image,
        image_url=f"{task_url(task_id)}/pages/{result.page}/image.png" if has_image else None,
        error=result.error,
    )
