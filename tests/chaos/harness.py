"""One scenario's world: its own topics, group, Redis prefix and consumer processes.

A `Harness` gives the scenario functions (scenarios.py) what they need to inject faults at
the right moment (submit a batch, wait until it is mid-document, start/kill/stop members)
and, at the end, computes the scenario's verdict from a full read of its topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiokafka import AIOKafkaProducer

from consumer.config import Settings
from consumer.settings import topic_fields
from consumer.settings.kafka import client_kwargs
from producer_tools.topic_admin import ensure_topics
from schemas.common import ErrorCode
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import OcrRequest, Source
from schemas.topics import TopicNames
from tests.chaos.observe import ExpectedTask, TopicWatcher, judge, read_topics, request_lag
from tests.chaos.procs import ConsumerProcess, parse_events
from tests.chaos.stack import ChaosStack, clean_environment

# Consumer settings of the suite (the rest are the defaults). Shorter than production where
# production values would only make the suite wait: a dead member leaves the group after
# the session timeout (6 s, the broker's minimum) and a dead owner's task lease expires
# after LEASE_TTL_S instead of a minute.
GRACE_S = 8.0  # OCR_SHUTDOWN_GRACE_S
# SIGTERM to exit: the drain's grace, then cancel leftovers (up to 10 s for a task stuck in
# a cancelled await), commit, leave the group, flush the producer, close the engine (which
# waits for the one onnxruntime call that cannot be interrupted).
EXIT_MARGIN_S = 12.0
LEASE_TTL_S = 10
SESSION_TIMEOUT_MS = 6000
COMMIT_INTERVAL_S = 0.5
ROUND_TIMEOUT_S = 300.0
MID_BATCH_TIMEOUT_S = 180.0
# Warning-level events worth counting per scenario (what the faults should provoke).
NOTABLE_EVENTS = (
    "publish_retry", "redis_unavailable", "commit_failed", "service_unreachable",
    "task_lease_busy", "task_interrupted", "lease_refresh_failed", "task_crashed",
    "page_crashed", "page_failed", "task_failed", "render_worker_lost",
    "request_dead_lettered", "task_duplicate",
)


@dataclass
class Suite:
    """What every scenario shares."""

    stack: ChaosStack
    run_id: str
    seed: int
    rounds: int
    blob_dir: Path
    log_dir: Path
    documents: dict[int, Path]  # page count -> PDF
    echo: Callable[[str], None]
    log_stream: TextIO  # the suite's own log (stack.sh output, in-process structlog)
    processes: list[ConsumerProcess] = field(default_factory=list)  # for last-resort cleanup


@dataclass
class ScenarioResult:
    name: str
    description: str
    passed: bool
    rounds: int
    tasks: int
    pages: int
    kills: int
    faults: int
    missed: int  # faults that landed after the work they aimed at had finished
    duplicates: int
    lost: int
    result_records: int
    wall_s: float
    round_s: list[float]
    problems: list[str]
    timeline: list[str]
    log_events: dict[str, int]
    extra: dict[str, Any]
    log_excerpt: list[str]
    # Set when the scenario is known to fail until a named fix lands (phase 2 of issue 16).
    known_issue: str | None = None

    @property
    def verdict(self) -> str:
        """PASS, FAIL, XFAIL (failed as known) or XPASS (a known failure passed: the fix
        landed, so its marker must go; it counts as a failure until then)."""
        if self.known_issue is None:
            return "PASS" if self.passed else "FAIL"
        return "XPASS" if self.passed else "XFAIL"

    @property
    def counts_as_failure(self) -> bool:
        return self.verdict in ("FAIL", "XPASS")

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "verdict": self.verdict}


class Harness:
    def __init__(self, suite: Suite, name: str, description: str) -> None:
        self.suite = suite
        self.name = name
        self.description = description
        # One generator per scenario: running a subset of scenarios, or in another order,
        # gives each the same draws.
        self.rng = random.Random(f"{suite.seed}/{name}")
        self.rounds = suite.rounds
        namespace = f"chaos-{suite.run_id}-{name}"
        self.settings = Settings(
            kafka_bootstrap=suite.stack.bootstrap,
            redis_url=suite.stack.redis_url,
            **topic_fields(TopicNames().with_prefix(namespace)),
            topic_partitions=6,
            group_id=namespace,
            redis_key_prefix=f"{namespace}:",
            consumer_id=f"{name}-inproc",
            file_roots=[suite.blob_dir],
            metrics_port=0,
            commit_interval_s=COMMIT_INTERVAL_S,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            lease_ttl_s=LEASE_TTL_S,
            shutdown_grace_s=GRACE_S,
            render_workers=1,
        )
        self.log_dir = suite.log_dir / name
        self.consumers: list[ConsumerProcess] = []
        self.inprocess_log: Path | None = None  # set by a scenario running an in-process App
        self.expected: dict[str, ExpectedTask] = {}
        self.kills = 0
        self.faults = 0
        # Faults aimed at a document in progress, and those that found it finished already
        # (the engine was quicker than the plan's wait): a missed fault tests nothing.
        self.aimed = 0
        self.missed = 0
        self.problems: list[str] = []
        self.timeline: list[str] = []
        self.round_s: list[float] = []
        self.extra: dict[str, Any] = {}
        self.expect_no_duplicates = False
        # Dead letters the scenario provokes on purpose: the codes each may carry.
        self.dead_letters: list[frozenset[str]] = []
        # Why the scenario is expected to fail for now (it is then reported XFAIL).
        self.known_issue: str | None = None
        # OCR_* variables of this scenario's consumers on top of the suite's.
        self.consumer_overrides: dict[str, str] = {}
        self._crash_reported: set[int] = set()
        self._started = time.monotonic()
        self._watcher = TopicWatcher(self.settings)
        self._producer: AIOKafkaProducer | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def setup(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await ensure_topics(self.settings, self.settings.topic_specs())
        self._producer = AIOKafkaProducer(
            **client_kwargs(self.settings), acks="all", enable_idempotence=True
        )
        await self._producer.start()
        await self._watcher.start()

    async def close(self) -> None:
        """Stop what the scenario started (idempotent; also on interruption)."""
        await self.stop_all()
        await self._watcher.stop()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def finish(self) -> ScenarioResult:
        """Stop what the scenario started, read its topics in full and judge them."""
        await self.close()
        verdict = None
        try:
            seen = await read_topics(self.settings)
            verdict = judge(seen, self.expected, self.dead_letters)
        except Exception as exc:  # the verdict must be reported even when reading fails
            self.problem(f"verification read failed: {exc!r}")
        missed_all = self.missed_everything()
        if missed_all:
            self.problem(missed_all)
        if verdict is not None:
            self.problems.extend(verdict.problems)
            if self.expect_no_duplicates and verdict.duplicates:
                self.problem(
                    f"{verdict.duplicates} pages were published twice, but a graceful stop "
                    "must leave finished pages recorded (none recomputed)"
                )
        events = self._events()
        counts = Counter(
            e["event"] for e in events if e.get("event") in NOTABLE_EVENTS
        )
        passed = not self.problems and verdict is not None and verdict.lost == 0
        return ScenarioResult(
            name=self.name,
            description=self.description,
            passed=passed,
            rounds=len(self.round_s),
            tasks=len(self.expected),
            pages=sum(t.pages for t in self.expected.values()),
            kills=self.kills,
            faults=self.faults,
            missed=self.missed,
            duplicates=verdict.duplicates if verdict else -1,
            lost=verdict.lost if verdict else len(self.expected),
            result_records=verdict.result_records if verdict else -1,
            wall_s=round(time.monotonic() - self._started, 1),
            round_s=[round(s, 1) for s in self.round_s],
            problems=self.problems,
            timeline=self.timeline,
            log_events=dict(sorted(counts.items())),
            extra=self.extra,
            log_excerpt=[] if passed else self._excerpt(events),
            known_issue=self.known_issue,
        )

    def _log_files(self) -> list[tuple[str, Path]]:
        files = [(f"{c.consumer_id}/{c.pid}", c.log_path) for c in self.consumers]
        if self.inprocess_log is not None:
            files.append((self.settings.consumer_id or "inproc", self.inprocess_log))
        return files

    def _events(self) -> list[dict[str, Any]]:
        events = []
        for consumer_id, path in self._log_files():
            for event in parse_events(path):
                event.setdefault("consumer", consumer_id)
                events.append(event)
        return events

    def _excerpt(self, events: list[dict[str, Any]], limit: int = 40) -> list[str]:
        """Warnings and errors of the consumers, for the report of a failed scenario."""
        lines = []
        for e in events:
            if e.get("level") in ("warning", "error", "critical") or e.get("exception"):
                shown = {k: v for k, v in e.items() if k not in ("level", "timestamp")}
                exception = str(shown.pop("exception", ""))[-600:]
                lines.append(
                    f"{e.get('timestamp', '')} {e.get('level', '')} "
                    + json.dumps(shown, default=str)[:400]
                    + (f" | {exception}" if exception else "")
                )
        return sorted(lines)[-limit:]

    # -- bookkeeping -----------------------------------------------------------------------

    def note(self, message: str) -> None:
        line = f"+{time.monotonic() - self._started:6.1f}s {message}"
        self.timeline.append(line)
        self.suite.echo(f"    {line}")

    def problem(self, message: str) -> None:
        self.problems.append(message)
        self.note(f"PROBLEM: {message}")

    def aim(self, *, missed: bool, what: str) -> None:
        """Count a fault aimed at work in progress; `missed`: the work had finished."""
        self.aimed += 1
        if missed:
            self.missed += 1
            self.note(f"MISSED: {what}; this round's fault hits no work in progress")

    def missed_everything(self) -> str | None:
        """A problem when every aimed fault missed: such a scenario proved nothing, however
        clean its verdict (the seed stays fixed, so the plans are the same on every run)."""
        if not self.aimed or self.missed < self.aimed:
            return None
        return (
            f"all {self.aimed} faults landed after the work they aimed at had finished, so "
            "no recovery was tested; the engine outpaced the plans' waits (a faster machine?)"
        )

    # -- consumers -------------------------------------------------------------------------

    def consumer_env(self, consumer_id: str, *, static: bool = False) -> dict[str, str]:
        s = self.settings
        env = clean_environment()
        if static:
            # As deployed on Kubernetes: the pod name is both the consumer id and the static
            # group member id, so a container restarted in place rejoins as the same member.
            env["OCR_GROUP_INSTANCE_ID"] = consumer_id
        env.update(
            OCR_ENGINE="rapidocr",
            OCR_KAFKA_BOOTSTRAP=s.kafka_bootstrap,
            OCR_REDIS_URL=s.redis_url,
            OCR_CONSUMER_ID=consumer_id,
            OCR_GROUP_ID=s.group_id,
            OCR_TOPIC_REQUESTS=s.topic_requests,
            OCR_TOPIC_RESULTS=s.topic_results,
            OCR_TOPIC_PROGRESS=s.topic_progress,
            OCR_TOPIC_TIMING=s.topic_timing,
            OCR_TOPIC_DLQ=s.topic_dlq,
            OCR_REDIS_KEY_PREFIX=s.redis_key_prefix,
            OCR_FILE_ROOTS=",".join(str(root) for root in s.file_roots),
            OCR_METRICS_PORT="0",
            OCR_LOG_FORMAT="json",
            OCR_SESSION_TIMEOUT_MS=str(s.session_timeout_ms),
            OCR_LEASE_TTL_S=str(s.lease_ttl_s),
            OCR_SHUTDOWN_GRACE_S=str(s.shutdown_grace_s),
            OCR_COMMIT_INTERVAL_S=str(s.commit_interval_s),
            OCR_RENDER_WORKERS=str(s.render_workers),
        )
        env.update(self.consumer_overrides)
        return env

    async def start_consumer(
        self, consumer_id: str | None = None, *, static: bool = False, wait_joined: bool = False
    ) -> ConsumerProcess:
        """A new member (a new id), or `consumer_id` again: a restart in place."""
        ids = {c.consumer_id for c in self.consumers}
        if consumer_id is None:
            consumer_id = f"{self.name}-c{len(ids) + 1}"
        generation = sum(1 for c in self.consumers if c.consumer_id == consumer_id)
        log_name = f"{consumer_id}.log" if not generation else f"{consumer_id}.{generation}.log"
        process = ConsumerProcess(
            consumer_id, self.consumer_env(consumer_id, static=static), self.log_dir / log_name
        )
        process.static = static
        await process.start()
        self.consumers.append(process)
        self.suite.processes.append(process)
        self.note(
            f"{'restarted' if generation else 'started'} {consumer_id} (pid {process.pid}"
            f"{', static member' if static else ''})"
        )
        if wait_joined:
            if await process.wait_logged("partitions_assigned", 120.0):
                self.note(f"{consumer_id} joined the group")
            else:
                self.problem(f"{consumer_id} did not join the group within 120 s")
        return process

    def alive(self) -> list[ConsumerProcess]:
        return [c for c in self.consumers if c.alive and not c.stopped_by_us]

    def check_crashes(self) -> None:
        for c in self.consumers:
            if c.returncode is not None and not c.stopped_by_us and c.pid not in (
                self._crash_reported
            ):
                self._crash_reported.add(c.pid)
                self.problem(
                    f"consumer {c.consumer_id} (pid {c.pid}) exited by itself with code "
                    f"{c.returncode}; last log lines: {c.tail(8)}"
                )

    async def stop_consumer(self, process: ConsumerProcess) -> float | None:
        """SIGTERM and check the exit: within the grace plus margin, with status 0, drained."""
        limit = GRACE_S + EXIT_MARGIN_S
        took = await process.stop(limit)
        if took is None:
            self.problem(
                f"{process.consumer_id} did not exit within {limit:.0f} s of SIGTERM "
                f"(OCR_SHUTDOWN_GRACE_S={GRACE_S:g} + {EXIT_MARGIN_S:g} s); SIGKILLed"
            )
        elif process.returncode != 0:
            self.problem(f"{process.consumer_id} exited with code {process.returncode} "
                         "after SIGTERM")
        elif not process.has_logged("consumer_stopped") and process.has_logged(
            "consumer_started"
        ):
            self.problem(f"{process.consumer_id} exited without logging consumer_stopped")
        return took

    async def stop_all(self) -> None:
        running = [c for c in self.consumers if c.alive]
        for c in running:
            c.stopped_by_us = True
        await asyncio.gather(*(c.stop(GRACE_S + EXIT_MARGIN_S) for c in running))
        for c in self.consumers:
            c.reap_children()

    def pick_victim(self, consumer_id: str | None, fallback: float) -> ConsumerProcess:
        alive = self.alive()
        for c in alive:
            if c.consumer_id == consumer_id:
                return c
        return alive[int(fallback * len(alive)) % len(alive)]

    # -- work ------------------------------------------------------------------------------

    async def send_raw(
        self, value: bytes | None, key: bytes | None, *, compression: str | None = None,
        partition: int | None = None,
    ) -> int:
        """One record as a hostile or foreign producer would send it; returns its partition."""
        producer = AIOKafkaProducer(
            **client_kwargs(self.settings), acks="all", compression_type=compression,
            max_request_size=8 * 1024 * 1024,
        )
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                self.settings.topic_requests, value=value, key=key, partition=partition
            )
        finally:
            await producer.stop()
        return int(sent.partition)

    async def send_request(
        self, round_no: int, index: int, pages: int, *, partition: int | None = None,
        compression: str | None = None,
    ) -> ExpectedTask:
        """A valid request for one of the suite's text PDFs, sent raw (a chosen partition
        or codec) and expected to complete."""
        task_id = self.task_id(round_no, index)
        await self.send_raw(
            self.request_value(task_id, pages), task_id.encode(), compression=compression,
            partition=partition,
        )
        task = ExpectedTask(task_id, pages, round=round_no + 1)
        self.expected[task_id] = task
        return task

    def request_value(
        self, task_id: str, pages: int, documents: dict[int, Path] | None = None
    ) -> bytes:
        """A request for the suite's document of `pages` pages (or `documents`' one)."""
        document = (documents or self.suite.documents)[pages]
        request = OcrRequest(task_id=task_id, source=Source(uri=document.as_uri()))
        return request.model_dump_json().encode()

    def task_id(self, round_no: int, index: int) -> str:
        return f"{self.name}-{self.suite.run_id}-r{round_no + 1}-t{index + 1}"

    async def submit(
        self, round_no: int, pages: list[int], failed: dict[int, ErrorCode] | None = None,
        *, documents: dict[int, Path] | None = None, first_index: int = 0,
    ) -> list[ExpectedTask]:
        """Publish one request per entry of `pages` (its page count); `failed` names the
        pages expected to fail in every task, with their error codes. `documents` picks
        the file of each page count (default: the suite's text PDFs)."""
        assert self._producer is not None
        batch = []
        for index, count in enumerate(pages, start=first_index):
            task_id = self.task_id(round_no, index)
            await self._producer.send_and_wait(
                self.settings.topic_requests,
                value=self.request_value(task_id, count, documents), key=task_id.encode(),
            )
            task = ExpectedTask(task_id, count, dict(failed or {}), round=round_no + 1)
            self.expected[task_id] = task
            batch.append(task)
        self.note(
            f"round {round_no + 1}: submitted {len(batch)} tasks, "
            f"{sum(pages)} pages ({', '.join(map(str, pages))})"
        )
        return batch

    def done(self, task: ExpectedTask) -> bool:
        return bool(self._watcher.seen.finals(task.task_id))

    async def wait_started(self, task: ExpectedTask, timeout_s: float) -> bool:
        """Until the task is past its start (document open, pages in progress) or final."""
        return await self._until(
            lambda: any(
                e.task_id == task.task_id and e.status is not TaskStatus.QUEUED
                for e in self._watcher.seen.progress
            ),
            timeout_s,
        )

    async def wait_done(self, task: ExpectedTask, timeout_s: float) -> bool:
        """Until the task has a final status (True) or `timeout_s` passed (False)."""
        return await self._until(lambda: self.done(task), timeout_s)

    async def _until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Until `condition()` holds (True) or `timeout_s` passed (False), checked whenever
        the watcher sees a record, and at least once a second."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._watcher.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watcher.changed.wait(), min(left, 1.0))
        return True

    def _page_done_events(self, task: ExpectedTask) -> list[ProgressEvent]:
        return [
            e for e in self._watcher.seen.progress
            if e.task_id == task.task_id and e.status is TaskStatus.PAGE_DONE
        ]

    async def until_mid_document(
        self, batch: list[ExpectedTask], target: int, after_pages: int, extra_s: float
    ) -> tuple[str | None, str]:
        """Wait until task `batch[target]` has `after_pages` pages published (and pages
        left), then `extra_s` more; returns (the consumer working on it, a description)."""
        task = batch[target]
        deadline = time.monotonic() + MID_BATCH_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_crashes()
            events = self._page_done_events(task)
            if self.done(task) or (events and events[-1].pages_done >= after_pages):
                break
            self._watcher.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watcher.changed.wait(), 1.0)
        else:
            self.problem(
                f"{task.task_id} did not reach {after_pages} pages in {MID_BATCH_TIMEOUT_S:.0f} s"
            )
        await asyncio.sleep(extra_s)
        events = self._page_done_events(task)
        if not events:
            self.aim(missed=self.done(task), what=f"{task.task_id} ended without a page done")
            return None, f"{task.task_id} has no page done yet"
        last = events[-1]
        finished = self.done(task) or last.pages_done >= task.pages
        where = f"{task.task_id} at {last.pages_done}/{task.pages} pages"
        self.aim(missed=finished, what=f"{where}, finished before the fault")
        return last.consumer_id, f"{'done' if finished else 'mid-document'}: {where}"

    async def wait_round(
        self, batch: list[ExpectedTask], started: float, *, timeout_s: float = ROUND_TIMEOUT_S,
        restarts: int = 0,
    ) -> bool:
        """Until every task of the batch has a final status and the group has committed
        every request (no stuck partition); records a problem on timeout. `restarts`: a
        consumer that exits by itself is started again (same id) up to this many times,
        as Kubernetes would; each exit is still a problem."""
        deadline = time.monotonic() + timeout_s
        lag: dict[int, int] | None = None
        while time.monotonic() < deadline:
            self.check_crashes()
            for crashed in [c for c in self.consumers if c.returncode is not None
                            and not c.stopped_by_us]:
                crashed.stopped_by_us = True  # reported once, restarted once
                if restarts > 0:
                    restarts -= 1
                    await self.start_consumer(crashed.consumer_id, static=crashed.static)
            if self.inprocess_log is None and not self.alive():
                self.problem("no consumer left alive while tasks are unfinished")
                return False
            if all(self.done(t) for t in batch):
                lag = await request_lag(self.settings)
                if lag is not None and not any(lag.values()):
                    self.round_s.append(time.monotonic() - started)
                    self.note(f"round {batch[0].round}: all {len(batch)} tasks final, "
                              "offsets committed to the end")
                    return True
            await asyncio.sleep(0.5)
        missing = [t.task_id for t in batch if not self.done(t)]
        self.problem(
            f"round {batch[0].round} not done within {timeout_s:.0f} s: tasks without "
            f"a final status {missing}; uncommitted requests per partition {lag}"
        )
        self.round_s.append(time.monotonic() - started)
        return False
