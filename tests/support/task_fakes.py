"""In-memory stand-ins for what the task runner talks to (consumer/task_io.py): a task store,
an event sink and a document source. Unit tests of pure logic only; integration tests use
the real Redis, Kafka and render workers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from consumer.errors import OcrError
from consumer.page_image import PageImage
from consumer.records import RequestRecord
from consumer.state import TaskState
from schemas.common import ErrorCode, ErrorInfo
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import OcrRequest
from schemas.result import PageResult, PageStatus
from schemas.timing import TimingEvent


@dataclass
class MemoryStore:
    """TaskStore: states by task id and leases by task id, with a log of the writes."""

    states: dict[str, TaskState] = field(default_factory=dict)
    leases: dict[str, str] = field(default_factory=dict)
    cancels: dict[str, str] = field(default_factory=dict)  # cancel markers: task id -> reason
    calls: list[str] = field(default_factory=list)  # "begin t", "finish t failed", ...

    async def load(self, task_id: str) -> TaskState | None:
        state = self.states.get(task_id)
        if state is None:
            return None
        return TaskState(
            task_id=task_id, status=state.status, fingerprint=state.fingerprint,
            attempt=state.attempt, owner=state.owner, pages_total=state.pages_total,
            pages=dict(state.pages), error=state.error,
        )

    async def begin(
        self, task_id: str, *, fingerprint: str, attempt: int, owner: str, reset_pages: bool
    ) -> bool:
        self.calls.append(f"begin {task_id}{' reset' if reset_pages else ''}")
        state = self.states.setdefault(task_id, TaskState(task_id, TaskStatus.STARTED))
        if state.status.is_final and not reset_pages:
            return False  # as the real store: a final status stays
        if reset_pages:
            state.pages = {}
        state.status, state.fingerprint = TaskStatus.STARTED, fingerprint
        state.attempt, state.owner, state.error = attempt, owner, None
        return True

    async def set_pages_total(self, task_id: str, pages_total: int) -> None:
        self.states[task_id].pages_total = pages_total

    async def page_done(self, task_id: str, page: int, status: PageStatus) -> None:
        self.states[task_id].pages[page] = status

    async def finish(self, task_id: str, status: TaskStatus, error: ErrorInfo | None) -> bool:
        self.calls.append(f"finish {task_id} {status.value}")
        state = self.states.get(task_id)
        if state is not None and state.status.is_final:
            return False  # as the real store: a final status stays
        state = self.states.setdefault(task_id, TaskState(task_id, status))
        state.status, state.error = status, error
        return True

    async def acquire_lease(self, task_id: str, owner: str) -> str | None:
        holder = self.leases.setdefault(task_id, owner)
        return None if holder == owner else holder

    async def refresh_lease(self, task_id: str, owner: str) -> bool:
        return self.leases.get(task_id) == owner

    async def release_lease(self, task_id: str, owner: str) -> None:
        if self.leases.get(task_id) == owner:
            del self.leases[task_id]

    async def lease_holder(self, task_id: str) -> str | None:
        return self.leases.get(task_id)

    async def request_cancel(self, task_id: str, reason: str) -> None:
        self.calls.append(f"cancel {task_id}")
        self.cancels[task_id] = reason

    async def cancel_reasons(self, task_ids: Sequence[str]) -> dict[str, str]:
        return {task_id: self.cancels[task_id] for task_id in task_ids if task_id in self.cancels}

    async def clear_cancel(self, task_id: str) -> None:
        self.calls.append(f"clear cancel {task_id}")
        self.cancels.pop(task_id, None)


@dataclass
class MemorySink:
    """EventSink: every event, in order, with the run tag it was sent under."""

    results: list[PageResult] = field(default_factory=list)
    progress_events: list[ProgressEvent] = field(default_factory=list)
    timings: list[TimingEvent] = field(default_factory=list)
    dead_letters: list[tuple[RequestRecord, ErrorCode, str, str | None]] = field(
        default_factory=list
    )
    run_tags: set[str] = field(default_factory=set)

    async def result(self, result: PageResult, *, run_tag: str = "") -> None:
        self.results.append(result)
        self.run_tags.add(run_tag)

    async def progress(self, event: ProgressEvent, *, run_tag: str = "") -> None:
        self.progress_events.append(event)
        self.run_tags.add(run_tag)

    async def timing(self, event: TimingEvent, *, run_tag: str = "") -> None:
        self.timings.append(event)
        self.run_tags.add(run_tag)

    async def dead_letter(
        self, record: RequestRecord, *, code: ErrorCode, message: str, task_id: str | None
    ) -> None:
        self.dead_letters.append((record, code, message, task_id))

    @property
    def statuses(self) -> list[str]:
        return [event.status.value for event in self.progress_events]


@dataclass
class MemoryDocument:
    """PageSource: blank pages of a few pixels, rendered at once (or as `render` says)."""

    task_id: str
    page_count: int
    fail_pages: dict[int, OcrError] = field(default_factory=dict)
    closed: bool = False

    pixels: int = 40 * 60  # what each page costs the in-flight budget, whatever its dpi

    def page_pixels(self, page: int, dpi: int) -> int:
        return self.pixels

    async def render_page(self, page: int, dpi: int) -> PageImage:
        await asyncio.sleep(0)
        if page in self.fail_pages:
            raise self.fail_pages[page]
        image = Image.new("RGB", (40, 60), "white")
        return PageImage(self.task_id, page, image, dpi, width_pt=28.8, height_pt=43.2)

    async def close(self) -> None:
        self.closed = True


@dataclass
class MemoryDocuments:
    """DocumentSource: a document of `pages[task_id]` pages (3 unless said), or `refuse`."""

    pages: dict[str, int] = field(default_factory=dict)
    refuse: dict[str, OcrError] = field(default_factory=dict)
    fail_pages: dict[int, OcrError] = field(default_factory=dict)
    opened: list[MemoryDocument] = field(default_factory=list)
    pixels: int = 40 * 60  # what each page costs the in-flight budget

    async def open(self, request: OcrRequest) -> MemoryDocument:
        if request.task_id in self.refuse:
            raise self.refuse[request.task_id]
        document = MemoryDocument(
            request.task_id, self.pages.get(request.task_id, 3), dict(self.fail_pages),
            pixels=self.pixels,
        )
        self.opened.append(document)
        return document


def record(partition: int = 0, offset: int = 0, value: Any = b"{}") -> RequestRecord:
    return RequestRecord(
        topic="ocr.requests", partition=partition, offset=offset, timestamp_ms=None,
        key=None, value=value,
    )
