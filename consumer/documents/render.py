"""Page streaming for the task runner: pages rendered one at a time, on demand, off the loop.

The event loop never touches document bytes beyond handing them over: MuPDF and the image
decoders run in render worker processes (`renderproc` explains why not threads), and the
pixels come back as one RGB page at a time, so a 500-page PDF is never in memory rendered.
"""

from __future__ import annotations

import asyncio
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


def _page_count(reply: Reply) -> int:
    if isinstance(reply, Opened):
        return reply.page_count
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
        page_count: int,
        settings: Settings,
        task_id: str,
    ) -> None:
        self.page_count = page_count
        self.media_type = opening.media_type
        self._worker = worker
        self._opening = opening  # re-sent if the worker restarts while we are open
        self._timeout_s = settings.page_timeout_s
        self._task_id = task_id
        self._closed = False

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
        command = RenderCommand(
            doc_id=self._opening.doc_id, page=page, dpi=dpi, max_pixels=self._opening.max_pixels
        )
        finish = partial(_page_image, task_id=self._task_id, page=page)
        # One retry: when a worker dies, every page queued on it fails, not only the page
        # that killed it; the innocent ones succeed on a fresh worker.
        for attempt in (1, 2):
            try:
                return await self._worker.call(
                    command, timeout_s=self._timeout_s, reopen=self._opening, finish=finish
                )
            except WorkerLost as exc:
                log.warning("render_worker_lost", page=page, attempt=attempt, error=str(exc))
            except WorkerTimedOut:
                raise OcrError(
                    ErrorCode.PAGE_TIMEOUT,
                    f"rendering page {page} at {dpi} dpi took longer than {self._timeout_s:g} s "
                    "(OCR_PAGE_TIMEOUT_S); the page is too complex: request a lower dpi or "
                    "simplify the page",
                ) from None
        raise OcrError(
            ErrorCode.PAGE_RENDER_FAILED,
            f"the renderer process died twice while rendering page {page}; the page is "
            "probably malformed: re-export the document",
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
        page_count = await _open_in(worker, opening, settings.page_timeout_s)
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
        page_count=page_count,
        settings=settings,
        task_id=task_id,
    )


async def _open_in(worker: RenderWorker, opening: OpenCommand, timeout_s: float) -> int:
    for attempt in (1, 2):
        try:
            return await worker.call(opening, timeout_s=timeout_s, finish=_page_count)
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
