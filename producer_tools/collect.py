"""`ocr-collect`: a downstream consumer that turns the results + progress topics into files.

    ocr-collect [--out DIR] [--group G] [--once] [--task TASK_ID ...] [--layout seed]

It reads both topics in one consumer group (default "ocr-collect"), buffers each task's page
results (latest per page: highest attempt, then highest offset), and when the task's
progress turns final (completed, failed or cancelled) writes

    DIR/<task_id>/document.md   pages in order, each after a `<!-- page N -->` marker
    DIR/<task_id>/pages.json    every page result as JSON
    DIR/<task_id>/status.json   the final progress event (why a task failed)
    DIR/<task_id>/images/       the figures, downloaded from the artifact store
    DIR/<task_id>.zip           all of the above plus page-0001.md, page-0002.md, ...

(with --layout seed: DIR/<task_id>/{result.md, raw.json, images/, result.zip}, the files of
the DeepSeek-OCR app; see task_files.py), then forgets the task and commits. Figures are
read from the store OCR_ARTIFACTS_URI names (the consumer's), and the Markdown links to
the downloaded files, so document.md renders inside the unpacked ZIP.

Memory holds only tasks whose final status is still to come; a task whose consumer died
for good (no resume, no final status) stays buffered until the collector restarts, so
memory is bounded by the number of open tasks, not by history. A task's figures are held
while its files are written.

A partition's committed offset never passes a record of a task not yet written, so a
crash or rebalance re-reads what was not materialised; writing is idempotent (atomic
replace, deterministic zip) and merges with an earlier pages.json, so a replay that
re-sends only some pages, or only re-announces the final status, still yields every page.

Results and progress of a task sit on the same partition number of their topics (the
contract's task-id partitioning), and the range assignor hands partition N of both topics
to one member: several collectors in a group therefore need equal partition counts on the
two topics. --once reads to the current end and exits (scripts, tests).

The files themselves are task_files.py's; the one-shot `read_task_results` is also used by
`ocr-submit --out`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError
from pydantic import ValidationError

from consumer.artifacts.store import open_artifact_store
from consumer.log import get_logger
from consumer.settings import (
    ArtifactStoreSettings,
    GroupMembership,
    Logging,
    TopicClient,
    add_settings_arguments,
    add_version_argument,
    client_kwargs,
)
from producer_tools import EXIT_OK, ToolError, run_cli
from producer_tools.follow_progress import task_partitions, topic_partitions
from producer_tools.task_files import (
    LatestPages,
    Layout,
    fetch_figures,
    merged_results,
    write_task_files,
)
from schemas.keys import key_task_id
from schemas.progress import ProgressEvent
from schemas.result import PageResult

log = get_logger(__name__)


class CollectSettings(TopicClient, GroupMembership, ArtifactStoreSettings, Logging):
    """What ocr-collect reads (its group is --group, not the consumer's OCR_GROUP_ID)."""

POLL_MS = 500
ASSIGNMENT_TIMEOUT_S = 60.0


# --- one-shot reading (ocr-submit --out) --------------------------------------------------------


async def _scan_results(
    settings: TopicClient, partitions: Iterable[Any], latest: Mapping[str, LatestPages]
) -> None:
    """Read `partitions` of the results topic from the beginning to their current end."""
    assigned = sorted(partitions)
    if not assigned:
        return
    keys = {task_id.encode(): task_id for task_id in latest}
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"ocr-results-reader-{uuid.uuid4().hex[:8]}",
    )
    await consumer.start()
    try:
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        remaining = {tp: end for tp, end in ends.items() if end > 0}
        while remaining:
            batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=1000)
            for records in batch.values():
                for record in records:
                    if record.key is None or record.value is None:
                        continue
                    task_id = keys.get(key_task_id(record.key))
                    if task_id is None:
                        continue
                    try:
                        result = PageResult.model_validate_json(record.value)
                    except ValidationError as exc:
                        log.warning(
                            "result_unreadable", partition=record.partition,
                            offset=record.offset, error=str(exc).splitlines()[0],
                        )
                        continue
                    if result.task_id == task_id:
                        latest[task_id].offer(result, record.offset)
            for tp, end in list(remaining.items()):
                if await consumer.position(tp) >= end:
                    del remaining[tp]
    finally:
        await consumer.stop()


async def read_task_results(
    settings: TopicClient, expected_pages: Mapping[str, int | None]
) -> dict[str, list[PageResult]]:
    """The latest result of every page of the given tasks, read from the results topic.

    Cost: the results topic is keyed `task_id/page` and compacted, and cannot be looked up
    by key, so the partition(s) holding these tasks are read from their beginning: about
    one record per page ever processed on that partition (plus the not yet compacted
    tail), i.e. 1/partitions of the topic. Should a task have fewer pages there than its
    progress announced (a publisher that ignored the contract's partitioning), the other
    partitions are read too. For continuous downstream use run `ocr-collect` instead.
    """
    topic = settings.topic_results
    partitions = (await topic_partitions(settings, [topic]))[topic]
    latest = {task_id: LatestPages() for task_id in expected_pages}
    home = task_partitions(topic, partitions, latest)
    await _scan_results(settings, home, latest)
    short = [
        task_id for task_id, total in expected_pages.items()
        if total is not None and len(latest[task_id]) < total
    ]
    if short:
        log.warning(
            "results_missing_on_task_partition", tasks=short,
            hint="reading every partition of the results topic",
        )
        others = {TopicPartition(topic, p) for p in partitions} - home
        await _scan_results(settings, others, {t: latest[t] for t in short})
    return {task_id: pages.results() for task_id, pages in latest.items()}


# --- the collector ---------------------------------------------------------------------------


@dataclass(slots=True)
class _OpenTask:
    pages: LatestPages = field(default_factory=LatestPages)
    # First offset of this task's records per partition: commits must stay at or below it.
    first_offsets: dict[Any, int] = field(default_factory=dict)
    final: ProgressEvent | None = None
    # End offset of the task's results partition when its final status was read: every
    # result was published (and acked) before the final status, so it lies below.
    results_end: int | None = None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        self._collector.forget()

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        self._collector.assignment_changed()


class Collector:
    def __init__(
        self,
        settings: CollectSettings,
        out_dir: Path,
        *,
        group: str,
        once: bool = False,
        tasks: Iterable[str] | None = None,
        layout: Layout = Layout.DEFAULT,
    ) -> None:
        self._settings = settings
        self._out = out_dir
        self._layout = layout
        self._store = open_artifact_store(settings)
        self._group = group
        self._once = once
        self._wanted = set(tasks) if tasks else None
        self._open: dict[str, _OpenTask] = {}
        self._committed: dict[Any, int] = {}
        self._once_ends: dict[Any, int] | None = None
        self._results_partitions: list[int] = []
        self.written: list[str] = []
        self._consumer: Any = None

    # Called by the rebalance listener: the new owner (maybe us) re-reads from the committed
    # offsets, which never pass an unwritten task, so dropping everything loses nothing.
    def forget(self) -> None:
        self._open.clear()
        self._committed.clear()
        self._once_ends = None

    def assignment_changed(self) -> None:
        self._once_ends = None

    def _wants(self, task_id: str) -> bool:
        return self._wanted is None or task_id in self._wanted

    def _offer(self, record: Any) -> str | None:
        """Buffer one record; returns the task id when it carried a final status."""
        if record.key is None or record.value is None:
            return None
        settings = self._settings
        key_task = key_task_id(record.key).decode("utf-8", "replace")
        if not self._wants(key_task):
            return None  # cheap skip before parsing: keys carry the task id
        tp = _tp(record)
        try:
            if record.topic == settings.topic_results:
                result = PageResult.model_validate_json(record.value)
                task = self._open.setdefault(result.task_id, _OpenTask())
                task.first_offsets.setdefault(tp, record.offset)
                task.pages.offer(result, record.offset)
                return None
            event = ProgressEvent.model_validate_json(record.value)
        except ValidationError as exc:
            log.warning(
                "event_unreadable", topic=record.topic, partition=record.partition,
                offset=record.offset, error=str(exc).splitlines()[0],
            )
            return None
        if not event.status.is_final:
            return None  # nothing to keep: only the final status triggers a write
        task = self._open.setdefault(event.task_id, _OpenTask())
        task.first_offsets.setdefault(tp, record.offset)
        task.final = event
        task.results_end = None
        return event.task_id

    def _results_tp(self, task_id: str) -> Any:
        (tp,) = task_partitions(self._settings.topic_results, self._results_partitions, [task_id])
        return tp

    async def _snapshot_results_ends(self, task_ids: Sequence[str]) -> None:
        tps = {self._results_tp(t) for t in task_ids}
        ends = await self._consumer.end_offsets(sorted(tps))
        for task_id in task_ids:
            task = self._open.get(task_id)
            if task is not None and task.final is not None:
                task.results_end = ends[self._results_tp(task_id)]

    async def _ready(self, task_id: str, task: _OpenTask) -> bool:
        if task.final is None or task.results_end is None:
            return False
        tp = self._results_tp(task_id)
        if tp not in self._consumer.assignment():
            log.warning(
                "results_partition_elsewhere", task_id=task_id, partition=tp.partition,
                hint="give the results and progress topics the same partition count so "
                "one collector gets both halves of a task",
            )
            return True
        position: int = await self._consumer.position(tp)
        return position >= task.results_end

    async def _write_ready(self) -> None:
        for task_id, task in list(self._open.items()):
            try:
                ready = await self._ready(task_id, task)
            except IllegalStateError:
                continue  # the partition moved away during the await; the new owner writes
            if not ready or self._open.get(task_id) is not task:
                continue
            assert task.final is not None
            if not task.pages and task.final.replayed:
                log.info("task_reannounced", task_id=task_id, status=task.final.status.value)
            results = await asyncio.to_thread(merged_results, self._out, task_id, task.pages)
            figures = await fetch_figures(results, self._store)
            path = await asyncio.to_thread(
                write_task_files, self._out, task_id, task.pages, task.final,
                figures=figures, layout=self._layout,
            )
            log.info(
                "task_written", task_id=task_id, status=task.final.status.value,
                pages=len(task.pages), path=str(path),
            )
            print(f"{task_id}: {task.final.status.value}, {len(task.pages)} pages -> {path}")
            self._open.pop(task_id, None)
            self.written.append(task_id)

    async def _commit(self) -> None:
        assignment = self._consumer.assignment()
        offsets: dict[Any, int] = {}
        for tp in assignment:
            held = [
                t.first_offsets[tp] for t in self._open.values() if tp in t.first_offsets
            ]
            offset = min(held) if held else await self._consumer.position(tp)
            if self._committed.get(tp) != offset:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance is under way; the next owner starts from the last good commit.
            log.warning("commit_skipped", error=repr(exc))
            return
        self._committed.update(offsets)

    async def _once_done(self, started: float) -> bool:
        assignment = self._consumer.assignment()
        if not assignment:
            if time.monotonic() - started > ASSIGNMENT_TIMEOUT_S:
                raise ToolError(
                    f"no partitions of {self._settings.topic_results} / "
                    f"{self._settings.topic_progress} were assigned to group {self._group!r} "
                    f"within {ASSIGNMENT_TIMEOUT_S:.0f} s; other members of the group may "
                    "hold them all (use another --group)"
                )
            return False
        if self._once_ends is None:
            self._once_ends = await self._consumer.end_offsets(sorted(assignment))
        for tp, end in self._once_ends.items():
            if tp in assignment and await self._consumer.position(tp) < end:
                return False
        # A final status read at the very end may still wait for its results to arrive.
        return not any(task.final is not None for task in self._open.values())

    async def run(self) -> int:
        settings = self._settings
        topics = [settings.topic_results, settings.topic_progress]
        known = await topic_partitions(settings, topics)
        self._results_partitions = known[settings.topic_results]
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(settings),
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=settings.session_timeout_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            client_id=f"ocr-collect-{uuid.uuid4().hex[:8]}",
        )
        self._consumer.subscribe(topics, listener=_Rebalance(self))
        await self._consumer.start()
        started = time.monotonic()
        try:
            while True:
                batch = await self._consumer.getmany(timeout_ms=POLL_MS, max_records=500)
                finals = []
                for records in batch.values():
                    for record in records:
                        task_id = self._offer(record)
                        if task_id is not None:
                            finals.append(task_id)
                if finals:
                    await self._snapshot_results_ends(finals)
                await self._write_ready()
                await self._commit()
                if self._once:
                    if await self._once_done(started):
                        break
                elif self._wanted is not None and self._wanted <= set(self.written):
                    break
        finally:
            try:
                await self._commit()
            finally:
                await self._consumer.stop()
        return EXIT_OK


def _tp(record: Any) -> Any:
    return TopicPartition(record.topic, record.partition)


# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-collect",
        description="Materialise OCR results: when a task's progress turns final, write "
        "DIR/<task_id>/document.md, pages.json, status.json, images/ and DIR/<task_id>.zip "
        "(figures downloaded from OCR_ARTIFACTS_URI), then commit. Runs as a member of a "
        "consumer group until stopped (or --once).",
        allow_abbrev=False,
    )
    add_version_argument(parser)
    parser.add_argument(
        "--out", type=Path, default=Path("ocr-results"), metavar="DIR",
        help="output directory (default: ./ocr-results)",
    )
    parser.add_argument(
        "--group", default="ocr-collect", metavar="G",
        help="consumer group of the collector (default: ocr-collect)",
    )
    parser.add_argument(
        "--once", action="store_true",
        help="read to the current end of both topics, write what is final, commit and exit",
    )
    parser.add_argument(
        "--task", action="extend", nargs="+", default=None, metavar="TASK_ID",
        help="only these tasks; without --once, exit once all are written",
    )
    parser.add_argument(
        "--layout", choices=[layout.value for layout in Layout], default=Layout.DEFAULT.value,
        help="default: document.md, pages.json, status.json, images/ and <task>.zip; seed: "
        "result.md (<!-- page:N --> markers, pages joined by ---), raw.json, images/ and "
        "result.zip, as the DeepSeek-OCR app writes them",
    )
    add_settings_arguments(parser, CollectSettings)
    return parser


async def run(args: argparse.Namespace, settings: CollectSettings) -> int:
    collector = Collector(
        settings, args.out, group=args.group, once=args.once, tasks=args.task,
        layout=Layout(args.layout),
    )
    return await collector.run()


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv, CollectSettings)


if __name__ == "__main__":
    raise SystemExit(main())
