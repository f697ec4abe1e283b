"""Uploads checked against the consumer's limits, and page images drawn, in worker processes.

MuPDF holds the GIL for a whole page and decoders parse hostile bytes, so neither runs in
the gateway's process (as in the consumer: consumer/documents/rasterize.py explains). The
workers use the consumer's own rasteriser, so a refused upload gets the code and message
the consumer would have given it, and a page image has exactly the pixels the engine saw:
the blocks' `bbox_px` fit it.
"""

from __future__ import annotations

import asyncio
import io
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymupdf as _pymupdf
from PIL import Image

from consumer.documents.media import PDF, normalize_declared, require_supported
from consumer.documents.rasterize import open_raster
from consumer.documents.render import select_pages
from consumer.errors import OcrError
from schemas.common import ErrorCode
from schemas.request import PageRange

_POINTS_PER_INCH = 72.0
# Untyped in parts (see consumer/documents/rasterize.py): used as a dynamic module.
pymupdf: Any = _pymupdf


@dataclass(frozen=True, slots=True)
class Inspection:
    media_type: str
    page_count: int
    pages: list[int]  # the selected pages


# Worker results cross the process boundary as plain tuples: ("ok", value) or
# ("error", code, message); OcrError itself does not survive pickling.
_Reply = tuple[Any, ...]


def _guarded(call: Any, *args: Any) -> _Reply:
    try:
        return ("ok", call(*args))
    except OcrError as exc:
        return ("error", exc.code.value, exc.message)


def _inspect(
    path: str, declared: str | None, ranges: list[PageRange] | None, dpi: int,
    max_pages: int, max_pixels: int,
) -> Inspection:
    data = Path(path).read_bytes()
    normalize_declared(declared)
    media_type = require_supported(data, declared)
    raster = open_raster(data, media_type, max_pages)
    try:
        pages = select_pages(ranges, raster.page_count)
        if media_type == PDF:
            _check_pdf_pixels(data, pages, dpi, max_pixels)
        else:
            _check_image_pixels(data, pages, max_pixels)
        return Inspection(media_type=media_type, page_count=raster.page_count, pages=pages)
    finally:
        raster.close()


def _too_many_pixels(page: int, width: int, height: int, max_pixels: int, advice: str) -> OcrError:
    return OcrError(
        ErrorCode.PAGE_TOO_MANY_PIXELS,
        f"page {page} is {width} x {height} = {width * height} pixels, more than "
        f"OCR_MAX_PAGE_PIXELS={max_pixels}; {advice}",
    )


def _check_pdf_pixels(data: bytes, pages: list[int], dpi: int, max_pixels: int) -> None:
    scale = dpi / _POINTS_PER_INCH
    with pymupdf.open(stream=data, filetype="pdf") as document:
        for page in pages:
            rect = document.load_page(page - 1).rect
            width, height = math.ceil(rect.width * scale), math.ceil(rect.height * scale)
            if width * height > max_pixels:
                fitting = math.floor(
                    _POINTS_PER_INCH * math.sqrt(max_pixels / (rect.width * rect.height))
                )
                raise _too_many_pixels(
                    page, width, height, max_pixels,
                    f"at {dpi} dpi; ask for at most {fitting} dpi",
                )


def _check_image_pixels(data: bytes, pages: list[int], max_pixels: int) -> None:
    # Sizes from the headers: nothing is decoded.
    with Image.open(io.BytesIO(data)) as image:
        for page in pages:
            if page > 1:
                image.seek(page - 1)
            width, height = image.size
            if width * height > max_pixels:
                raise _too_many_pixels(
                    page, width, height, max_pixels, "scale the image down before uploading"
                )


def _page_png(path: str, media_type: str, page: int, dpi: int, max_pages: int,
              max_pixels: int) -> bytes:
    raster = open_raster(Path(path).read_bytes(), media_type, max_pages)
    try:
        rendered = raster.render(page, dpi, max_pixels)
    finally:
        raster.close()
    image = Image.frombuffer(
        "RGB", (rendered.width, rendered.height), rendered.rgb, "raw", "RGB", rendered.stride, 1
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _unwrap(reply: _Reply) -> Any:
    if reply[0] == "ok":
        return reply[1]
    raise OcrError(ErrorCode(reply[1]), reply[2])


class DocumentWorkers:
    """A small pool of worker processes, started on first use."""

    def __init__(self, workers: int, max_pages: int, max_pixels: int) -> None:
        self._workers = workers
        self._max_pages = max_pages
        self._max_pixels = max_pixels
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: forking a process that runs an event loop and threads copies their
            # locks in whatever state they were.
            self._pool = ProcessPoolExecutor(
                self._workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    async def _run(self, call: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return _unwrap(await loop.run_in_executor(self._executor(), _guarded, call, *args))

    async def inspect(
        self, path: Path, declared: str | None, ranges: list[PageRange] | None, dpi: int
    ) -> Inspection:
        """Raises OcrError with the consumer's code when the consumer would refuse it."""
        result: Inspection = await self._run(
            _inspect, str(path), declared, ranges, dpi, self._max_pages, self._max_pixels
        )
        return result

    async def page_png(self, path: Path, media_type: str, page: int, dpi: int) -> bytes:
        png: bytes = await self._run(
            _page_png, str(path), media_type, page, dpi, self._max_pages, self._max_pixels
        )
        return png

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
