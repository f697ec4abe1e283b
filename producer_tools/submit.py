"""`ocr-submit`: publish OCR requests for local files or URIs, optionally wait for the result.

    ocr-submit [--wait] [--timeout S] [--out DIR] [--pages 1-3,5] [--prompt KIND]
               [--locate-text T] [--dpi N] [--force] [--inline] [--task-id ID]
               [--metadata k=v ...] FILE|URI...

What a request holds, how a local file is handed over and how task ids are derived:
submit_requests.py.

--wait follows the progress topic from the end offsets read *before* producing, so no
event is missed however quickly the consumer answers, and a task that completed earlier is
reported through the consumer's re-announcement (see follow_progress.py). The dead-letter
topic is followed too, so a refused request fails fast with its reason. Exit codes: 0 every
task completed with no failed page; 1 a task failed or lost pages; 2 an input or option
cannot become a request; 3 --timeout passed first; 4 Kafka unreachable. --out DIR
(implies --wait) writes DIR/<input stem>.md and DIR/<input stem>.json for each completed
task from the results topic, and its figures in DIR/<input stem>-images/ (read from
OCR_ARTIFACTS_URI, the consumer's store); see collect.read_task_results for what that
read costs.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from consumer.artifacts.store import open_artifact_store
from consumer.log import get_logger
from consumer.settings import (
    ArtifactStoreSettings,
    HandOver,
    Logging,
    TopicClient,
    add_settings_arguments,
    add_version_argument,
    producer_kwargs,
)
from producer_tools import EXIT_OK, describe_validation, run_cli
from producer_tools.collect import read_task_results
from producer_tools.follow_progress import (
    ProgressFollower,
    make_display,
    report,
    succeeded,
    topic_partitions,
)
from producer_tools.submit_requests import (
    MAX_INLINE_BYTES,
    RequestOptions,
    Submission,
    SubmitError,
    build_submissions,
    parse_metadata,
)
from producer_tools.task_files import (
    Figures,
    assemble_markdown,
    fetch_figures,
    figure_refs,
    image_files,
    local_markdown,
    pages_json,
    write_atomic,
)
from schemas.cloudevents import CE_TYPE_REQUEST, ce_headers
from schemas.common import ErrorCode
from schemas.event_ids import request_event_id
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import (
    PromptKind,
    parse_page_ranges,
)
from schemas.result import PageResult

log = get_logger(__name__)


class SubmitSettings(TopicClient, HandOver, ArtifactStoreSettings, Logging):
    """What ocr-submit reads."""


def options_from_args(args: argparse.Namespace) -> RequestOptions:
    try:
        pages = parse_page_ranges(args.pages) if args.pages else None
    except (ValueError, ValidationError) as exc:
        detail = describe_validation(exc) if isinstance(exc, ValidationError) else str(exc)
        raise SubmitError(f"--pages {args.pages!r}: {detail}") from exc
    prompt = PromptKind(args.prompt)
    if prompt is PromptKind.LOCATE and not args.locate_text:
        raise SubmitError("--prompt locate needs --locate-text (what to find on the pages)")
    return RequestOptions(
        pages=pages,
        prompt=prompt,
        locate_text=args.locate_text,
        dpi=args.dpi,
        force=args.force,
        inline=args.inline,
        metadata=parse_metadata(args.metadata),
    )


# --- Kafka ----------------------------------------------------------------------------------


async def produce_requests(settings: SubmitSettings, submissions: Sequence[Submission]) -> None:
    """Publish the requests keyed by task id, idempotently, waiting for every ack."""
    # A missing topic would otherwise surface as a metadata timeout 40 s later.
    await topic_partitions(settings, [settings.topic_requests])
    producer = AIOKafkaProducer(
        **producer_kwargs(settings),
        client_id="ocr-submit",
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
    )
    await producer.start()
    source = f"ocr-submit/{socket.gethostname()}"
    try:
        pending = []
        for submission in submissions:
            request = submission.request
            headers = ce_headers(
                event_id=request_event_id(request, uuid.uuid4().hex),
                event_type=CE_TYPE_REQUEST,
                source=source,
                subject=request.task_id,
                time=request.submitted_at,
            )
            pending.append(
                await producer.send(
                    settings.topic_requests,
                    value=request.model_dump_json(exclude_none=True).encode(),
                    key=request.task_id.encode(),
                    headers=headers,
                )
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def write_outputs(
    out_dir: Path,
    submissions: Sequence[Submission],
    results: Mapping[str, Sequence[PageResult]],
    figures: Figures | None = None,
) -> list[Path]:
    """DIR/<stem>.md and DIR/<stem>.json per task, and the figures `fetch_figures` got in
    DIR/<stem>-images/ (the Markdown links to them); a stem used twice gets the task id
    added."""
    written: list[Path] = []
    used: set[str] = set()
    found: Figures = figures or {}
    for submission in submissions:
        pages = results.get(submission.task_id)
        if pages is None:
            continue
        stem = submission.stem
        if stem in used:
            stem = f"{stem}-{submission.task_id}"
        used.add(stem)
        refs = figure_refs(pages, images=f"{stem}-images")
        local = [page.model_copy(update={"markdown": local_markdown(page, refs, found)})
                 for page in pages]
        markdown_path = out_dir / f"{stem}.md"
        json_path = out_dir / f"{stem}.json"
        write_atomic(markdown_path, assemble_markdown(local).encode("utf-8"))
        write_atomic(json_path, (pages_json(pages) + "\n").encode("utf-8"))
        written.extend([markdown_path, json_path])
        for name, data in image_files(refs, found):
            write_atomic(out_dir / name, data)
            written.append(out_dir / name)
    return written


def failure_hints(settings: SubmitSettings) -> dict[str, str]:
    blob_root = settings.blob_root.resolve()
    return {
        ErrorCode.SOURCE_PATH_NOT_ALLOWED.value: (
            f"the consumer reads file:// URIs only under its OCR_FILE_ROOTS; add {blob_root} "
            "(this tool's OCR_BLOB_ROOT) to them, or point --blob-root at a folder they "
            "contain (the local stack uses .run/blobs of the repository)"
        ),
        ErrorCode.TASK_ID_CONFLICT.value: (
            "that task id was already used for a different request: choose another "
            "--task-id, or add --force to replace the earlier task"
        ),
        ErrorCode.SOURCE_SCHEME_NOT_ALLOWED.value: (
            "the consumer does not accept this URI scheme (OCR_ALLOWED_SCHEMES); hand the "
            "file over by path instead"
        ),
    }


async def run(args: argparse.Namespace, settings: SubmitSettings) -> int:
    options = options_from_args(args)
    wait = args.wait or args.out is not None
    if args.timeout is not None and args.timeout <= 0:
        raise SubmitError("--timeout must be a positive number of seconds")
    submissions = await asyncio.to_thread(
        build_submissions, args.inputs, options, settings.blob_root, args.task_id
    )
    labels = {s.task_id: s.label for s in submissions}
    follower = (
        ProgressFollower(
            settings, labels, make_display(labels), dead_letters=True, client_id="ocr-submit"
        )
        if wait
        else None
    )
    try:
        if follower is not None:
            # Before producing: the start position must lie before our requests' answers.
            await follower.start(from_beginning=False)
        await produce_requests(settings, submissions)
        for submission in submissions:
            print(f"{submission.task_id}\t{submission.label}", flush=True)
        if follower is None:
            return EXIT_OK
        outcome = await follower.wait(args.timeout)
    finally:
        if follower is not None:
            await follower.stop()
    code = report(
        outcome,
        labels,
        timeout=args.timeout,
        hints=failure_hints(settings),
        silence_hint=(
            f"no progress arrived: is an ocr-consumer reading {settings.topic_requests} on "
            f"{settings.kafka_bootstrap} (and publishing to {settings.topic_progress})?"
        ),
    )
    if args.out is not None:
        completed: dict[str, ProgressEvent] = {
            task_id: event
            for task_id, event in outcome.latest.items()
            if event is not None and event.status is TaskStatus.COMPLETED
        }
        if completed:
            results = await read_task_results(
                settings, {task_id: e.pages_total for task_id, e in completed.items()}
            )
            figures = await fetch_figures(
                [page for pages in results.values() for page in pages],
                open_artifact_store(settings),
            )
            paths = await asyncio.to_thread(
                write_outputs, args.out, submissions, results, figures
            )
            for path in paths:
                print(f"wrote {path}", flush=True)
            for task_id, pages in results.items():
                if not succeeded(completed[task_id]):
                    for page in pages:
                        if page.error is not None:
                            print(
                                f"error: {task_id} page {page.page}: {page.error.code.value}: "
                                f"{page.error.message}",
                                file=sys.stderr,
                            )
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-submit",
        description="Submit documents for OCR through Kafka: local files are handed over "
        "under OCR_BLOB_ROOT and referenced by file:// URI; URIs are passed through. Prints "
        "'<task id><TAB><input>' per task.",
        allow_abbrev=False,
    )
    add_version_argument(parser)
    parser.add_argument("inputs", nargs="+", metavar="FILE|URI", help="documents to submit")
    parser.add_argument(
        "--wait", action="store_true", help="follow progress until every task is final"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="with --wait: give up after S seconds (exit 3)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help="write DIR/<stem>.md, .json and -images/ (implies --wait)",
    )
    parser.add_argument(
        "--pages", default=None, metavar="RANGES", help="page ranges, e.g. 1-3,5,9- (all pages)"
    )
    parser.add_argument(
        "--prompt", default=PromptKind.MARKDOWN.value, choices=[p.value for p in PromptKind],
        metavar="KIND", help="per page: " + ", ".join(kind.value for kind in PromptKind)
        + " (default: markdown)",
    )
    parser.add_argument(
        "--locate-text", default=None, metavar="T", help="what --prompt locate looks for"
    )
    parser.add_argument(
        "--dpi", type=int, default=144, metavar="N", help="render resolution of PDF pages"
    )
    parser.add_argument(
        "--force", action="store_true", help="recompute even if the task completed before"
    )
    parser.add_argument(
        "--inline", action="store_true",
        help=f"send the file in the request (<= {MAX_INLINE_BYTES // 1024} KiB)",
    )
    parser.add_argument(
        "--task-id", default=None, metavar="ID",
        help="task id of a single input (default: derived)",
    )
    parser.add_argument(
        "--metadata", action="append", default=None, metavar="K=V",
        help="key=value echoed on every output (repeatable)",
    )
    add_settings_arguments(parser, SubmitSettings)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv, SubmitSettings)


if __name__ == "__main__":
    raise SystemExit(main())
