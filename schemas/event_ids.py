"""CloudEvents ids (`ce_id`) of every record ocr-stream writes, and the run tags in them.

Output ids are deterministic: a record re-published after a crash carries the same id as
the first copy, so a reader that drops events by id drops the duplicate. They change only
when the work is new: a replay raises `attempt`, and a forced recomputation adds a run tag
naming the request record that asked for it.
"""

from __future__ import annotations

from schemas.progress import ProgressEvent
from schemas.request import OcrRequest
from schemas.result import PageResult
from schemas.timing import TimingEvent


def event_run_tag(force: bool, partition: int, offset: int) -> str:
    """The part of a task's event ids that tells runs apart.

    A forced recomputation keeps the attempt but is new work: its ids name the request
    record (partition and offset of the requests topic) that asked for it. Without it,
    readers that drop CloudEvents by id would drop the recomputed results.
    """
    return f"/forced@{partition}.{offset}" if force else ""


def result_event_id(result: PageResult, run_tag: str = "") -> str:
    return f"{result.task_id}/{result.page}/{result.attempt}{run_tag}"


def progress_event_id(event: ProgressEvent, run_tag: str = "") -> str:
    # A re-announcement of a finished task (replayed) is a new event of the same state.
    replay = "/replay" if event.replayed else ""
    return (
        f"{event.task_id}/{event.attempt}/{event.status.value}/{event.pages_done}"
        f"{replay}{run_tag}"
    )


def timing_event_id(event: TimingEvent, run_tag: str = "") -> str:
    suffix = f"page/{event.page}" if event.page is not None else "task"
    return f"{event.task_id}/{event.attempt}/{suffix}{run_tag}"


def dead_letter_event_id(topic: str, partition: int, offset: int) -> str:
    """A dead letter is about one request record: its coordinates are its identity."""
    return f"{topic}/{partition}/{offset}"


def request_event_id(request: OcrRequest, nonce: str) -> str:
    """A submitted request: each submission is its own event (`nonce` unique per send),
    even for the same task id; the task id is what de-duplicates work."""
    return f"{request.task_id}/{nonce}"


def cancel_event_id(task_id: str, nonce: str) -> str:
    """A cancel record (schemas/control.py): each send its own event, like a request."""
    return f"{task_id}/cancel/{nonce}"


def replayed_request_event_id(request: OcrRequest) -> str:
    """A request sent again by `ocr-replay`, after its attempt was raised."""
    return f"{request.task_id}/{request.attempt}/replay"
