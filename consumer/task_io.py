"""What a task run reads and writes, as the task runner sees it.

Three small protocols: the task store (Redis in consumer/state.py), the event sink (the
Kafka publisher in consumer/publisher.py) and the document source (fetch, then a render
worker). The runner (consumer/tasks.py) knows only these and the Engine protocol, so its
unit tests drive it with in-memory fakes (tests/unit/test_task_runner.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from consumer.config import Settings
from consumer.documents.fetch import fetch_document
from consumer.documents.render import open_document
from consumer.lease import LeaseStore
from consumer.page_image import PageImage
from consumer.records import RequestRecord
from consumer.state import TaskState
from schemas.common import ErrorCode, ErrorInfo
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import OcrRequest
from schemas.result import PageResult, PageStatus
from schemas.timing import TimingEvent


class TaskStore(LeaseStore, Protocol):
    """Task state: status, content fingerprint, recorded pages, the lease, cancels."""

    async def load(self, task_id: str) -> TaskState | None: ...

    async def begin(
        self, task_id: str, *, fingerprint: str, attempt: int, owner: str, reset_pages: bool
    ) -> bool:
        """False (nothing written) when the task has a final status and reset_pages is off."""
        ...

    async def set_pages_total(self, task_id: str, pages_total: int) -> None: ...

    async def page_done(self, task_id: str, page: int, status: PageStatus) -> None: ...

    async def finish(self, task_id: str, status: TaskStatus, error: ErrorInfo | None) -> bool:
        """False (left as it was) when the task has a final status already."""
        ...

    async def lease_holder(self, task_id: str) -> str | None: ...

    async def request_cancel(self, task_id: str, reason: str) -> None:
        """Mark the task cancelled and notify every member (consumer/cancel.py)."""

    async def cancel_reasons(self, task_ids: Sequence[str]) -> dict[str, str]: ...

    async def clear_cancel(self, task_id: str) -> None: ...


class EventSink(Protocol):
    """Where a task's events go. `run_tag` (see event_run_tag) keeps a forced run's event
    ids apart from the first run's. Every call returns once the event is stored."""

    async def result(self, result: PageResult, *, run_tag: str = "") -> None: ...

    async def progress(self, event: ProgressEvent, *, run_tag: str = "") -> None: ...

    async def timing(self, event: TimingEvent, *, run_tag: str = "") -> None: ...

    async def dead_letter(
        self, record: RequestRecord, *, code: ErrorCode, message: str, task_id: str | None
    ) -> None:
        """The request record, refused with a code and a message a user can act on."""


class PageSource(Protocol):
    """An opened document (consumer.documents.render.OpenedDocument)."""

    @property
    def page_count(self) -> int: ...

    def page_pixels(self, page: int, dpi: int) -> int:
        """The pixels `page` will have at `dpi`, known before it is rendered: its cost in
        the in-flight budget."""
        ...

    async def render_page(self, page: int, dpi: int) -> PageImage: ...

    async def close(self) -> None: ...


class DocumentSource(Protocol):
    async def open(self, request: OcrRequest) -> PageSource:
        """The request's document, fetched and opened; raises OcrError with a code."""
        ...


class FetchedDocuments:
    """The service's document source: the claim check fetched, then a render worker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def open(self, request: OcrRequest) -> PageSource:
        document = await fetch_document(request.source, self._settings)
        return await open_document(document, self._settings, request.task_id)
