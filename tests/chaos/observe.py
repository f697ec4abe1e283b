"""Reading what the consumers published, and judging it.

Two readers: a live `TopicWatcher` that the scenarios use to time their faults and to see
when a round is done, and `read_topics`, a fresh full read up to the end offsets that the
final verdict is computed from (so the verdict does not depend on the live reader having
survived a broker restart intact).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumer.config import Settings
from consumer.settings.kafka import client_kwargs
from schemas.common import ErrorCode
from schemas.progress import ProgressEvent, TaskStatus
from schemas.result import PageResult, PageStatus


@dataclass
class Seen:
    """Records of one scenario's output topics, in partition order."""

    results: list[tuple[str, PageResult]] = field(default_factory=list)  # (key, result)
    progress: list[ProgressEvent] = field(default_factory=list)
    dlq: list[tuple[str | None, dict[str, bytes]]] = field(default_factory=list)
    unparseable: list[str] = field(default_factory=list)

    def add(self, settings: Settings, topic: str, key: bytes | None, value: bytes | None,
            headers: dict[str, bytes], where: str) -> None:
        text_key = key.decode(errors="replace") if key is not None else None
        try:
            if topic == settings.topic_results:
                if value is None or text_key is None:
                    raise ValueError("result without key or value")
                self.results.append((text_key, PageResult.model_validate_json(value)))
            elif topic == settings.topic_progress:
                if value is None:
                    raise ValueError("progress without value")
                self.progress.append(ProgressEvent.model_validate_json(value))
            elif topic == settings.topic_dlq:
                self.dlq.append((text_key, headers))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            self.unparseable.append(f"{where}: {str(exc)[:200]}")

    def finals(self, task_id: str) -> list[ProgressEvent]:
        return [e for e in self.progress if e.task_id == task_id and e.status.is_final]


def _consumer(settings: Settings, *topics: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics, **client_kwargs(settings), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", client_id=f"chaos-reader-{uuid.uuid4().hex[:6]}",
    )


def _output_topics(settings: Settings) -> tuple[str, str, str]:
    return settings.topic_results, settings.topic_progress, settings.topic_dlq


class TopicWatcher:
    """Follows results, progress and DLQ from the beginning in a background task."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer = _consumer(settings, *_output_topics(settings))
        self._task: asyncio.Task[None] | None = None
        self.seen = Seen()
        self.changed = asyncio.Event()

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._pump())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(KafkaError, OSError):
            await self._consumer.stop()

    async def _pump(self) -> None:
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=300)
            except KafkaError:
                # The broker is being killed on purpose; aiokafka reconnects by itself.
                await asyncio.sleep(0.5)
                continue
            for tp, records in batch.items():
                for r in records:
                    self.seen.add(
                        self._settings, tp.topic, r.key, r.value, dict(r.headers),
                        f"{tp.topic}[{tp.partition}]@{r.offset}",
                    )
            if batch:
                self.changed.set()


async def read_topics(settings: Settings, timeout: float = 120.0) -> Seen:
    """Everything on the output topics up to their current end offsets."""
    consumer = _consumer(settings, *_output_topics(settings))
    await consumer.start()
    seen = Seen()
    try:
        deadline = time.monotonic() + timeout
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)  # lets the subscription resolve
            if time.monotonic() > deadline:
                raise TimeoutError("no partitions assigned to the verification reader")
        # getmany above may have fetched records already; start again from the beginning.
        assignment = list(consumer.assignment())
        await consumer.seek_to_beginning(*assignment)
        ends = await consumer.end_offsets(assignment)
        while True:
            behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"verification read did not reach the end in {timeout}s")
            batch = await consumer.getmany(*assignment, timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    seen.add(settings, tp.topic, r.key, r.value, dict(r.headers),
                             f"{tp.topic}[{tp.partition}]@{r.offset}")
    finally:
        await consumer.stop()
    return seen


async def request_lag(settings: Settings) -> dict[int, int] | None:
    """Per request partition: end offset minus the group's committed offset (None when the
    broker cannot say right now). All zero means every request is finished and committed."""
    partitions = [
        TopicPartition(settings.topic_requests, p) for p in range(settings.topic_partitions)
    ]
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None)
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    try:
        await consumer.start()
        await admin.start()
        ends = await consumer.end_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(settings.group_id)
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await consumer.stop()
        with contextlib.suppress(KafkaError, OSError):
            await admin.close()
    lag = {}
    for tp in partitions:
        meta = committed.get(tp)
        position = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag[tp.partition] = ends[tp] - position
    return lag


def _judge_dead_letters(seen: Seen, wanted: list[frozenset[str]], verdict: Verdict) -> None:
    codes = [headers.get("ocr_error_code", b"?").decode() for _, headers in seen.dlq]
    unmatched = list(wanted)
    unexpected: list[str] = []
    for code in codes:
        match = next((allowed for allowed in unmatched if code in allowed), None)
        if match is None:
            unexpected.append(code)
        else:
            unmatched.remove(match)
    if unexpected:
        verdict.problems.append(f"{len(unexpected)} dead letters: {dict(Counter(unexpected))}")
    for allowed in unmatched:
        verdict.problems.append(f"missing dead letter ({' or '.join(sorted(allowed))})")


@dataclass
class ExpectedTask:
    task_id: str
    pages: int
    failed: dict[int, ErrorCode] = field(default_factory=dict)  # page -> expected code
    round: int = 0


@dataclass
class Verdict:
    tasks: int = 0
    pages: int = 0
    result_records: int = 0
    duplicates: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.lost == 0


def _content(result: PageResult) -> tuple[object, ...]:
    """What a recomputed page must repeat: the engine's answer, not timings or boxes (the
    CPU engine's floating point may differ in the last digits between runs)."""
    return (
        result.status, result.text, result.markdown, result.finish_reason,
        result.error.code if result.error else None,
    )


def judge(
    seen: Seen, expected: dict[str, ExpectedTask],
    dead_letters: list[frozenset[str]] | None = None,
) -> Verdict:
    """The end-of-scenario assertions, as a list of problems rather than the first one.

    `dead_letters`: one entry per dead letter the scenario provoked, the error codes it
    may carry; any other dead letter (or a missing one) is a problem."""
    verdict = Verdict(tasks=len(expected), pages=sum(t.pages for t in expected.values()))
    latest: dict[str, PageResult] = {}
    raw: Counter[str] = Counter()
    differing: set[str] = set()
    for key, result in seen.results:
        # A duplicate is harmless only if it says the same: a reader that kept the first
        # copy would otherwise hold another answer than the compacted topic.
        if key in latest and _content(latest[key]) != _content(result):
            differing.add(key)
        latest[key] = result  # partition order: the last one is what compaction keeps
        raw[key] += 1
        if result.task_id not in expected:
            verdict.problems.append(f"result for an unknown task: key {key}")
        elif key != f"{result.task_id}/{result.page}":
            verdict.problems.append(f"result key {key} names task/page {result.task_id}/"
                                    f"{result.page}")
    verdict.result_records = sum(raw.values())
    verdict.duplicates = verdict.result_records - len(raw)
    for key in sorted(differing):
        verdict.problems.append(f"{key}: published {raw[key]} times with different content")
    for task in expected.values():
        lost_here: list[str] = []
        want = {f"{task.task_id}/{page}" for page in range(1, task.pages + 1)}
        have = {key for key in latest if key.split("/", 1)[0] == task.task_id}
        if want - have:
            lost_here.append(f"pages missing {sorted(want - have)}")
        if have - want:
            verdict.problems.append(f"{task.task_id}: unexpected pages {sorted(have - want)}")
        for key in sorted(want & have):
            result = latest[key]
            code = task.failed.get(result.page)
            if code is None and result.status is not PageStatus.OK:
                verdict.problems.append(
                    f"{key}: status {result.status.value} "
                    f"({result.error.code.value if result.error else 'no error'})"
                )
            elif code is not None and (result.error is None or result.error.code is not code):
                verdict.problems.append(
                    f"{key}: expected {code.value}, got {result.status.value} "
                    f"{result.error.code.value if result.error else ''}".rstrip()
                )
        finals = seen.finals(task.task_id)
        if not finals:
            lost_here.append("no final progress event")
        else:
            final = finals[-1]
            if final.status is not TaskStatus.COMPLETED:
                error = final.error
                why = f"{error.code.value}: {error.message[:160]}" if error else ""
                lost_here.append(f"final status {final.status.value} ({why})")
            elif (final.pages_total, final.pages_done, final.pages_failed) != (
                task.pages, task.pages, len(task.failed)
            ):
                verdict.problems.append(
                    f"{task.task_id}: final progress says total={final.pages_total} "
                    f"done={final.pages_done} failed={final.pages_failed}, expected "
                    f"{task.pages}/{task.pages}/{len(task.failed)}"
                )
        if lost_here:
            verdict.lost += 1
            verdict.problems.append(f"LOST {task.task_id}: " + "; ".join(lost_here))
    _judge_dead_letters(seen, dead_letters or [], verdict)
    if seen.unparseable:
        verdict.problems.append(f"unparseable records: {seen.unparseable[:5]}")
    return verdict
