"""Page streaming for the task runner: pages rendered one at a time, on demand, off the loop.

The event loop never touches document bytes beyond handing them over: MuPDF and the image
decoders run in render worker processes (`renderproc` explains why not threads), and the
pixels come back as one RGB page at a time, so a 500-page PDF is never in memory rendered.

A document's render cost is bounded as a whole (`RenderBudget`): a tiny PDF that strokes
20,000 lines a page takes half a minute per page, and a per-page timeout alone would let
it hold a render worker for hours. Once the task has used OCR_RENDER_BUDGET_S of worker
time, or OCR_RENDER_TIMEOUTS of its pages overran OCR_PAGE_TIMEOUT_S, its remaining pages
fail at once with DOCUMENT_TOO_COMPLEX (`RenderBudgetSpent`), queued ones included.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from functools import partial

from PIL import Image

from consumer.config import Settings
from consumer.documents import renderproc
from consumer.documents.fetch import FetchedDocument
from consumer.documents.renderproc import (
    CloseCommand,
    Failed,
    OpenCommand,
    Opened,
    RenderCommand,
    Rendered,
    RenderWorker,
    Reply,
    WorkerLost,
    WorkerTimedOut,
)
from consumer.errors import OcrError
from consumer.log import get_logger
from consumer.page_image import PageImage
from schemas.common import ErrorCode
from schemas.request import PageRange

log = get_logger(__name__)


class RenderBudgetSpent(OcrError):
    """The document costs more to render than a task may spend: its remaining pages fail
    with DOCUMENT_TOO_COMPLEX, and the runner ends the task failed with the same code."""


@dataclass(slots=True)
class RenderBudget:
    """Render-worker time and render timeouts one document may use; pure bookkeeping.

    Charged on its worker's IPC thread (before the worker picks its next command), read
    on the loop; plain numbers under the GIL."""

    limit_s: float
    max_timeouts: int
    spent_s: float = 0.0
    timeouts: int = 0

    def charge(self, seconds: float, *, timed_out: bool = False) -> None:
        self.spent_s += max(seconds, 0.0)
        if timed_out:
            self.timeouts += 1

    @property
    def exhausted(self) -> bool:
        return self.timeouts >= self.max_timeouts or self.spent_s >= self.limit_s

    def error(self) -> RenderBudgetSpent:
        if self.timeouts >= self.max_timeouts:
            why = (
                f"{self.timeouts} of its page renders took longer than OCR_PAGE_TIMEOUT_S or "
                f"killed the renderer (OCR_RENDER_TIMEOUTS={self.max_timeouts})"
            )
        else:
            why = (
                f"rendering it took {self.spent_s:.0f} s of render-worker time, more than "
                f"OCR_RENDER_BUDGET_S={self.limit_s:g}"
            )
        return RenderBudgetSpent(
            ErrorCode.DOCUMENT_TOO_COMPLEX,
            f"the document is too complex to render: {why}; flatten its vector graphics "
            "(print it to an image PDF), request a lower dpi or fewer pages, or raise the limit",
        )


def select_pages(ranges: list[PageRange] | None, page_count: int) -> list[int]:
    """The 1-based pages to process: sorted, unique, clipped to the document.

    No ranges means every page; ranges that select nothing (an empty list included) are an
    error, since processing zero pages is never what the sender meant, and so is a range
    that ends before it starts, whatever the others select.
    """
    backwards = [page_range for page_range in ranges or [] if page_range.reversed]
    if backwards:
        # The schema cannot refuse these (no JSON Schema keyword compares two fields), so
        # the task does: silently skipping one would drop pages the sender asked for.
        shown = ", ".join(_describe_range(page_range) for page_range in backwards)
        raise OcrError(
            ErrorCode.PAGE_RANGE_EMPTY,
            f"page range {shown} ends before it starts and selects nothing; write the "
            "smaller page first (e.g. 2-5)",
        )
    if ranges is None:
        selected = list(range(1, page_count + 1))
    else:
        chosen: set[int] = set()
        for page_range in ranges:
            last = page_count if page_range.last is None else min(page_range.last, page_count)
            chosen.update(range(page_range.first, last + 1))
        selected = sorted(chosen)
    if not selected:
        asked = (
            "all pages"
            if ranges is None
            else "pages "
            + (", ".join(_describe_range(page_range) for page_range in ranges) or "(none)")
        )
        raise OcrError(
            ErrorCode.PAGE_RANGE_EMPTY,
            f"{asked} select nothing in a document of {page_count} pages; ask for pages "
            f"between 1 and {page_count}, or send no page ranges to process every page",
        )
    return selected


def _describe_range(page_range: PageRange) -> str:
    if page_range.last is None:
        return f"{page_range.first}-"
    if page_range.last == page_range.first:
        return str(page_range.first)
    return f"{page_range.first}-{page_range.last}"


def _opened(reply: Reply) -> Opened:
    if isinstance(reply, Opened):
        return reply
    if isinstance(reply, Failed):
        raise reply.error()
    raise OcrError(ErrorCode.INTERNAL, f"render worker answered an open with {reply!r}")


def _page_image(reply: Reply, *, task_id: str, page: int) -> PageImage:
    """Runs on the IPC thread: building the PIL image copies megabytes of pixels."""
    if isinstance(reply, Failed):
        raise reply.error()
    if not isinstance(reply, Rendered):
        raise OcrError(ErrorCode.INTERNAL, f"render worker answered a render with {reply!r}")
    image = Image.frombytes(
        "RGB", (reply.width, reply.height), reply.rgb, "raw", "RGB", reply.stride
    )
    return PageImage(
        task_id=task_id,
        page=page,
        image=image,
        dpi=reply.dpi,
        width_pt=reply.width_pt,
        height_pt=reply.height_pt,
    )


class OpenedDocument:
    """A document held open by one render worker; see `open_document`."""

    def __init__(
        self,
        *,
        worker: RenderWorker,
        opening: OpenCommand,
        opened: Opened,
        settings: Settings,
        task_id: str,
    ) -> None:
        self.page_count = opened.page_count
        self._page_sizes = opened.page_sizes
        self._sizes_in_points = opened.in_points

        self.media_type = opening.media_type
        self._worker = worker
        self._opening = opening  # re-sent if the worker restarts while we are open
        self._timeout_s = settings.page_timeout_s
        self._max_page_pixels = settings.max_page_pixels
        self._task_id = task_id
        self._closed = False
        self.budget = RenderBudget(settings.render_budget_s, settings.render_timeouts)
        self._budget_reported = False

    def page_pixels(self, page: int, dpi: int) -> int:
        """The pixels `page` will have at `dpi`, known before rendering it: what the page
        costs the in-flight budget (PageScheduler). Never more than OCR_MAX_PAGE_PIXELS,
        since a larger page is refused before it is drawn (charged its size, a 600-dpi
        poster would wait for the whole budget to drain, and hold up every task behind
        it); that limit too when the size is unknown (a damaged page tree)."""
        if not 1 <= page <= len(self._page_sizes):
            return self._max_page_pixels
        width, height = self._page_sizes[page - 1]
        if not self._sizes_in_points:
            pixels = round(width) * round(height)  # an image keeps its own pixels
        else:
            scale = dpi / 72.0
            pixels = math.ceil(width * scale) * math.ceil(height * scale)
        return min(pixels, self._max_page_pixels)

    async def render_page(self, page: int, dpi: int) -> PageImage:
        """Render 1-based `page` (PDFs at `dpi`; images keep their own size and dpi)."""
        if self._closed:
            raise RuntimeError("render_page() after close()")
        if not 1 <= page <= self.page_count:
            raise OcrError(
                ErrorCode.PAGE_RENDER_FAILED,
                f"page {page} does not exist; the document has {self.page_count} pages",
            )
        if dpi < 1:
            raise OcrError(ErrorCode.REQUEST_INVALID, f"dpi {dpi} is not positive; use 36-600")
        if self.budget.exhausted:
            raise self.budget.error()
        command = RenderCommand(
            doc_id=self._opening.doc_id, page=page, dpi=dpi, max_pixels=self._opening.max_pixels
        )
        finish = partial(_page_image, task_id=self._task_id, page=page)
        # One retry: when a worker dies, every page queued on it fails, not only the page
        # that killed it; the innocent ones succeed on a fresh worker.
        for attempt in (1, 2):
            try:
                image, _ = await self._worker.call(
                    command, timeout_s=self._timeout_s, reopen=self._opening, finish=finish,
                    gate=self._render_gate, on_served=self._served,
                )
            except WorkerLost as exc:
                log.warning("render_worker_lost", page=page, attempt=attempt, error=str(exc))
                self._after_render()
                if self.budget.exhausted:
                    raise self.budget.error() from None
                continue
            except WorkerTimedOut:
                self._after_render()
                raise OcrError(
                    ErrorCode.PAGE_TIMEOUT,
                    f"rendering page {page} at {dpi} dpi took longer than {self._timeout_s:g} s "
                    "(OCR_PAGE_TIMEOUT_S); the page is too complex: request a lower dpi or "
                    "simplify the page",
                ) from None
            self._after_render()
            return image
        raise OcrError(
            ErrorCode.PAGE_RENDER_FAILED,
            f"the renderer process died twice while rendering page {page}; the page is "
            "probably malformed: re-export the document",
        )

    def _render_gate(self) -> BaseException | None:
        """IPC thread: a page whose turn comes after the budget is spent is not sent."""
        return self.budget.error() if self.budget.exhausted else None

    def _served(self, seconds: float, timed_out: bool) -> None:
        """IPC thread: charged before the worker picks its next command, so that a render
        queued behind the page that spent the budget is refused, not sent."""
        self.budget.charge(seconds, timed_out=timed_out)

    def _after_render(self) -> None:
        if self.budget.exhausted and not self._budget_reported:
            self._budget_reported = True
            # Pages queued behind this one fail now rather than when their turn comes.
            dropped = self._worker.drop_renders(self._opening.doc_id, self.budget.error())
            log.warning(
                "render_budget_spent", spent_s=round(self.budget.spent_s, 1),
                timeouts=self.budget.timeouts, dropped_pages=dropped,
            )

    async def close(self) -> None:
        """Release the document in its worker; idempotent and safe to cancel."""
        if self._closed:
            return
        self._closed = True
        self._worker.documents -= 1
        await self._worker.close_document(self._opening.doc_id)


async def open_document(doc: FetchedDocument, settings: Settings, task_id: str) -> OpenedDocument:
    """Open `doc` in a render worker; refuses corrupt, encrypted and over-long documents."""
    worker = renderproc.render_pool(settings.render_workers).place()
    opening = OpenCommand(
        doc_id=renderproc.next_doc_id(),
        data=doc.data,
        media_type=doc.media_type,
        max_pages=settings.max_pages,
        max_pixels=settings.max_page_pixels,
    )
    worker.documents += 1
    try:
        opened = await _open_in(worker, opening, settings.page_timeout_s)
    except OcrError:
        worker.documents -= 1  # the worker refused it and holds nothing
        raise
    except BaseException:
        # Cancelled (or worse) while the worker may already hold the document.
        worker.documents -= 1
        worker.call_soon(CloseCommand(doc_id=opening.doc_id))
        raise
    return OpenedDocument(
        worker=worker,
        opening=opening,
        opened=opened,
        settings=settings,
        task_id=task_id,
    )


async def _open_in(worker: RenderWorker, opening: OpenCommand, timeout_s: float) -> Opened:
    for attempt in (1, 2):
        try:
            opened, _ = await worker.call(opening, timeout_s=timeout_s, finish=_opened)
            return opened
        except WorkerLost as exc:
            log.warning("render_worker_lost", stage="open", attempt=attempt, error=str(exc))
        except WorkerTimedOut:
            raise OcrError(
                ErrorCode.DOCUMENT_CORRUPT,
                f"opening the document took longer than {timeout_s:g} s (OCR_PAGE_TIMEOUT_S); "
                "it is probably damaged (MuPDF repairs broken files by scanning them): "
                "re-export it",
            ) from None
    raise OcrError(
        ErrorCode.DOCUMENT_CORRUPT,
        "the renderer process died twice while opening the document; it is probably "
        "malformed: re-export it",
    )


async def warm_up_renderers(settings: Settings) -> None:
    """Start the render workers now, so that the first task does not wait for them."""
    pool = renderproc.render_pool(settings.render_workers)
    await asyncio.gather(*(worker.close_document(0) for worker in pool.workers))


def shutdown_renderers() -> None:
    """Stop the render worker processes (consumer shutdown)."""
    renderproc.shutdown_render_pool()
