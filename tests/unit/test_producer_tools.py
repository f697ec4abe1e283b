"""The pure parts of ocr-submit / ocr-watch / ocr-collect: requests, hand-over, ids,
Markdown, zips, the latest-result rule, progress display and exit codes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.config import Settings
from producer_tools import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT
from producer_tools.cancel import build_parser as cancel_parser
from producer_tools.cancel import cancel_records, report_cancels
from producer_tools.collect import build_parser as collect_parser
from producer_tools.follow_progress import (
    FollowResult,
    LiveBars,
    PlainLines,
    bar_line,
    exit_code,
    failure_text,
    report,
    status_text,
)
from producer_tools.submit import (
    build_parser as submit_parser,
)
from producer_tools.submit import options_from_args, write_outputs
from producer_tools.submit_requests import (
    MAX_INLINE_BYTES,
    RequestOptions,
    SubmitError,
    blob_name,
    build_submissions,
    hand_over,
    output_stem,
    parse_metadata,
)
from producer_tools.task_files import (
    LatestPages,
    assemble_markdown,
    page_file_name,
    pages_json,
    task_zip,
    write_task_files,
)
from producer_tools.watch import build_parser as watch_parser
from schemas.common import TASK_ID_PATTERN, ErrorCode, ErrorInfo
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import PageRange, PromptKind
from schemas.result import EngineIdentity, FinishReason, PageImageInfo, PageResult, PageStatus

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def page(
    number: int, markdown: str = "", *, attempt: int = 0, task_id: str = "t-1",
    failed: bool = False, text: str = "",
) -> PageResult:
    return PageResult(
        task_id=task_id,
        page=number,
        page_count=3,
        attempt=attempt,
        status=PageStatus.FAILED if failed else PageStatus.OK,
        markdown=markdown,
        text=text,
        finish_reason=FinishReason.ERROR if failed else FinishReason.STOP,
        error=ErrorInfo(code=ErrorCode.ENGINE_ERROR, message="engine -- crashed")
        if failed else None,
        engine=EngineIdentity(name="scripted", model="none"),
        image=PageImageInfo(width_px=10, height_px=10, dpi=72),
        produced_at=NOW,
    )


def progress(
    status: TaskStatus, *, done: int = 0, total: int | None = 3, failed: int = 0,
    error: ErrorInfo | None = None, task_id: str = "t-1", message: str = "",
    percent: float = 0.0, eta_s: float | None = None,
) -> ProgressEvent:
    return ProgressEvent(
        task_id=task_id, status=status, pages_done=done, pages_total=total,
        pages_failed=failed, error=error, emitted_at=NOW, message=message, percent=percent,
        eta_s=eta_s,
    )


# --- requests, hand-over and task ids -----------------------------------------------------------


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "Quarterly report.pdf"
    path.parent.mkdir()
    path.write_bytes(b"%PDF-1.7 pretend document " * 100)
    return path


def test_hand_over_copies_into_content_addressed_blob(document: Path, tmp_path: Path) -> None:
    blob_root = tmp_path / "blobs"
    blob, digest = hand_over(document, blob_root)
    assert digest == hashlib.sha256(document.read_bytes()).hexdigest()
    assert blob == (blob_root / digest[:2] / f"{digest}-Quarterly_report.pdf").resolve()
    assert blob.read_bytes() == document.read_bytes()
    # No temporary files are left next to the blob.
    assert [p.name for p in blob.parent.iterdir()] == [blob.name]


def test_hand_over_again_reuses_the_blob(document: Path, tmp_path: Path) -> None:
    blob, _ = hand_over(document, tmp_path / "blobs")
    before = blob.stat().st_mtime_ns
    again, _ = hand_over(document, tmp_path / "blobs")
    assert again == blob and blob.stat().st_mtime_ns == before


def test_blob_name_is_safe_and_bounded() -> None:
    name = blob_name("a" * 64, "../we ird/ná me" + "x" * 300 + ".pdf")
    assert name.startswith("a" * 64 + "-") and name.endswith(".pdf")
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", name)
    assert len(name) <= 64 + 1 + 100


def test_file_request_refers_to_the_blob_with_its_hash(document: Path, tmp_path: Path) -> None:
    blob_root = tmp_path / "blobs"
    blob_root.mkdir()  # the consumer's folder: ocr-submit never creates it
    options = RequestOptions(
        pages=[PageRange(first=1, last=3), PageRange(first=5)], prompt=PromptKind.FREE_OCR,
        dpi=200, force=True, metadata={"customer": "acme"},
    )
    [submission] = build_submissions([str(document)], options, blob_root)
    request = submission.request
    digest = hashlib.sha256(document.read_bytes()).hexdigest()
    assert request.source.uri == submission.blob.as_uri()  # type: ignore[union-attr]
    assert request.source.uri.startswith("file://" + str(blob_root.resolve()))  # type: ignore[union-attr]
    assert request.source.sha256 == digest
    assert request.source.filename == "Quarterly report.pdf"
    assert request.pages == options.pages and request.prompt is PromptKind.FREE_OCR
    assert request.dpi == 200 and request.force and request.metadata == {"customer": "acme"}
    assert re.match(TASK_ID_PATTERN, request.task_id)
    assert request.task_id.startswith(digest[:16] + "-")
    assert submission.stem == "Quarterly report" and submission.label == str(document)


def test_task_id_is_stable_and_follows_what_the_consumer_compares(
    document: Path, tmp_path: Path
) -> None:
    blob_root = tmp_path / "blobs"
    blob_root.mkdir()  # the consumer's folder: ocr-submit never creates it

    def task_id(path: Path = document, **options: object) -> str:
        [submission] = build_submissions([str(path)], RequestOptions(**options), blob_root)  # type: ignore[arg-type]
        return submission.task_id

    base = task_id()
    assert task_id() == base  # resubmitting is recognised as a duplicate
    # Not part of the consumer's fingerprint: same task.
    assert task_id(force=True, metadata={"a": "b"}) == base
    # Part of it: another task (else the consumer would refuse it as TASK_ID_CONFLICT).
    assert task_id(dpi=300) != base
    assert task_id(prompt=PromptKind.FREE_OCR) != base
    assert task_id(pages=[PageRange(first=2)]) != base
    renamed = document.with_name("other.pdf")
    renamed.write_bytes(document.read_bytes())
    assert task_id(renamed) != base


def test_uri_is_passed_through_with_a_derived_id(tmp_path: Path) -> None:
    uri = "https://example.com/docs/Invoice%2042.pdf"
    [submission] = build_submissions([uri], RequestOptions(), tmp_path)
    assert submission.request.source.uri == uri and submission.request.source.sha256 is None
    assert submission.task_id.startswith("uri-") and submission.blob is None
    assert submission.stem == "Invoice 42"
    [again] = build_submissions([uri], RequestOptions(), tmp_path)
    assert again.task_id == submission.task_id
    assert list(tmp_path.iterdir()) == []  # nothing handed over


def test_explicit_task_id_only_for_one_input(document: Path, tmp_path: Path) -> None:
    [submission] = build_submissions([str(document)], RequestOptions(), tmp_path, "inv-42")
    assert submission.task_id == "inv-42"
    with pytest.raises(SubmitError, match="one task but 2 inputs"):
        build_submissions([str(document), "https://x/y.pdf"], RequestOptions(), tmp_path, "a")
    with pytest.raises(SubmitError, match="not a valid task id"):
        build_submissions([str(document)], RequestOptions(), tmp_path, "a/b")


def test_same_input_twice_is_one_request(document: Path, tmp_path: Path) -> None:
    submissions = build_submissions([str(document), str(document)], RequestOptions(), tmp_path)
    assert len(submissions) == 1


def test_inline_sends_the_bytes(document: Path, tmp_path: Path) -> None:
    [submission] = build_submissions([str(document)], RequestOptions(inline=True), tmp_path)
    source = submission.request.source
    assert source.uri is None and source.inline_base64 is not None
    assert base64.b64decode(source.inline_base64) == document.read_bytes()
    assert source.sha256 == hashlib.sha256(document.read_bytes()).hexdigest()
    assert not (tmp_path / "blobs").exists()


def test_a_missing_hand_over_folder_is_refused_not_created(
    document: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ocr-submit run outside the repository: the default .run/blobs names a folder there,
    # which no consumer reads.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in [name for name in os.environ if name.startswith("OCR_")]:
        monkeypatch.delenv(name)
    blob_root = Settings().blob_root
    assert blob_root == elsewhere / ".run" / "blobs"
    with pytest.raises(SubmitError) as caught:
        build_submissions([str(document)], RequestOptions(), blob_root)
    message = str(caught.value)
    assert f"the hand-over folder {blob_root}" in message and "does not exist" in message
    assert "OCR_FILE_ROOTS" in message and "--blob-root" in message
    assert not (elsewhere / ".run").exists()
    # URIs and --inline hand nothing over, so they need no folder.
    assert build_submissions([str(document)], RequestOptions(inline=True), blob_root)
    assert build_submissions(["https://h/x.pdf"], RequestOptions(), blob_root)


def test_inline_over_the_limit_is_refused_with_advice(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_INLINE_BYTES + 1))
    with pytest.raises(SubmitError, match="drop --inline"):
        build_submissions([str(big)], RequestOptions(inline=True), tmp_path / "blobs")
    exact = tmp_path / "exact.png"
    exact.write_bytes(b"\0" * MAX_INLINE_BYTES)
    assert build_submissions([str(exact)], RequestOptions(inline=True), tmp_path / "blobs")


@pytest.mark.parametrize(
    ("item", "options", "message"),
    [
        ("missing.pdf", RequestOptions(), "no such file"),
        ("ftp://host/x.pdf", RequestOptions(), "scheme 'ftp' is not supported"),
        ("https://host/x.pdf", RequestOptions(inline=True), "--inline needs a local file"),
    ],
)
def test_unusable_inputs_say_what_to_do(
    item: str, options: RequestOptions, message: str, tmp_path: Path
) -> None:
    with pytest.raises(SubmitError, match=message):
        build_submissions([item], options, tmp_path)


def test_options_from_the_command_line() -> None:
    args = submit_parser().parse_args(
        ["--pages", "1-3,5", "--prompt", "locate", "--locate-text", "Total", "--dpi", "300",
         "--metadata", "a=1", "--metadata", "b=x=y", "doc.pdf"]
    )
    options = options_from_args(args)
    assert options.pages == [PageRange(first=1, last=3), PageRange(first=5, last=5)]
    assert options.prompt is PromptKind.LOCATE and options.locate_text == "Total"
    assert options.dpi == 300 and options.metadata == {"a": "1", "b": "x=y"}
    with pytest.raises(SubmitError, match="--locate-text"):
        options_from_args(submit_parser().parse_args(["--prompt", "locate", "doc.pdf"]))
    with pytest.raises(SubmitError, match="--pages"):
        options_from_args(submit_parser().parse_args(["--pages", "3-1", "doc.pdf"]))
    with pytest.raises(SubmitError, match="key=value"):
        parse_metadata(["novalue"])


def test_every_setting_is_a_flag_of_every_tool() -> None:
    for parser in (submit_parser(), watch_parser(), collect_parser(), cancel_parser()):
        args = parser.parse_args(
            ["--topic-progress", "p", "--kafka-bootstrap", "h:1", *(
                ["x"] if parser.prog != "ocr-collect" else []
            )]
        )
        assert args.setting_topic_progress == "p" and args.setting_kafka_bootstrap == "h:1"


def test_output_stems() -> None:
    assert output_stem("/a/b/report.final.pdf") == "report.final"
    assert output_stem("s3://bucket/k/scan.png") == "scan"
    assert output_stem("https://host/") == "document"


# --- latest page rule, Markdown, JSON, zip ------------------------------------------------------


def test_latest_page_wins_by_attempt_then_offset() -> None:
    pages = LatestPages()
    assert pages.offer(page(1, "old", attempt=0), offset=10)
    assert pages.offer(page(1, "replayed", attempt=1), offset=11)
    # A stale attempt read later (another partition, an uncompacted tail) does not win.
    assert not pages.offer(page(1, "stale", attempt=0), offset=12)
    # Same attempt: the later publication wins.
    assert pages.offer(page(1, "republished", attempt=1), offset=13)
    assert not pages.offer(page(1, "earlier", attempt=1), offset=5)
    pages.offer(page(2, "two"), offset=1)
    assert [(r.page, r.markdown) for r in pages.results()] == [(1, "republished"), (2, "two")]


def test_markdown_has_pages_in_order_with_markers() -> None:
    results = [page(3, "third\n"), page(1, "# First\n\nbody"), page(2, "", text="plain two")]
    assert assemble_markdown(results) == (
        "<!-- page 1 -->\n# First\n\nbody\n\n"
        "<!-- page 2 -->\nplain two\n\n"
        "<!-- page 3 -->\nthird\n"
    )
    assert assemble_markdown([]) == ""


def test_failed_page_is_marked_in_the_markdown() -> None:
    text = assemble_markdown([page(1, "ok"), page(2, failed=True)])
    assert "<!-- page 2 -->\n<!-- page 2 failed: ENGINE_ERROR: engine - crashed -->" in text
    # "--" inside a comment would end it early in some parsers.
    assert text.count("-->") == 3


def test_pages_json_round_trips() -> None:
    results = [page(2, "b"), page(1, "a")]
    decoded = json.loads(pages_json(results))
    assert [PageResult.model_validate_json(json.dumps(item)) for item in decoded] == [
        results[1], results[0]
    ]


def test_zip_holds_document_json_status_and_page_files() -> None:
    results = [page(1, "one"), page(2, "two")]
    final = progress(TaskStatus.COMPLETED, done=2, total=2)
    data = task_zip(results, final)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert names == ["document.md", "pages.json", "status.json",
                         page_file_name(1), page_file_name(2)]
        assert page_file_name(1) == "page-0001.md"
        assert archive.read("document.md").decode() == assemble_markdown(results)
        assert archive.read("page-0002.md").decode() == "two\n"
        assert ProgressEvent.model_validate_json(archive.read("status.json")) == final
        assert len(json.loads(archive.read("pages.json"))) == 2
    assert task_zip(results, final) == data  # deterministic: re-writes are identical


def test_task_files_merge_with_what_was_written_before(tmp_path: Path) -> None:
    first = LatestPages()
    first.offer(page(1, "one"), 1)
    first.offer(page(2, "two"), 2)
    final = progress(TaskStatus.COMPLETED, done=2, total=2)
    task_dir = write_task_files(tmp_path, "t-1", first, final)
    assert (task_dir / "document.md").read_text() == assemble_markdown(first.results())
    # A replay that re-sends only page 2 (attempt 1) still yields both pages...
    replay = LatestPages()
    replay.offer(page(2, "two again", attempt=1), 50)
    write_task_files(tmp_path, "t-1", replay, final)
    stored = [PageResult.model_validate_json(json.dumps(p))
              for p in json.loads((task_dir / "pages.json").read_text())]
    assert [(p.page, p.markdown) for p in stored] == [(1, "one"), (2, "two again")]
    # ...and a re-announced final status with no pages keeps them.
    write_task_files(tmp_path, "t-1", LatestPages(), final)
    assert "two again" in (task_dir / "document.md").read_text()
    assert (tmp_path / "t-1.zip").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-1", "t-1.zip"]


def test_submit_out_files_use_the_input_stem(document: Path, tmp_path: Path) -> None:
    submissions = build_submissions(
        [str(document), "https://h/x/Quarterly report.pdf"], RequestOptions(), tmp_path
    )
    results = {s.task_id: [page(1, f"from {s.label}", task_id=s.task_id)] for s in submissions}
    paths = write_outputs(tmp_path / "out", submissions, results)
    names = [p.name for p in paths]
    second = submissions[1].task_id
    assert names == ["Quarterly report.md", "Quarterly report.json",
                     f"Quarterly report-{second}.md", f"Quarterly report-{second}.json"]
    assert "from https://h" in (tmp_path / "out" / f"Quarterly report-{second}.md").read_text()


# --- progress display and exit codes -----------------------------------------------------------


def test_exit_codes() -> None:
    ok = progress(TaskStatus.COMPLETED, done=3)
    lost_pages = progress(
        TaskStatus.COMPLETED, done=3, failed=1,
        error=ErrorInfo(code=ErrorCode.PAGES_FAILED, message="1 of 3 pages failed"),
    )
    failed = progress(
        TaskStatus.FAILED, error=ErrorInfo(code=ErrorCode.SOURCE_NOT_FOUND, message="gone")
    )
    running = progress(TaskStatus.STARTED, done=1)
    assert exit_code({"a": ok}) == EXIT_OK
    assert exit_code({"a": ok, "b": lost_pages}) == EXIT_FAILED
    assert exit_code({"a": ok, "b": failed}) == EXIT_FAILED
    assert exit_code({"a": ok, "b": running}) == EXIT_TIMEOUT
    assert exit_code({"a": ok, "b": None}) == EXIT_TIMEOUT
    assert exit_code({"a": failed, "b": None}) == EXIT_FAILED  # a known failure outranks
    no_code = progress(TaskStatus.COMPLETED, done=3, failed=2)
    assert failure_text(no_code).startswith("PAGES_FAILED: 2 of 3 pages failed")


def test_report_prints_outcomes_and_failures(capsys: pytest.CaptureFixture[str]) -> None:
    result = FollowResult({
        "a": progress(TaskStatus.COMPLETED, done=3, task_id="a"),
        "b": progress(
            TaskStatus.FAILED, task_id="b",
            error=ErrorInfo(code=ErrorCode.SOURCE_PATH_NOT_ALLOWED, message="outside roots"),
        ),
        "c": None,
    })
    code = report(
        result, {"a": "a.pdf", "b": "b.pdf", "c": "c"}, timeout=5,
        hints={"SOURCE_PATH_NOT_ALLOWED": "add the blob root"}, silence_hint="no consumer?",
    )
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    assert out == "a (a.pdf): completed 3/3 pages\n"
    assert "error: b (b.pdf): failed: SOURCE_PATH_NOT_ALLOWED: outside roots" in err
    assert "hint: add the blob root" in err
    assert "error: c: not final after 5 s" in err and "hint: no consumer?" in err


def test_plain_lines_one_per_event() -> None:
    stream = io.StringIO()
    display = PlainLines({"t-1": "doc.pdf"}, stream)
    display.update("t-1", progress(TaskStatus.STARTED, done=0))
    display.update("t-1", progress(TaskStatus.PAGE_DONE, done=1))
    display.close()
    assert stream.getvalue().splitlines() == [
        "t-1 (doc.pdf): started 0/3 pages", "t-1 (doc.pdf): page_done 1/3 pages"
    ]


def test_readable_progress_is_shown_as_the_consumer_words_it() -> None:
    stream = io.StringIO()
    display = PlainLines({"t-1": "doc.pdf"}, stream)
    display.update("t-1", progress(TaskStatus.STARTED, message="started: 3 pages to do"))
    display.update("t-1", progress(
        TaskStatus.PAGE_DONE, done=1, percent=33.3, eta_s=4.0,
        message="1 of 3 pages done, 33.3%, about 4 s left",
    ))
    display.close()
    assert stream.getvalue().splitlines() == [
        "t-1 (doc.pdf): started: 3 pages to do",
        "t-1 (doc.pdf): 1 of 3 pages done, 33.3%, about 4 s left",
    ]
    line = bar_line("doc.pdf", progress(
        TaskStatus.PAGE_DONE, done=1, percent=33.3, message="1 of 3 pages done, 33.3%"
    ), columns=100)
    assert "[#######-------------] 1 of 3 pages done, 33.3%" in line


def test_a_cancelled_task_is_final_and_not_a_success(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cancelled = progress(
        TaskStatus.CANCELLED, done=1, message="cancelled after 1 of 3 pages: sent by mistake",
        error=ErrorInfo(code=ErrorCode.TASK_CANCELLED, message="sent by mistake"),
    )
    assert exit_code({"a": cancelled}) == EXIT_FAILED
    assert status_text(cancelled) == (
        "cancelled after 1 of 3 pages: sent by mistake - TASK_CANCELLED: sent by mistake"
    )
    report(FollowResult({"a": cancelled}), {"a": "a.pdf"}, timeout=None)
    assert "error: a (a.pdf): cancelled: TASK_CANCELLED: sent by mistake" in (
        capsys.readouterr().err
    )


def test_bar_line() -> None:
    line = bar_line("doc.pdf", progress(TaskStatus.PAGE_DONE, done=1, total=4), columns=100)
    assert "[#####---------------]" in line and "1/4 pages" in line
    waiting = bar_line("x" * 80, None, columns=80)
    assert waiting.startswith("…") and waiting.endswith("waiting for the consumer")
    long = bar_line("x.pdf", progress(TaskStatus.FAILED, error=ErrorInfo(
        code=ErrorCode.INTERNAL, message="m" * 500)), columns=80)
    assert len(long) == 79  # cut to the terminal width: a wrapped row breaks the redraw


def test_live_bars_redraw_in_place() -> None:
    stream = io.StringIO()
    bars = LiveBars({"a": "a.pdf", "b": "b.pdf"}, stream)
    bars.flush()
    bars.update("a", progress(TaskStatus.COMPLETED, done=3, task_id="a"))
    bars.close()
    text = stream.getvalue()
    assert text.count("\x1b[2K") == 4  # two rows, drawn twice
    assert "\x1b[2F" in text  # the second drawing went back up over the first
    assert text.rstrip("\n").splitlines()[-1].endswith("waiting for the consumer")


# --- ocr-cancel ---------------------------------------------------------------------------------


def test_cancel_records_are_the_contract_s_one_per_task() -> None:
    cancels = cancel_records(["a", "b", "a"], "sent by mistake")
    assert [json.loads(c.model_dump_json()) for c in cancels] == [
        {"schema_version": 1, "action": "cancel", "task_id": "a", "reason": "sent by mistake"},
        {"schema_version": 1, "action": "cancel", "task_id": "b", "reason": "sent by mistake"},
    ]
    with pytest.raises(SystemExit):
        cancel_parser().parse_args(["not/a/task"])


def test_cancel_report_and_exit_codes() -> None:
    from producer_tools.follow_progress import dead_letter_event
    from schemas.dlq import DlqEnvelope

    cancelled = progress(TaskStatus.CANCELLED, done=1, task_id="a",
                         message="cancelled after 1 of 3 pages: oops",
                         error=ErrorInfo(code=ErrorCode.TASK_CANCELLED, message="oops"))
    ended = progress(TaskStatus.COMPLETED, done=3, task_id="b", message="completed: 3 of 3")
    refused = dead_letter_event(DlqEnvelope(
        error_code=ErrorCode.REQUEST_INVALID, error_message="source: Field required",
        original_topic="ocr.requests", original_partition=0, original_offset=1,
        original_value_base64="", failed_at=NOW,
    ), "c")
    out, err = io.StringIO(), io.StringIO()
    assert report_cancels({"a": cancelled, "b": ended}, timeout=None, out=out, err=err) == (
        EXIT_OK
    )
    assert out.getvalue().splitlines() == [
        "a: cancelled after 1 of 3 pages: oops - TASK_CANCELLED: oops",
        "b: already completed, nothing to cancel (completed: 3 of 3)",
    ]
    err = io.StringIO()
    code = report_cancels({"a": cancelled, "c": refused, "d": None}, timeout=5,
                          out=io.StringIO(), err=err)
    assert code == EXIT_FAILED
    assert "error: c: the cancel was refused: the request was refused and dead-lettered: " \
        "source: Field required" in err.getvalue()
    assert "upgrade them" in err.getvalue()
    assert "error: d: not final after 5 s" in err.getvalue()
    assert report_cancels({"d": None}, timeout=5, out=io.StringIO(), err=io.StringIO()) == (
        EXIT_TIMEOUT
    )
