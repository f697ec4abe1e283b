"""The chaos suite's verdict (tests/chaos/observe.py `judge`) on synthetic observations, and
the harness's count of faults that landed after their target had finished."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.common import ErrorCode, ErrorInfo
from schemas.progress import ProgressEvent, TaskStatus
from schemas.result import EngineIdentity, FinishReason, PageImageInfo, PageResult, PageStatus
from tests.chaos.harness import Harness, ScenarioResult, Suite
from tests.chaos.observe import ExpectedTask, Seen, Verdict, judge
from tests.chaos.stack import ChaosStack

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def result(
    task_id: str, page: int, pages: int, *, text: str | None = None,
    error: ErrorCode | None = None,
) -> tuple[str, PageResult]:
    shown = f"page {page} of {task_id}" if text is None else text
    value = PageResult(
        task_id=task_id, page=page, page_count=pages,
        status=PageStatus.OK if error is None else PageStatus.FAILED,
        markdown=shown if error is None else "", text=shown if error is None else "",
        finish_reason=FinishReason.STOP if error is None else FinishReason.ERROR,
        error=ErrorInfo(code=error, message="injected") if error is not None else None,
        engine=EngineIdentity(name="rapidocr", model="pp-ocrv4"),
        image=PageImageInfo(width_px=100, height_px=100, dpi=72),
        produced_at=NOW,
    )
    return f"{task_id}/{page}", value


def progress(
    task_id: str, status: TaskStatus, pages: int, *, failed: int = 0,
    error: ErrorCode | None = None,
) -> ProgressEvent:
    return ProgressEvent(
        task_id=task_id, status=status, pages_total=pages,
        pages_done=pages if status.is_final else 1, pages_failed=failed,
        error=ErrorInfo(code=error, message="went wrong") if error is not None else None,
        emitted_at=NOW,
    )


def clean_run(expected: dict[str, ExpectedTask]) -> Seen:
    """Every page once and a `completed` per task: what a faultless scenario leaves."""
    seen = Seen()
    for task in expected.values():
        for page in range(1, task.pages + 1):
            seen.results.append(result(task.task_id, page, task.pages,
                                       error=task.failed.get(page)))
        seen.progress.append(progress(task.task_id, TaskStatus.COMPLETED, task.pages,
                                      failed=len(task.failed)))
    return seen


@pytest.fixture
def expected() -> dict[str, ExpectedTask]:
    return {"a": ExpectedTask("a", 2), "b": ExpectedTask("b", 3)}


def passes(verdict: Verdict) -> bool:
    return verdict.ok and not verdict.problems and verdict.lost == 0


def test_a_clean_run_passes(expected: dict[str, ExpectedTask]) -> None:
    verdict = judge(clean_run(expected), expected)
    assert passes(verdict), verdict.problems
    assert (verdict.tasks, verdict.pages, verdict.result_records) == (2, 5, 5)
    assert verdict.duplicates == 0


def test_a_lost_page_loses_its_task(expected: dict[str, ExpectedTask]) -> None:
    seen = clean_run(expected)
    seen.results = [(key, value) for key, value in seen.results if key != "b/2"]
    verdict = judge(seen, expected)
    assert not verdict.ok and verdict.lost == 1
    assert verdict.problems == ["LOST b: pages missing ['b/2']"]


def test_a_missing_final_status_loses_its_task(expected: dict[str, ExpectedTask]) -> None:
    seen = clean_run(expected)
    seen.progress = [event for event in seen.progress if event.task_id != "a"]
    seen.progress.append(progress("a", TaskStatus.PAGE_DONE, 2))  # not final
    verdict = judge(seen, expected)
    assert not verdict.ok and verdict.lost == 1
    assert verdict.problems == ["LOST a: no final progress event"]


def test_a_failed_task_is_lost_with_its_code(expected: dict[str, ExpectedTask]) -> None:
    seen = clean_run(expected)
    seen.progress.append(progress("a", TaskStatus.FAILED, 2, error=ErrorCode.TASK_TIMEOUT))
    verdict = judge(seen, expected)
    assert verdict.lost == 1
    assert verdict.problems == ["LOST a: final status failed (TASK_TIMEOUT: went wrong)"]


def test_the_same_page_twice_is_a_harmless_duplicate(expected: dict[str, ExpectedTask]) -> None:
    seen = clean_run(expected)
    seen.results.append(result("a", 1, 2))  # recomputed after a crash: same answer
    verdict = judge(seen, expected)
    assert passes(verdict), verdict.problems
    assert verdict.duplicates == 1 and verdict.result_records == 6


def test_a_page_seen_twice_with_different_content_is_a_problem(
    expected: dict[str, ExpectedTask],
) -> None:
    seen = clean_run(expected)
    seen.results.append(result("a", 1, 2, text="something else entirely"))
    verdict = judge(seen, expected)
    assert not verdict.ok and verdict.lost == 0 and verdict.duplicates == 1
    assert verdict.problems == ["a/1: published 2 times with different content"]


def test_a_dead_letter_fails_the_scenario(expected: dict[str, ExpectedTask]) -> None:
    seen = clean_run(expected)
    seen.dlq.append(("x", {"ocr_error_code": b"REQUEST_INVALID"}))
    verdict = judge(seen, expected)
    assert not verdict.ok and verdict.lost == 0
    assert verdict.problems == ["1 dead letters: {'REQUEST_INVALID': 1}"]


def test_provoked_dead_letters_pass_with_one_of_their_codes(
    expected: dict[str, ExpectedTask],
) -> None:
    seen = clean_run(expected)
    seen.dlq.append(("x", {"ocr_error_code": b"REQUEST_NOT_JSON"}))
    seen.dlq.append(("y", {"ocr_error_code": b"REQUEST_INVALID"}))
    wanted = [frozenset({"REQUEST_INVALID"}), frozenset({"REQUEST_NOT_JSON", "REQUEST_INVALID"})]
    assert passes(judge(seen, expected, wanted))
    # One missing, one of another code: both named.
    seen.dlq.pop()
    seen.dlq.append(("z", {"ocr_error_code": b"TASK_ID_CONFLICT"}))
    verdict = judge(seen, expected, wanted)
    assert verdict.problems == [
        "1 dead letters: {'TASK_ID_CONFLICT': 1}", "missing dead letter (REQUEST_INVALID)",
    ]


def test_known_issues_are_reported_xfail_and_xpass() -> None:
    def result(passed: bool, known: str | None) -> ScenarioResult:
        return ScenarioResult(
            name="s", description="", passed=passed, rounds=1, tasks=1, pages=1, kills=0,
            faults=0, missed=0, duplicates=0, lost=0, result_records=1, wall_s=1.0,
            round_s=[], problems=[], timeline=[], log_events={}, extra={}, log_excerpt=[],
            known_issue=known,
        )

    assert (result(True, None).verdict, result(False, None).verdict) == ("PASS", "FAIL")
    assert result(False, "phase 2").verdict == "XFAIL"
    assert not result(False, "phase 2").counts_as_failure
    # The fix landed: the marker must go, so the suite fails until it does.
    assert result(True, "phase 2").verdict == "XPASS"
    assert result(True, "phase 2").counts_as_failure


def test_expected_page_failures_pass_only_with_their_code() -> None:
    expected = {"e": ExpectedTask("e", 3, failed={2: ErrorCode.PAGE_TIMEOUT})}
    assert passes(judge(clean_run(expected), expected))
    seen = clean_run(expected)
    seen.results.append(result("e", 2, 3, error=ErrorCode.ENGINE_ERROR))
    verdict = judge(seen, expected)
    assert "e/2: expected PAGE_TIMEOUT, got failed ENGINE_ERROR" in verdict.problems


def test_an_unexpected_page_and_wrong_final_counts_are_problems(
    expected: dict[str, ExpectedTask],
) -> None:
    seen = clean_run(expected)
    seen.results.append(result("a", 3, 3))
    seen.progress.append(progress("b", TaskStatus.COMPLETED, 3, failed=1))
    verdict = judge(seen, expected)
    assert verdict.lost == 0 and verdict.problems == [
        "a: unexpected pages ['a/3']",
        "b: final progress says total=3 done=3 failed=1, expected 3/3/0",
    ]


def test_unparseable_records_are_problems(expected: dict[str, ExpectedTask]) -> None:
    seen = clean_run(expected)
    seen.unparseable.append("results[0]@7: not JSON")
    assert not judge(seen, expected).ok


# -- faults that land after their target finished ----------------------------------------


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    stack = ChaosStack(tmp_path / "run", 1, 2, tmp_path / "stack.log")
    suite = Suite(
        stack=stack, run_id="unit", seed=1, rounds=3, blob_dir=tmp_path, log_dir=tmp_path,
        documents={}, echo=lambda line: None, log_stream=io.StringIO(),
    )
    made = Harness(suite, "sigkill", "unit")
    try:
        yield made
    finally:
        await made.close()  # never started: nothing to stop but the unstarted reader


def watched(h: Harness) -> Seen:
    return h._watcher.seen


async def test_a_fault_after_the_target_finished_is_missed(harness: Harness) -> None:
    task = ExpectedTask("t", 4, round=1)
    for done in (1, 2, 3, 4):
        event = progress("t", TaskStatus.PAGE_DONE, 4).model_copy(update={"pages_done": done})
        watched(harness).progress.append(event)
    watched(harness).progress.append(progress("t", TaskStatus.COMPLETED, 4))
    _, where = await harness.until_mid_document([task], 0, after_pages=2, extra_s=0)
    assert where.startswith("done:")
    assert (harness.aimed, harness.missed) == (1, 1)
    assert any("MISSED" in line for line in harness.timeline)
    problem = harness.missed_everything()
    assert problem is not None and "all 1 faults landed after" in problem


async def test_a_fault_mid_document_counts_as_aimed(harness: Harness) -> None:
    task = ExpectedTask("m", 4, round=1)
    event = progress("m", TaskStatus.PAGE_DONE, 4).model_copy(update={"pages_done": 2})
    watched(harness).progress.append(event)
    _, where = await harness.until_mid_document([task], 0, after_pages=2, extra_s=0)
    assert where.startswith("mid-document:")
    assert (harness.aimed, harness.missed) == (1, 0) and harness.missed_everything() is None


def test_some_missed_faults_are_reported_but_do_not_fail(harness: Harness) -> None:
    # A scenario that aims nothing (the engine one) has nothing to miss.
    assert harness.missed_everything() is None
    harness.aim(missed=True, what="round 1")
    assert harness.missed_everything() is not None
    harness.aim(missed=False, what="round 2")
    assert (harness.aimed, harness.missed) == (2, 1) and harness.missed_everything() is None
