"""A task's pages as files: which result of a page to keep, Markdown, JSON and a ZIP.

Two layouts of the same pages:
- `default`: DIR/<task>/{document.md, pages.json, status.json, images/} and DIR/<task>.zip
  (those plus page-0001.md, ...);
- `seed`, the files of the DeepSeek-OCR app readers were written for:
  DIR/<task>/{result.md, raw.json, images/, result.zip}: `<!-- page:N -->` before each
  page, pages joined by `---`; raw.json one entry per page (index, page_number, raw_text,
  markdown, boxes, image_assets).

Figures: a page result links its figures to the artifact store (`s3://...`, `file://...`),
which no Markdown viewer opens. The figures are downloaded first (`fetch_figures`, the only
I/O besides writing) and go into the files under `images/`, and the Markdown's links are
rewritten to them, so document.md renders inside the unpacked ZIP. A figure that could not
be downloaded becomes a placeholder saying why, never a dangling link. pages.json keeps
the results as published (store URIs).

Pure apart from `fetch_figures`, `write_atomic` and the writers that use it; shared by
`ocr-collect` (every final task), `ocr-submit --out` (the tasks it submitted) and the
gateway.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import TypeAdapter, ValidationError

from consumer.artifacts.store import ArtifactError, ArtifactStore
from consumer.log import get_logger
from schemas.figures import figure_placeholder
from schemas.progress import ProgressEvent
from schemas.result import PageResult, PageStatus

log = get_logger(__name__)

# Zip entries get a fixed date so the same pages always give the same bytes (idempotent
# re-writes, comparable archives).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
PAGE_LIST = TypeAdapter(list[PageResult])
IMAGES = "images"
# Figure downloads at once: enough to hide a store's latency, few enough to be polite.
MAX_CONCURRENT_DOWNLOADS = 8


class Layout(StrEnum):
    DEFAULT = "default"
    SEED = "seed"


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


# --- figures ---------------------------------------------------------------------------------

# An image in Markdown whose target is a store URI: `![figure 2](s3://b/p/t/page-1-fig-2.png)`.
_STORE_IMAGE = re.compile(r"!\[([^\]\n]*)\]\(((?:s3|file)://[^)\s]+)\)")
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}

# What fetch_figures found: the file's bytes, or why it is missing.
Figures = Mapping[str, "bytes | str"]


@dataclass(frozen=True, slots=True)
class FigureRef:
    """A figure of a page as the task's files hold it."""

    page: int
    number: int  # 1-based among the page's stored figures, in reading order
    uri: str
    name: str  # path inside the task's folder and ZIP: images/page-3-fig-1.png


def _extension(uri: str, media_type: str | None) -> str:
    if media_type in _EXTENSIONS:
        return _EXTENSIONS[media_type]
    suffix = PurePosixPath(uri).suffix.lower().lstrip(".")
    return suffix if suffix in ("png", "jpg", "jpeg", "webp", "gif") else "png"


def figure_refs(results: Iterable[PageResult], layout: Layout = Layout.DEFAULT,
                images: str = IMAGES) -> list[FigureRef]:
    """Every stored figure of the pages, in page and reading order, with its local name.

    Figures are the blocks that carry an artifact, and any image link of the Markdown to a
    store URI (a figure whose block did not fit the block list). Local names are made here
    from the page and the figure's number, never from the URI, which came off a topic.
    """
    word = "img" if layout is Layout.SEED else "fig"
    refs: list[FigureRef] = []
    for result in sorted(results, key=lambda r: r.page):
        found: dict[str, str | None] = {}
        for block in result.blocks:
            if block.artifact is not None:
                found.setdefault(block.artifact.uri, block.artifact.media_type)
        for match in _STORE_IMAGE.finditer(result.markdown):
            found.setdefault(match.group(2), None)
        for number, (uri, media_type) in enumerate(found.items(), start=1):
            name = f"{images}/page-{result.page}-{word}-{number}.{_extension(uri, media_type)}"
            refs.append(FigureRef(result.page, number, uri, name))
    return refs


async def fetch_figures(
    results: Iterable[PageResult], store: ArtifactStore | None
) -> dict[str, bytes | str]:
    """Download the pages' figures from the artifact store: URI -> bytes, or the reason a
    figure is missing (no store configured here, outside the store, not found, ...)."""
    refs = figure_refs(results)
    if store is None:
        why = (
            "OCR_ARTIFACTS_URI is not set for this tool: set it to the consumer's artifact "
            "store to include figures"
        )
        return {ref.uri: why for ref in refs}
    limit = asyncio.Semaphore(MAX_CONCURRENT_DOWNLOADS)

    async def one(uri: str) -> tuple[str, bytes | str]:
        async with limit:
            try:
                return uri, await store.read(uri)
            except ArtifactError as exc:
                log.warning("figure_not_downloaded", uri=uri[:200], code=exc.code.value)
                return uri, f"{exc.code.value}: {exc.message}"

    unique = list(dict.fromkeys(ref.uri for ref in refs))
    return dict(await asyncio.gather(*(one(uri) for uri in unique)))


def local_markdown(result: PageResult, refs: Sequence[FigureRef], figures: Figures) -> str:
    """The page's Markdown with each stored figure's link pointing at its local file, or,
    when the figure is missing, a placeholder saying why."""
    by_uri = {ref.uri: ref for ref in refs if ref.page == result.page}

    def replace(match: re.Match[str]) -> str:
        ref = by_uri.get(match.group(2))
        if ref is None:
            return match.group(0)
        found = figures.get(ref.uri, "not downloaded")
        if isinstance(found, bytes):
            return f"![{match.group(1)}]({ref.name})"
        return figure_placeholder(result.page, ref.number, found, missing="not included")

    return _STORE_IMAGE.sub(replace, result.markdown)


def _local(result: PageResult, refs: Sequence[FigureRef], figures: Figures) -> PageResult:
    return result.model_copy(update={"markdown": local_markdown(result, refs, figures)})


def image_files(refs: Sequence[FigureRef], figures: Figures) -> list[tuple[str, bytes]]:
    return [(ref.name, data) for ref in refs if isinstance(data := figures.get(ref.uri), bytes)]


# --- materialising -----------------------------------------------------------------------------


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


def seed_markdown(results: Iterable[PageResult]) -> str:
    """result.md of the seed: `<!-- page:N -->` before each page, pages joined by `---`."""
    parts = []
    for result in sorted(results, key=lambda r: r.page):
        body = page_body(result)
        marker = f"<!-- page:{result.page} -->"
        parts.append(f"{marker}\n{body}" if body else marker)
    return "\n\n---\n\n".join(parts) + "\n" if parts else ""


def seed_raw_json(results: Iterable[PageResult], refs: Sequence[FigureRef]) -> str:
    """raw.json of the seed: per page its raw model output, Markdown, boxes and images."""
    entries: list[dict[str, Any]] = []
    for index, result in enumerate(sorted(results, key=lambda r: r.page)):
        names = {ref.uri: ref.name for ref in refs if ref.page == result.page}
        boxes = []
        for block in result.blocks:
            box: dict[str, Any] = {
                "label": block.label, "text": block.text, "bbox_px": block.bbox_px,
                "bbox_pdf": block.bbox_pdf,
            }
            if block.artifact is not None and block.artifact.uri in names:
                box["image"] = names[block.artifact.uri]
            boxes.append(box)
        entries.append({
            "index": index,
            "page_number": result.page,
            "raw_text": result.raw_text,
            "markdown": result.markdown,
            "boxes": boxes,
            "image_assets": list(names.values()),
        })
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def task_files(
    results: Sequence[PageResult], final: ProgressEvent | None, figures: Figures | None = None,
    layout: Layout = Layout.DEFAULT,
) -> list[tuple[str, bytes]]:
    """Every file of a task as (path inside the folder and ZIP, bytes), in ZIP order.

    Default: document.md, pages.json, status.json (when final is known), one file per page,
    then images/. Seed: result.md, raw.json, then images/. Figures missing from `figures`
    (None: none were downloaded) become placeholders.
    """
    refs = figure_refs(results, layout)
    found: Figures = figures or {}
    local = [_local(result, refs, found) for result in sorted(results, key=lambda r: r.page)]
    entries: list[tuple[str, bytes]] = []
    if layout is Layout.SEED:
        entries.append(("result.md", seed_markdown(local).encode("utf-8")))
        entries.append(("raw.json", seed_raw_json(local, refs).encode("utf-8")))
    else:
        entries.append(("document.md", assemble_markdown(local).encode("utf-8")))
        entries.append(("pages.json", (pages_json(results) + "\n").encode("utf-8")))
        if final is not None:
            entries.append(("status.json", (final.model_dump_json(indent=2) + "\n").encode()))
        for result in local:
            body = page_body(result)
            entries.append((page_file_name(result.page), f"{body}\n".encode() if body else b""))
    entries.extend(image_files(refs, found))
    return entries


def zip_files(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """A deterministic ZIP of `entries`: the same files always give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            # Images are compressed already: stored as they are.
            stored = name.startswith(f"{IMAGES}/")
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def task_zip(
    results: Sequence[PageResult], final: ProgressEvent | None, figures: Figures | None = None,
    layout: Layout = Layout.DEFAULT,
) -> bytes:
    """The task's ZIP: `task_files` zipped."""
    return zip_files(task_files(results, final, figures, layout))


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


def merged_results(out_dir: Path, task_id: str, pages: LatestPages) -> list[PageResult]:
    """`pages` merged with those an earlier run wrote to DIR/<task_id>/pages.json."""
    merged = LatestPages()
    # Pages written earlier rank below anything read now at the same attempt.
    for earlier in load_written_pages(out_dir / task_id):
        merged.offer(earlier, -1)
    merged.absorb(pages)
    return merged.results()


def _write_folder(task_dir: Path, entries: Sequence[tuple[str, bytes]]) -> None:
    for name, data in entries:
        write_atomic(task_dir / name, data)
    # Figures of an earlier write that the pages no longer link would mislead: removed.
    images = task_dir / IMAGES
    kept = {name for name, _ in entries}
    if images.is_dir():
        for stale in images.iterdir():
            if f"{IMAGES}/{stale.name}" not in kept and stale.is_file():
                stale.unlink()


def write_task_files(
    out_dir: Path, task_id: str, pages: LatestPages, final: ProgressEvent | None, *,
    figures: Figures | None = None, layout: Layout = Layout.DEFAULT,
) -> Path:
    """Write the task's files, merged with what an earlier run wrote; returns its folder.

    Default: DIR/<task_id>/{document.md, pages.json, status.json, images/} and
    DIR/<task_id>.zip (with page-NNNN.md too). Seed: DIR/<task_id>/{result.md, raw.json,
    images/, result.zip} plus pages.json, which later writes merge with. `figures` is what
    `fetch_figures` downloaded for these pages.

    `task_id` comes from a validated event (TaskId allows no '/' and no leading '.'), so it
    is a safe single path component.
    """
    task_dir = out_dir / task_id
    results = merged_results(out_dir, task_id, pages)
    entries = task_files(results, final, figures, layout)
    if layout is Layout.SEED:
        pages_file = ("pages.json", (pages_json(results) + "\n").encode("utf-8"))
        _write_folder(task_dir, [*entries, pages_file])
        write_atomic(task_dir / "result.zip", zip_files(entries))
        return task_dir
    # The folder holds what the ZIP does but the per-page files (document.md has them all).
    _write_folder(task_dir, [(n, d) for n, d in entries if not n.startswith("page-")])
    write_atomic(out_dir / f"{task_id}.zip", zip_files(entries))
    return task_dir
