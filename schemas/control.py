"""Control records on the requests topic: a record with an `action` is one of these.

A record on `ocr.requests` without `action` is an `OcrRequest`. With `action` it asks the
consumers to do something about an existing task; it is keyed by the task id like every
record about that task, so it lands on the task's partition behind the request it concerns.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from schemas.common import TaskId, VersionedModel

MAX_CANCEL_REASON = 512


class ControlAction(StrEnum):
    CANCEL = "cancel"


class CancelRequest(VersionedModel):
    """Stop a task: its pages in the engine are aborted and it ends `cancelled`.

    Pages published before the cancel are kept. A later request for the same task id is
    answered as a finished task (its `cancelled` status is re-announced) unless it sets
    `force`, which starts the task again. Cancelling a task that already ended changes
    nothing.
    """

    action: Literal[ControlAction.CANCEL] = Field(
        description="What to do; 'cancel' is the only action of contract v1."
    )
    task_id: TaskId
    reason: str = Field(
        default="", max_length=MAX_CANCEL_REASON,
        description="Why, in words; echoed in the task's final progress event.",
        examples=["sent by mistake"],
    )
