"""Cancelling tasks on the real broker and Redis: the cancel record as ocr-cancel publishes
it, read by the real consumer, stops the task on whichever member runs it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from consumer.app import App
from consumer.config import Settings
from producer_tools import EXIT_OK, cancel
from producer_tools.cancel import cancel_records, publish_cancels
from schemas.common import ErrorCode
from schemas.headers import DLQ_ERROR_CODE
from schemas.keys import task_partition
from schemas.progress import ProgressEvent, TaskStatus
from schemas.result import PageStatus
from tests.support.apps import running_app
from tests.support.documents import file_request, make_pdf
from tests.support.engines import ScriptedEngine
from tests.support.kafka import (
    TopicReader,
    committed_offsets,
    produce_raw,
    produce_requests,
    wait_until,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6  # the `topics` fixture's default


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={
            "file_roots": [tmp_path], "metrics_port": 0, "commit_interval_s": 0.2,
            "max_inflight_pages": 4,
        }
    )


def _inflight_pages(app: App) -> float:
    value = app.metrics.registry.get_sample_value("ocr_inflight_pages")
    return 0.0 if value is None else value


async def _committed_soon(settings: Settings, expected: dict[int, int]) -> dict[int, int]:
    committed: dict[int, int] = {}
    for _ in range(50):
        committed = await committed_offsets(settings)
        if all(committed.get(p) == o for p, o in expected.items()):
            break
        await asyncio.sleep(0.2)
    return committed


def _final(reader: TopicReader, settings: Settings, task_id: str) -> list[ProgressEvent]:
    return reader.final(settings, task_id)


async def test_cancelling_a_long_task_frees_the_budget_and_computes_nothing_more(
    settings: Settings, tmp_path: Path
) -> None:
    """The issue's test: a 200-page task at 0.5 s a page is cancelled mid-way. Its page
    budget is free within 2 s, another task runs, both request offsets and the cancel's
    commit, nothing of the task is computed afterwards, and a resend without force is
    answered `cancelled`."""
    pdf = await asyncio.to_thread(make_pdf, tmp_path / "long.pdf", 200)
    small = await asyncio.to_thread(make_pdf, tmp_path / "small.pdf", 1)
    engine = ScriptedEngine(delay_s=0.5, concurrency=4)
    async with (
        running_app(settings, engine) as app,
        TopicReader(settings, settings.topic_results, settings.topic_progress) as reader,
    ):
        await produce_requests(settings, [file_request("long-1", pdf)])
        await reader.wait_for(lambda r: len(r.results(settings)) >= 8, timeout=60)
        # All of the budget but its last slot, kept for tasks that hold none.
        assert _inflight_pages(app) == 3, "the long task holds the budget it may"
        await publish_cancels(settings, cancel_records(["long-1"], "sent by mistake"))
        sent = time.monotonic()
        await wait_until(lambda: _inflight_pages(app) == 0, timeout=10)
        freed_s = time.monotonic() - sent
        await reader.wait_for(lambda r: bool(_final(r, settings, "long-1")), timeout=10)
        calls = sum(engine.calls.values())

        await produce_requests(settings, [file_request("after-1", small)])
        await reader.wait_for(lambda r: bool(_final(r, settings, "after-1")), timeout=30)
        # Sent again without force: answered from the recorded state, nothing computed.
        await produce_requests(settings, [file_request("long-1", pdf)])
        await reader.wait_for(lambda r: len(_final(r, settings, "long-1")) == 2, timeout=30)
        await asyncio.sleep(1.0)  # a page still going would have reached the engine by now
        home = task_partition(b"long-1", PARTITIONS)
        other = task_partition(b"after-1", PARTITIONS)
        expected = {home: 3}  # the request, the cancel, the resend
        expected[other] = expected.get(other, 0) + 1
        committed = await _committed_soon(settings, expected)
    assert freed_s < 2.0, f"the budget was freed {freed_s:.2f} s after the cancel"
    stopped, replayed = _final(reader, settings, "long-1")
    assert stopped.status is TaskStatus.CANCELLED and not stopped.replayed
    assert stopped.error is not None and stopped.error.code is ErrorCode.TASK_CANCELLED
    assert stopped.error.message == "sent by mistake"
    assert stopped.message.endswith(": sent by mistake")
    published = [r for r in reader.results(settings) if r.task_id == "long-1"]
    assert all(r.status is PageStatus.OK for r in published)
    assert stopped.pages_done == len({r.page for r in published}) < 200
    assert (replayed.status, replayed.replayed) == (TaskStatus.CANCELLED, True)
    assert sum(engine.calls.values()) == calls + 1, "only after-1's page was computed since"
    assert _final(reader, settings, "after-1")[0].status is TaskStatus.COMPLETED
    assert {p: committed.get(p) for p in expected} == expected


async def test_the_member_running_the_task_stops_it_whoever_reads_the_cancel(
    settings: Settings, tmp_path: Path
) -> None:
    """A cancel that lands on a partition another member owns (a producer with another
    partitioner, say) still stops the task: the reader marks it, the runner hears of it."""
    pdf = await asyncio.to_thread(make_pdf, tmp_path / "long.pdf", 60)
    first_engine, second_engine = ScriptedEngine(delay_s=0.5), ScriptedEngine(delay_s=0.5)
    second_settings = settings.model_copy(update={"consumer_id": f"{settings.consumer_id}-b"})
    async with (
        running_app(settings, first_engine) as first,
        running_app(second_settings, second_engine) as second,
        TopicReader(settings, settings.topic_results, settings.topic_progress) as reader,
    ):
        await wait_until(
            lambda: all(
                app._loop is not None and app._loop.joined
                and len(app._loop._consumer.assignment()) == PARTITIONS // 2
                for app in (first, second)
            ),
            timeout=60,
        )
        await produce_requests(settings, [file_request("far-1", pdf)])
        await reader.wait_for(lambda r: len(r.results(settings)) >= 2, timeout=60)
        runner, runner_engine = (
            (first, first_engine) if first_engine.calls else (second, second_engine)
        )
        other = second if runner is first else first
        assert other._loop is not None
        elsewhere = next(iter(other._loop._consumer.assignment())).partition
        key = next(
            f"k-{i}".encode() for i in range(1000)
            if task_partition(f"k-{i}".encode(), PARTITIONS) == elsewhere
        )
        [record] = cancel_records(["far-1"], "wrong file")
        await produce_raw(settings, record.model_dump_json().encode(), key=key)
        await reader.wait_for(lambda r: bool(_final(r, settings, "far-1")), timeout=10)
        calls = sum(runner_engine.calls.values())
        committed = await _committed_soon(
            settings, {task_partition(b"far-1", PARTITIONS): 1, elsewhere: 1}
        )
        await asyncio.sleep(1.0)
        assert sum(runner_engine.calls.values()) == calls
    [final] = _final(reader, settings, "far-1")
    assert final.status is TaskStatus.CANCELLED
    assert final.consumer_id == runner.consumer_id, "the member running it ended it"
    assert final.error is not None and final.error.message == "wrong file"
    assert final.pages_done < 60
    assert committed[elsewhere] == 1, "the cancel's own offset commits where it landed"
    assert committed[task_partition(b"far-1", PARTITIONS)] == 1


async def test_cancels_of_ended_and_unknown_tasks_and_a_restart_with_force(
    settings: Settings, tmp_path: Path
) -> None:
    pdf = await asyncio.to_thread(make_pdf, tmp_path / "two.pdf", 2)
    engine = ScriptedEngine()
    async with (
        running_app(settings, engine),
        TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader,
    ):
        await produce_requests(settings, [file_request("done-1", pdf)])
        await reader.wait_for(lambda r: bool(_final(r, settings, "done-1")))
        await publish_cancels(settings, cancel_records(["done-1", "later-1"], ""))
        await reader.wait_for(
            lambda r: len(_final(r, settings, "done-1")) == 2
            and bool(_final(r, settings, "later-1"))
        )
        # The request of the task cancelled before it arrived, then the same with force.
        await produce_requests(settings, [file_request("later-1", pdf)])
        await reader.wait_for(lambda r: len(_final(r, settings, "later-1")) == 2)
        assert not any(task_id == "later-1" for task_id, _ in engine.calls)
        await produce_requests(settings, [file_request("later-1", pdf, force=True)])
        await reader.wait_for(lambda r: len(_final(r, settings, "later-1")) == 3)
        await produce_raw(settings, b'{"action": "pause", "task_id": "done-1"}', key=b"done-1")
        await reader.wait_for(lambda r: bool(r.on(settings.topic_dlq)))
    ended = _final(reader, settings, "done-1")
    assert [(e.status, e.replayed) for e in ended] == [
        (TaskStatus.COMPLETED, False), (TaskStatus.COMPLETED, True),
    ]
    unknown, answered, forced = _final(reader, settings, "later-1")
    assert (unknown.status, unknown.pages_done, unknown.replayed) == (
        TaskStatus.CANCELLED, 0, False,
    )
    assert unknown.error is not None and unknown.error.code is ErrorCode.TASK_CANCELLED
    assert (answered.status, answered.replayed) == (TaskStatus.CANCELLED, True)
    assert (forced.status, forced.pages_done) == (TaskStatus.COMPLETED, 2)
    [dead] = reader.on(settings.topic_dlq)
    assert dead.headers[DLQ_ERROR_CODE] == ErrorCode.REQUEST_INVALID.value.encode()


async def test_ocr_cancel_wait_reports_what_the_consumer_did(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pdf = await asyncio.to_thread(make_pdf, tmp_path / "long.pdf", 30)
    engine = ScriptedEngine(delay_s=0.5)
    flags = [
        "--kafka-bootstrap", settings.kafka_bootstrap,
        "--topic-requests", settings.topic_requests,
        "--topic-progress", settings.topic_progress, "--topic-dlq", settings.topic_dlq,
        "--log-format", "json", "--log-level", "WARNING",
    ]
    async with (
        running_app(settings, engine),
        TopicReader(settings, settings.topic_results) as reader,
    ):
        await produce_requests(settings, [file_request("tool-1", pdf)])
        await reader.wait_for(lambda r: len(r.results(settings)) >= 1, timeout=60)
        capsys.readouterr()
        code = await asyncio.to_thread(
            cancel.main, [*flags, "--wait", "--timeout", "30", "--reason", "by the tool",
                          "tool-1"],
        )
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    [line] = [line for line in out.splitlines() if line.startswith("tool-1: ")]
    assert "cancelled after" in line and "TASK_CANCELLED: by the tool" in line
