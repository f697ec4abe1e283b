"""A task's pages as files: which result of a page to keep, Markdown, JSON and a ZIP.

Pure apart from `write_atomic` and the `write_task_files` that uses it; shared by
`ocr-collect` (every final task) and `ocr-submit --out` (the tasks it submitted).
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from consumer.log import get_logger
from schemas.progress import ProgressEvent
from schemas.result import PageResult, PageStatus

log = get_logger(__name__)

# Zip entries get a fixed date so the same pages always give the same bytes (idempotent
# re-writes, comparable archives).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
PAGE_LIST = TypeAdapter(list[PageResult])


# --- latest result per page ------------------------------------------------------------------


class LatestPages:
    """The result to keep for each page of one task: highest attempt, then highest offset.

    A replay republishes pages with a higher attempt; within one attempt a later offset is
    a later publication (a resumed task may publish a page twice).
    """

    def __init__(self) -> None:
        self._pages: dict[int, tuple[tuple[int, int], PageResult]] = {}

    def offer(self, result: PageResult, offset: int) -> bool:
        """Keep `result` if it beats what is held for its page; True when it was kept."""
        rank = (result.attempt, offset)
        held = self._pages.get(result.page)
        if held is not None and held[0] >= rank:
            return False
        self._pages[result.page] = (rank, result)
        return True

    def results(self) -> list[PageResult]:
        return [self._pages[page][1] for page in sorted(self._pages)]

    def absorb(self, other: LatestPages) -> None:
        """Offer every page `other` holds, with the offset it was read at."""
        for (_, offset), result in other._pages.values():
            self.offer(result, offset)

    def __len__(self) -> int:
        return len(self._pages)


# --- materialising -----------------------------------------------------------------------------


def _comment_safe(text: str) -> str:
    # An HTML comment may not contain "--" and should stay on one line.
    return re.sub(r"-{2,}", "-", " ".join(text.split()))


def page_body(result: PageResult) -> str:
    """What a page contributes to Markdown: its Markdown, else its plain text (free OCR)."""
    body = (result.markdown or result.text).strip("\n")
    if result.status is PageStatus.FAILED:
        reason = (
            f"{result.error.code.value}: {result.error.message}"
            if result.error is not None
            else f"finish reason {result.finish_reason.value}"
        )
        note = f"<!-- page {result.page} failed: {_comment_safe(reason)} -->"
        body = f"{note}\n{body}" if body else note
    return body


def assemble_markdown(results: Iterable[PageResult]) -> str:
    """Pages in order, each after `<!-- page N -->`, separated by a blank line."""
    parts = []
    for result in sorted(results, key=lambda r: r.page):
        body = page_body(result)
        marker = f"<!-- page {result.page} -->"
        parts.append(f"{marker}\n{body}" if body else marker)
    return "\n\n".join(parts) + "\n" if parts else ""


def pages_json(results: Iterable[PageResult]) -> str:
    ordered = sorted(results, key=lambda r: r.page)
    return json.dumps([r.model_dump(mode="json") for r in ordered], indent=2, ensure_ascii=False)


def page_file_name(page: int) -> str:
    return f"page-{page:04d}.md"


def task_zip(results: Sequence[PageResult], final: ProgressEvent | None) -> bytes:
    """document.md, pages.json, status.json (when final is known) and one file per page."""
    entries: list[tuple[str, str]] = [
        ("document.md", assemble_markdown(results)),
        ("pages.json", pages_json(results) + "\n"),
    ]
    if final is not None:
        entries.append(("status.json", final.model_dump_json(indent=2) + "\n"))
    for result in sorted(results, key=lambda r: r.page):
        body = page_body(result)
        entries.append((page_file_name(result.page), f"{body}\n" if body else ""))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, text.encode("utf-8"))
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with partial.open("xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load_written_pages(task_dir: Path) -> list[PageResult]:
    """Pages an earlier run wrote for this task; [] when there are none or they are unreadable."""
    path = task_dir / "pages.json"
    try:
        return PAGE_LIST.validate_json(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValidationError) as exc:
        log.warning("earlier_pages_unreadable", path=str(path), error=str(exc).splitlines()[0])
        return []


def write_task_files(
    out_dir: Path, task_id: str, pages: LatestPages, final: ProgressEvent | None
) -> Path:
    """Write DIR/<task_id>/{document.md,pages.json,status.json} and DIR/<task_id>.zip.

    `task_id` comes from a validated event (TaskId allows no '/' and no leading '.'), so it
    is a safe single path component.
    """
    task_dir = out_dir / task_id
    merged = LatestPages()
    # Pages written earlier rank below anything read now at the same attempt.
    for earlier in load_written_pages(task_dir):
        merged.offer(earlier, -1)
    merged.absorb(pages)
    results = merged.results()
    write_atomic(task_dir / "document.md", assemble_markdown(results).encode("utf-8"))
    write_atomic(task_dir / "pages.json", (pages_json(results) + "\n").encode("utf-8"))
    if final is not None:
        write_atomic(task_dir / "status.json", (final.model_dump_json(indent=2) + "\n").encode())
    write_atomic(out_dir / f"{task_id}.zip", task_zip(results, final))
    return task_dir
