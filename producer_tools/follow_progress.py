"""Follow tasks on the progress topic until each is final: shared by `ocr-submit --wait` and
`ocr-watch`.

Where reading starts decides what can be missed:
- `from_beginning=False` (submit --wait): the end offsets are read and the consumer is
  positioned on them *before* the caller produces its requests, so every event published
  for those requests, however fast the OCR consumer answers, lies after the start
  position. A task that completed long ago is not missed either: the OCR consumer answers
  a duplicate request by re-announcing the final status (`replayed=True`) after it.
- `from_beginning=True` (ocr-watch --from-beginning): the task's history is read from the
  start and the latest event of each task counts; a task is reported final only once the
  history up to the end offsets taken at start has been read, so an old `completed` that a
  later (forced) re-run superseded is not taken for the answer.

Only the partitions that hold the given tasks are read: the contract puts every record
about a task on the partition of its task id (murmur2 of the task id, Kafka's default for
the key `task_id`), so following one task costs one partition, not the whole topic.
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from consumer.log import get_logger
from consumer.settings import KafkaConnection, TopicClient, client_kwargs
from producer_tools import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, ToolError
from schemas.common import ErrorCode, ErrorInfo
from schemas.dlq import DlqEnvelope
from schemas.keys import task_partition
from schemas.progress import ProgressEvent, TaskStatus

log = get_logger(__name__)

POLL_MS = 250
# Plenty for a live view; a TTY redraw per Kafka batch, not per event.
MIN_REDRAW_S = 0.1


# --- topics and partitions -----------------------------------------------------------------


async def topic_partitions(
    settings: KafkaConnection, topics: Sequence[str]
) -> dict[str, list[int]]:
    """Partition ids of each topic; raises ToolError naming a topic that does not exist."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="ocr-tools-metadata")
    await admin.start()
    try:
        # All topics rather than the named ones: a named metadata request auto-creates a
        # missing topic (with broker defaults) on clusters that allow it, which would hide a
        # misspelt --topic-* flag behind a silent wait.
        described = {t["topic"]: t for t in await admin.describe_topics()}
    finally:
        await admin.close()
    found: dict[str, list[int]] = {}
    for topic in topics:
        info = described.get(topic)
        if info is None or info["error_code"] != 0 or not info["partitions"]:
            raise ToolError(
                f"topic {topic!r} does not exist on {settings.kafka_bootstrap}; create the "
                "topics with `ocr-topics create`, or check "
                "the --topic-* flags / OCR_TOPIC_* variables"
            )
        found[topic] = sorted(p["partition"] for p in info["partitions"])
    return found


def task_partitions(topic: str, partitions: Sequence[int], task_ids: Iterable[str]) -> set[Any]:
    """The partitions of `topic` that hold the records of `task_ids` (contract partitioning)."""
    ordered = sorted(partitions)
    return {
        TopicPartition(topic, ordered[task_partition(task_id.encode(), len(ordered))])
        for task_id in task_ids
    }


# --- outcome ---------------------------------------------------------------------------------


def succeeded(event: ProgressEvent | None) -> bool:
    return (
        event is not None
        and event.status is TaskStatus.COMPLETED
        and event.pages_failed == 0
        and event.error is None
    )


def is_final(event: ProgressEvent | None) -> bool:
    return event is not None and event.status.is_final


def is_dead_letter(event: ProgressEvent) -> bool:
    """Whether `event` stands for a dead letter of the task (see dead_letter_event)."""
    return event.error is not None and event.error.message.startswith(DEAD_LETTERED)


def exit_code(latest: Mapping[str, ProgressEvent | None]) -> int:
    """1 when any task failed (or lost pages), else 2 when any is not final, else 0.

    A known failure outranks a timeout: whoever reads the code must act on the failure
    either way, and a retry loop keyed on 2 should not retry a task that already failed.
    """
    if any(is_final(event) and not succeeded(event) for event in latest.values()):
        return EXIT_FAILED
    if not all(is_final(event) for event in latest.values()):
        return EXIT_TIMEOUT
    return EXIT_OK


def failure_text(event: ProgressEvent) -> str:
    """'CODE: message' of a task that failed or completed with failed pages."""
    if event.error is not None:
        return f"{event.error.code.value}: {event.error.message}"
    if event.pages_failed:
        total = event.pages_total if event.pages_total is not None else event.pages_done
        return (
            f"{ErrorCode.PAGES_FAILED.value}: {event.pages_failed} of {total} pages failed; "
            "see their page results for each error"
        )
    return f"task ended {event.status.value} without an error code"


def pages_text(event: ProgressEvent) -> str:
    total = "?" if event.pages_total is None else str(event.pages_total)
    failed = f" ({event.pages_failed} failed)" if event.pages_failed else ""
    return f"{event.pages_done}/{total} pages{failed}"


def status_text(event: ProgressEvent | None) -> str:
    """The consumer's own message (percent, time left) when it sends one; counts else."""
    if event is None:
        return "waiting for the consumer"
    if event.message:
        text = event.message
    else:  # a consumer from before readable progress
        text = f"{event.status.value} {pages_text(event)}"
        if event.replayed:
            text += " (already done earlier)"
    if event.status is TaskStatus.FAILED or (is_final(event) and not succeeded(event)):
        text += f" - {failure_text(event)}"
    return text


def plain_line(label: str, task_id: str, event: ProgressEvent | None) -> str:
    name = task_id if label == task_id else f"{task_id} ({label})"
    return f"{name}: {status_text(event)}"


def progress_bar(done: int, total: int | None, width: int) -> str:
    if not total:
        return "[" + "·" * width + "]"
    filled = min(width, round(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def bar_line(label: str, event: ProgressEvent | None, columns: int) -> str:
    """One live row: label, bar, counts, status, cut to the terminal width."""
    bar_width = 20
    label_width = max(12, min(40, columns - bar_width - 40))
    shown = label if len(label) <= label_width else "…" + label[-(label_width - 1):]
    done = event.pages_done if event else 0
    total = event.pages_total if event else None
    line = f"{shown:<{label_width}} {progress_bar(done, total, bar_width)} {status_text(event)}"
    return line[: max(columns - 1, 20)]


# --- displays --------------------------------------------------------------------------------


class ProgressDisplay(Protocol):
    def update(self, task_id: str, event: ProgressEvent) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class PlainLines:
    """One line per event: for logs, pipes and CI, where redrawing makes no sense."""

    def __init__(self, labels: Mapping[str, str], stream: TextIO) -> None:
        self._labels = dict(labels)
        self._stream = stream

    def update(self, task_id: str, event: ProgressEvent) -> None:
        self._stream.write(plain_line(self._labels.get(task_id, task_id), task_id, event) + "\n")

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class LiveBars:
    """A progress bar per task, redrawn in place with ANSI cursor movement (TTY only)."""

    def __init__(self, labels: Mapping[str, str], stream: TextIO) -> None:
        self._labels = dict(labels)
        self._stream = stream
        self._latest: dict[str, ProgressEvent | None] = dict.fromkeys(labels)
        self._drawn = 0
        self._last_draw = 0.0

    def update(self, task_id: str, event: ProgressEvent) -> None:
        self._latest[task_id] = event

    def _rows(self) -> list[str]:
        size = shutil.get_terminal_size()
        # Moving the cursor above the top of the screen does not work, so when more tasks
        # than fit are shown, unfinished ones come first (those are the ones to watch) and
        # the rest are summarised in one row.
        room = max(size.lines - 2, 3)
        order = list(self._latest)  # input order while everything fits: rows stay put
        if len(order) > room:
            order.sort(key=lambda t: is_final(self._latest[t]))
        rows = [
            bar_line(self._labels[t], self._latest[t], size.columns) for t in order[:room]
        ]
        hidden = order[room:]
        if hidden:
            finished = sum(1 for t in hidden if is_final(self._latest[t]))
            rows.append(f"… and {len(hidden)} more tasks ({finished} final)")
        return rows

    def _draw(self) -> None:
        rows = self._rows()
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # back to the first row drawn last time
        out.extend(f"\x1b[2K{row}\n" for row in rows)
        # Rows left over from a taller previous drawing are cleared, not left as ghosts.
        extra = self._drawn - len(rows)
        if extra > 0:
            out.append("\x1b[2K\n" * extra + f"\x1b[{extra}F")
        self._stream.write("".join(out))
        self._stream.flush()
        self._drawn = len(rows)
        self._last_draw = time.monotonic()

    def flush(self) -> None:
        if self._drawn == 0 or time.monotonic() - self._last_draw >= MIN_REDRAW_S:
            self._draw()

    def close(self) -> None:
        self._draw()


def make_display(labels: Mapping[str, str], stream: TextIO | None = None) -> ProgressDisplay:
    """Live bars on a terminal, plain lines otherwise; on stderr so stdout stays parseable."""
    target = stream if stream is not None else sys.stderr
    if target.isatty():
        return LiveBars(labels, target)
    return PlainLines(labels, target)


# --- following -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowResult:
    latest: dict[str, ProgressEvent | None]

    @property
    def exit_code(self) -> int:
        return exit_code(self.latest)

    @property
    def unfinished(self) -> list[str]:
        return [task for task, event in self.latest.items() if not is_final(event)]


DEAD_LETTERED = "the request was refused and dead-lettered: "


def dead_letter_event(envelope: DlqEnvelope, task_id: str) -> ProgressEvent:
    """A refused request as the failure of its task: nothing else will ever be published."""
    message = f"{DEAD_LETTERED}{envelope.error_message}"
    return ProgressEvent(
        task_id=task_id,
        status=TaskStatus.FAILED,
        error=ErrorInfo(code=envelope.error_code, message=message[:2048]),
        consumer_id=envelope.consumer_id,
        emitted_at=envelope.failed_at,
    )


class ProgressFollower:
    """Reads the progress of a fixed set of tasks and keeps the latest event of each.

    With `dead_letters=True` the dead-letter topic is followed too, so a request the OCR
    consumer refused (invalid, or TASK_ID_CONFLICT) ends its task as failed with the DLQ
    reason instead of leaving the caller waiting for progress that never comes. Only
    meaningful from the end: an old dead letter says nothing about a later request.
    """

    def __init__(
        self,
        settings: TopicClient,
        labels: Mapping[str, str],
        display: ProgressDisplay | None = None,
        *,
        dead_letters: bool = False,
        client_id: str = "ocr-watch",
    ) -> None:
        if not labels:
            raise ValueError("ProgressFollower needs at least one task id")
        self._settings = settings
        self._labels = dict(labels)
        self._keys = {task_id.encode(): task_id for task_id in labels}
        self._display = display
        self._dead_letters = dead_letters
        self._client_id = client_id
        self._latest: dict[str, ProgressEvent | None] = dict.fromkeys(labels)
        self._catch_up: dict[Any, int] = {}
        self._consumer: Any = None

    @property
    def latest(self) -> dict[str, ProgressEvent | None]:
        return dict(self._latest)

    async def start(self, *, from_beginning: bool) -> None:
        """Fix the start position; for submit --wait, call this before producing."""
        if from_beginning and self._dead_letters:
            raise ValueError("dead letters can only be followed from the end")
        settings = self._settings
        topics = [settings.topic_progress]
        if self._dead_letters:
            topics.append(settings.topic_dlq)
        known = await topic_partitions(settings, topics)
        assigned: set[Any] = set()
        for topic in topics:
            assigned |= task_partitions(topic, known[topic], self._labels)
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"{self._client_id}-{uuid.uuid4().hex[:8]}",
        )
        await self._consumer.start()
        try:
            self._consumer.assign(sorted(assigned))
            ends = await self._consumer.end_offsets(list(assigned))
            if from_beginning:
                await self._consumer.seek_to_beginning(*assigned)
                self._catch_up = {tp: end for tp, end in ends.items() if end > 0}
            else:
                for tp, end in ends.items():
                    self._consumer.seek(tp, end)
                self._catch_up = {}
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    def _offer(self, record: Any) -> None:
        task_id = self._keys.get(record.key) if record.key is not None else None
        if task_id is None or record.value is None:
            return
        try:
            if record.topic == self._settings.topic_dlq:
                event = dead_letter_event(DlqEnvelope.model_validate_json(record.value), task_id)
            else:
                event = ProgressEvent.model_validate_json(record.value)
        except ValidationError as exc:
            # One bad record (another producer, a newer schema) must not end the watch.
            log.warning(
                "event_unreadable", topic=record.topic, partition=record.partition,
                offset=record.offset, error=str(exc).splitlines()[0],
            )
            return
        if event.task_id != task_id:
            return
        self._latest[task_id] = event
        if self._display is not None:
            self._display.update(task_id, event)

    async def _caught_up(self) -> bool:
        for tp, end in list(self._catch_up.items()):
            if await self._consumer.position(tp) >= end:
                del self._catch_up[tp]
        return not self._catch_up

    def _all_final(self) -> bool:
        return all(is_final(event) for event in self._latest.values())

    async def wait(self, limit_s: float | None = None) -> FollowResult:
        """Until every task is final or `limit_s` seconds pass (None: no limit)."""
        if self._consumer is None:
            raise RuntimeError("ProgressFollower.start() first")
        deadline = None if limit_s is None else time.monotonic() + limit_s
        try:
            while not (await self._caught_up() and self._all_final()):
                wait_ms = POLL_MS
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait_ms = max(1, min(POLL_MS, int(left * 1000)))
                batch = await self._consumer.getmany(timeout_ms=wait_ms, max_records=1000)
                for records in batch.values():
                    for record in records:
                        self._offer(record)
                if self._display is not None:
                    self._display.flush()
        finally:
            if self._display is not None:
                self._display.close()
        return FollowResult(self.latest)


def report(
    result: FollowResult,
    labels: Mapping[str, str],
    *,
    timeout: float | None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    hints: Mapping[str, str] | None = None,
    silence_hint: str | None = None,
) -> int:
    """Print one outcome line per task (failures on stderr) and return the exit code.

    `hints` maps an error code to advice; `silence_hint` is printed for a task of which no
    event at all was seen (usually: no consumer is reading the requests topic).
    """
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    for task_id, event in result.latest.items():
        label = labels.get(task_id, task_id)
        name = task_id if label == task_id else f"{task_id} ({label})"
        if succeeded(event):
            assert event is not None
            stdout.write(f"{name}: completed {pages_text(event)}\n")
        elif event is not None and is_final(event):
            stderr.write(f"error: {name}: {event.status.value}: {failure_text(event)}\n")
            hint = (hints or {}).get(event.error.code.value) if event.error else None
            if hint:
                stderr.write(f"  hint: {hint}\n")
        else:
            waited = "" if timeout is None else f" after {timeout:g} s"
            stderr.write(f"error: {name}: not final{waited}; last seen: {status_text(event)}\n")
            if event is None and silence_hint:
                stderr.write(f"  hint: {silence_hint}\n")
    stdout.flush()
    stderr.flush()
    return result.exit_code
