"""The gateway's pure parts: the view's rules, keys, form fields, sanitised HTML, settings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer_tools.gateway.access import ANONYMOUS, KeyRing, key_id, parse_keys, presented_key
from producer_tools.gateway.errors import GatewayError
from producer_tools.gateway.intake import parse_options, safe_name, source_uri
from producer_tools.gateway.page_html import markdown_html
from producer_tools.gateway.settings import GatewayConfig, GatewaySettings
from producer_tools.gateway.view_model import (
    ApiStatus,
    PageRank,
    TaskProgress,
    api_status,
    apply_progress,
    eta_and_message,
    percent,
)
from producer_tools.task_files import LatestPages
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import PromptKind
from schemas.result import EngineIdentity, FinishReason, PageImageInfo, PageResult, PageStatus

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def event(status: TaskStatus, done: int = 0, *, attempt: int = 0, total: int | None = 3,
          replayed: bool = False, second: int = 0) -> ProgressEvent:
    return ProgressEvent(
        task_id="t1", attempt=attempt, status=status, pages_done=done, pages_total=total,
        replayed=replayed, emitted_at=T0 + timedelta(seconds=second),
    )


def run(pages: int = 3, attempt: int = 0) -> list[ProgressEvent]:
    events = [event(TaskStatus.QUEUED, total=None, attempt=attempt),
              event(TaskStatus.STARTED, attempt=attempt, total=pages, second=1)]
    events += [event(TaskStatus.PAGE_DONE, n, attempt=attempt, total=pages, second=1 + n)
               for n in range(1, pages + 1)]
    events.append(event(TaskStatus.COMPLETED, pages, attempt=attempt, total=pages, second=9))
    return events


def apply_all(delivered: list[tuple[ProgressEvent, int]]) -> TaskProgress | None:
    held: TaskProgress | None = None
    for item, offset in delivered:
        held = apply_progress(held, item, offset) or held
    return held


def seen(delivered: list[tuple[ProgressEvent, int]]) -> list[TaskProgress]:
    """Every entry a client could have read, in order."""
    held: TaskProgress | None = None
    entries = []
    for item, offset in delivered:
        changed = apply_progress(held, item, offset)
        if changed is not None:
            held = changed
            entries.append(changed)
    return entries


# --- the view's rules --------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=4))
def test_redelivery_after_restarts_changes_nothing(restarts: list[tuple[int, int]]) -> None:
    """At-least-once: the view re-reads from an earlier commit after a crash; clients see the
    same entries, in the same order, as if every record had been read once."""
    records = [(e, 100 + i) for i, e in enumerate(run())]
    delivered: list[tuple[ProgressEvent, int]] = []
    position = 0
    for read_to, back_to in restarts:
        read_to = max(read_to, position)
        delivered += records[position:read_to]
        position = min(back_to, read_to)
    delivered += records[position:]
    assert seen(delivered) == seen(records)


def test_final_sticks_and_a_lower_attempt_is_ignored() -> None:
    done = apply_all([(e, i) for i, e in enumerate(run())])
    assert done is not None and done.event.status is TaskStatus.COMPLETED
    # A late page_done of the same attempt (a duplicate after a crash) does not undo it.
    assert apply_progress(done, event(TaskStatus.PAGE_DONE, 2), 50) is None
    # A stale run of an earlier attempt neither.
    replayed = apply_progress(done, event(TaskStatus.QUEUED, attempt=1), 60)
    assert replayed is not None and replayed.event.attempt == 1
    assert apply_progress(replayed, event(TaskStatus.COMPLETED, 3), 61) is None


def test_queued_opens_a_new_run_with_fresh_timings() -> None:
    done = apply_all([(e, i) for i, e in enumerate(run())])
    assert done is not None and done.finished_at is not None
    forced = apply_progress(done, event(TaskStatus.QUEUED, total=None, second=20), 40)
    assert forced is not None
    assert (forced.queued_at, forced.started_at, forced.finished_at) == (
        T0 + timedelta(seconds=20), None, None)
    assert api_status(forced, pages_stored=3) is ApiStatus.QUEUED


def test_final_is_shown_once_the_results_are_in() -> None:
    done = apply_all([(e, i) for i, e in enumerate(run())])
    assert api_status(done, pages_stored=2) is ApiStatus.RUNNING
    assert api_status(done, pages_stored=3) is ApiStatus.COMPLETED
    again = TaskProgress(event=event(TaskStatus.COMPLETED, 3, replayed=True), offset=1)
    assert api_status(again, pages_stored=0) is ApiStatus.COMPLETED
    assert api_status(None, pages_stored=0) is ApiStatus.SUBMITTED


def test_percent_is_the_events_own_else_computed() -> None:
    # An event without the field (an older consumer) parses with percent 0: computed here.
    older = ProgressEvent.model_validate_json(event(TaskStatus.PAGE_DONE, 1).model_dump_json(
        exclude={"percent", "eta_s", "message"}))
    assert percent(older, ApiStatus.RUNNING) == 33.3
    assert percent(event(TaskStatus.STARTED, total=None), ApiStatus.RUNNING) == 0.0
    own = ProgressEvent(task_id="t1", status=TaskStatus.PAGE_DONE, pages_done=1, pages_total=3,
                        percent=41.3, eta_s=12.5, message="1 of 3 pages", emitted_at=T0)
    assert percent(own, ApiStatus.RUNNING) == 41.3
    assert eta_and_message(own, ApiStatus.RUNNING) == (12.5, "1 of 3 pages")
    assert eta_and_message(own, ApiStatus.COMPLETED) == (None, "1 of 3 pages")
    assert eta_and_message(older, ApiStatus.RUNNING) == (None, None)
    assert percent(event(TaskStatus.COMPLETED, 3), ApiStatus.COMPLETED) == 100.0


def test_cancelled_is_final() -> None:
    stopped = TaskProgress(event=event(TaskStatus.CANCELLED, 1), offset=5)
    assert api_status(stopped, pages_stored=1) is ApiStatus.CANCELLED
    assert api_status(stopped, pages_stored=1).is_final


def page(number: int, attempt: int) -> PageResult:
    return PageResult(
        task_id="t1", page=number, page_count=9, attempt=attempt, status=PageStatus.OK,
        finish_reason=FinishReason.STOP, engine=EngineIdentity(name="e", model="m"),
        image=PageImageInfo(width_px=1, height_px=1, dpi=72), produced_at=T0,
    )


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 2), st.integers(0, 50)), max_size=20))
def test_page_rank_keeps_what_ocr_collect_keeps(offers: list[tuple[int, int, int]]) -> None:
    latest = LatestPages()
    held: dict[int, PageRank] = {}
    for number, attempt, offset in offers:
        latest.offer(page(number, attempt), offset)
        rank = PageRank(attempt, offset)
        if rank.beats(held.get(number)):
            held[number] = rank
        assert PageRank.decode(rank.encode()) == rank
    assert {r.page: r.attempt for r in latest.results()} == {
        n: rank.attempt for n, rank in held.items()}


# --- keys ------------------------------------------------------------------------------------


def test_keys_from_list_and_file_and_who_is_counted() -> None:
    keys = parse_keys(" a1 ,b2,", "# team\nc3  # bench\n\n")
    assert keys == {"a1", "b2", "c3"}
    ring = KeyRing(keys)
    assert ring.identify("b2") == key_id("b2") != "b2"
    with pytest.raises(GatewayError) as missing:
        ring.identify(None)
    with pytest.raises(GatewayError) as wrong:
        ring.identify("b3")
    assert (missing.value.code.value, wrong.value.code.value) == (
        "API_KEY_REQUIRED", "API_KEY_INVALID")
    assert "b3" not in wrong.value.message
    assert KeyRing([]).identify(None) == ANONYMOUS
    assert presented_key({"authorization": "Bearer  k9 "}) == "k9"
    assert presented_key({"x-api-key": "k8"}) == "k8"
    assert presented_key({"authorization": "Basic xyz"}) is None


# --- form fields -----------------------------------------------------------------------------


def test_fields_become_ocr_submit_options() -> None:
    options = parse_options(
        {"prompt": "free_ocr", "pages": "1-3,5", "dpi": "200", "metadata": '{"t": "a", "n": 1}'}
    )
    assert options.prompt is PromptKind.FREE_OCR and options.dpi == 200
    assert [(p.first, p.last) for p in options.pages or []] == [(1, 3), (5, 5)]
    assert options.metadata == {"t": "a", "n": 1}
    assert parse_options({}).dpi == 144
    for bad in ({"prompt": "poem"}, {"dpi": "20"}, {"dpi": "x"}, {"pages": "3-1"},
                {"metadata": "[1]"}, {"metadata": '{"a": {"b": 1}}'}, {"prompt": "locate"}):
        with pytest.raises(GatewayError) as refused:
            parse_options(bad)
        assert refused.value.status == 422, bad


def test_uri_sources_and_names() -> None:
    assert source_uri({"source": {"uri": "s3://bucket/a.pdf"}}) == "s3://bucket/a.pdf"
    with pytest.raises(GatewayError, match="SOURCE_SCHEME_NOT_ALLOWED"):
        source_uri({"source": "file:///etc/passwd"})
    assert safe_name("../../etc/pass wd.pdf") == "pass_wd.pdf"
    assert safe_name("C:\\scans\\.hidden") == "hidden"
    assert safe_name(None) == "upload"


# --- HTML ------------------------------------------------------------------------------------


def test_markdown_and_deepseek_tables_render_and_nothing_active_survives() -> None:
    html = markdown_html(
        "# Title\n\n<table><tr><td colspan=2 onclick=alert(1)>a</td></tr></table>\n\n"
        "<script>alert(1)</script><img src=x onerror=alert(2)>[x](javascript:alert(3))"
    )
    assert "<h1>Title</h1>" in html and '<td colspan="2">a</td>' in html
    assert not re.search(r"<script|onerror|onclick|<img|href", html)


_PIECES = [*"<>/=\"' ab\n|-#`", "script", "onload", "javascript:", "img", "a href", "style",
           "iframe", "svg", "src", "table", "td"]


@given(st.lists(st.sampled_from(_PIECES), max_size=40))
def test_no_markup_becomes_active(pieces: list[str]) -> None:
    html = markdown_html("".join(pieces))
    tags = re.findall(r"<\s*([a-zA-Z0-9]+)([^>]*)>", html)
    for name, attributes in tags:
        assert name.lower() not in {"script", "img", "a", "iframe", "svg", "style"}
        assert not re.search(r"\bon\w+\s*=|href|src|style", attributes)


# --- settings --------------------------------------------------------------------------------


def test_upload_limit_never_above_the_consumers(tmp_path: Path) -> None:
    from consumer.config import Settings

    core = Settings(max_document_bytes=10_000)
    config = GatewayConfig(core=core, gateway=GatewaySettings(max_upload_bytes=50_000))
    assert config.max_upload_bytes == 10_000
    assert GatewaySettings().loopback and not GatewaySettings(host="0.0.0.0").loopback
    with pytest.raises(ValueError, match="API_KEYS_FILE"):
        GatewaySettings(api_keys_file=tmp_path / "missing")
