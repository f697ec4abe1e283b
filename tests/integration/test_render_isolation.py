"""A document that is slow to render does not hold up the others (real Kafka, Redis and
render workers; the scripted engine stands in for the GPU)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from consumer.config import Settings
from schemas.common import ErrorCode
from schemas.progress import TaskStatus
from tests.support.apps import running_app
from tests.support.documents import file_request, make_pdf, stroked_pdf
from tests.support.engines import ScriptedEngine
from tests.support.kafka import TopicReader, produce_requests

pytestmark = pytest.mark.integration

# About 2-4 s a page at 144 dpi on the 2-CPU VM.
SLOW_LINES = 2500


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={"file_roots": [tmp_path], "metrics_port": 0, "commit_interval_s": 0.2,
                "render_workers": 2}
    )


async def test_a_one_page_task_stays_fast_while_a_slow_pdf_renders(
    settings: Settings, tmp_path: Path
) -> None:
    slow = tmp_path / "slow.pdf"
    slow.write_bytes(stroked_pdf(4, SLOW_LINES))
    medium = make_pdf(tmp_path / "medium.pdf", pages=6)
    small = make_pdf(tmp_path / "small.pdf", pages=1)
    # Engine slots for 2 pages (budget 3): the medium document stays open on the other
    # render worker while its pages decode, so both workers hold one document each.
    engine = ScriptedEngine(delay_s=1.0, concurrency=2)
    async with (
        running_app(settings, engine),
        TopicReader(settings, settings.topic_progress) as reader,
    ):
        await produce_requests(settings, [file_request("slow-1", slow)])
        await reader.wait_for(
            lambda r: any(e.task_id == "slow-1" and e.status is TaskStatus.STARTED
                          for e in r.progress(settings))
        )
        await produce_requests(settings, [file_request("medium-1", medium)])
        await reader.wait_for(
            lambda r: any(e.task_id == "medium-1" and e.status is TaskStatus.STARTED
                          for e in r.progress(settings))
        )
        sent = time.monotonic()
        await produce_requests(settings, [file_request("small-1", small)])
        await reader.wait_for(lambda r: bool(r.final(settings, "small-1")), timeout=120)
        small_s = time.monotonic() - sent
        slow_done_first = bool(reader.final(settings, "slow-1"))
        await reader.wait_for(lambda r: bool(r.final(settings, "slow-1")), timeout=300)
        slow_s = time.monotonic() - sent
    [small_final] = reader.final(settings, "small-1")
    assert small_final.status is TaskStatus.COMPLETED
    # Placed by document count, the small task queued behind the slow pages (and the slow
    # task held every page slot): it finished after the slow one.
    assert not slow_done_first, f"small task took {small_s:.1f} s, after the slow PDF"
    assert small_s < slow_s / 2, (small_s, slow_s)


async def test_a_pdf_whose_renders_keep_timing_out_fails_the_task_with_a_code(
    settings: Settings, tmp_path: Path
) -> None:
    slow = tmp_path / "slow.pdf"
    slow.write_bytes(stroked_pdf(6, 3 * SLOW_LINES))
    limited = settings.model_copy(update={"page_timeout_s": 0.5, "render_timeouts": 2})
    async with (
        running_app(limited, ScriptedEngine()),
        TopicReader(limited, limited.topic_progress, limited.topic_results) as reader,
    ):
        await produce_requests(limited, [file_request("hopeless-1", slow)])
        await reader.wait_for(lambda r: bool(r.final(limited, "hopeless-1")), timeout=120)
    codes = sorted(
        result.error.code.value for result in reader.results(limited) if result.error
    )
    # Two timeouts, then the rest fail at once with the code, and so does the task.
    assert codes.count(ErrorCode.PAGE_TIMEOUT.value) <= 2
    [final] = reader.final(limited, "hopeless-1")
    assert final.status is TaskStatus.FAILED
    assert final.error is not None and final.error.code is ErrorCode.DOCUMENT_TOO_COMPLEX
