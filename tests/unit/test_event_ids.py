"""Event ids are contract: readers de-duplicate by them, so their formats are pinned."""

from __future__ import annotations

import json
from typing import Any

from schemas.event_ids import (
    dead_letter_event_id,
    event_run_tag,
    progress_event_id,
    replayed_request_event_id,
    request_event_id,
    result_event_id,
    timing_event_id,
)
from schemas.progress import ProgressEvent
from schemas.request import OcrRequest
from schemas.result import PageResult
from schemas.timing import TimingEvent

NOW = "2026-11-24T10:00:00Z"


def result(**changes: Any) -> PageResult:
    return PageResult.model_validate_json(json.dumps({
        "task_id": "doc-1", "page": 2, "page_count": 3, "attempt": 1, "status": "ok",
        "finish_reason": "stop", "engine": {"name": "rapidocr", "model": "m"},
        "image": {"width_px": 10, "height_px": 10, "dpi": 72}, "produced_at": NOW, **changes,
    }))


def test_a_forced_run_names_the_record_that_asked_for_it() -> None:
    assert event_run_tag(False, 3, 41) == ""
    tag = event_run_tag(True, 3, 41)
    assert tag == "/forced@3.41"
    assert result_event_id(result(), tag) == "doc-1/2/1/forced@3.41"
    assert result_event_id(result()) == "doc-1/2/1"


def test_progress_ids_tell_states_and_re_announcements_apart() -> None:
    event = ProgressEvent.model_validate_json(json.dumps({
        "task_id": "doc-1", "attempt": 2, "status": "page_done", "pages_done": 3,
        "emitted_at": NOW,
    }))
    assert progress_event_id(event) == "doc-1/2/page_done/3"
    replayed = event.model_copy(update={"replayed": True})
    assert progress_event_id(replayed, "/forced@0.1") == "doc-1/2/page_done/3/replay/forced@0.1"


def test_timing_ids_per_page_and_per_task() -> None:
    base = {
        "task_id": "doc-1", "queued_at": NOW, "started_at": NOW, "finished_at": NOW,
        "stages": {},
    }
    task = TimingEvent.model_validate_json(json.dumps({**base, "kind": "task", "pages": 2}))
    page = TimingEvent.model_validate_json(json.dumps({**base, "kind": "page", "page": 2}))
    assert timing_event_id(task) == "doc-1/0/task"
    assert timing_event_id(page) == "doc-1/0/page/2"


def test_request_and_dead_letter_ids() -> None:
    request = OcrRequest.model_validate_json(
        json.dumps({"task_id": "doc-1", "attempt": 4, "source": {"uri": "file:///srv/a.pdf"}})
    )
    assert request_event_id(request, "ab12") == "doc-1/ab12"
    assert replayed_request_event_id(request) == "doc-1/4/replay"
    assert dead_letter_event_id("ocr.requests", 5, 99) == "ocr.requests/5/99"
