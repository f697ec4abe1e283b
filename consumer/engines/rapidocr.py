"""RapidOCR (PP-OCRv4 on onnxruntime): the CPU engine.

It runs the whole pipeline on machines without a GPU and in tests. Inference runs in the
engine's own thread pool: onnxruntime releases the GIL, so the event loop stays free.
Each worker thread has its own RapidOCR instance (the library keeps per-call state on
the instance, e.g. detection thresholds), taken from a small pool for one page at a time.

Cancellation: a running onnxruntime call cannot be interrupted. A cancelled `infer()`
returns at once and its result is dropped when the call ends; the page's slot in the
engine stays taken until then, so a burst of cancellations (a revoked task, page
timeouts) never piles more work onto the pool than it has workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from consumer.engines.base import EngineHealth, EngineOutput, EngineStats, PageRequest
from consumer.errors import EngineError
from consumer.log import get_logger
from consumer.postprocess.page import Line, PageText, lines_page_text
from schemas.common import ErrorCode
from schemas.request import PromptKind
from schemas.result import EngineIdentity, FinishReason

log = get_logger(__name__)

_TEXT_PROMPTS = frozenset({PromptKind.MARKDOWN, PromptKind.OCR, PromptKind.FREE_OCR})
_LOCATE_LABEL_MAX = 64  # Block.label's limit


def _package_version() -> str:
    try:
        return metadata.version("rapidocr-onnxruntime")
    except metadata.PackageNotFoundError:
        return "unknown"


def _to_bgr(image: Image.Image) -> np.ndarray[Any, np.dtype[np.uint8]]:
    # RapidOCR converts PIL images and files to BGR itself but takes an ndarray as
    # already BGR (OpenCV's order); pages are RGB, so swap the channels here.
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _warm_up_image() -> Image.Image:
    image = Image.new("RGB", (400, 80), "white")
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=32)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(image).text((10, 20), "warm up 123", fill="black", font=font)
    return image


def _axis_box(points: Any) -> tuple[float, float, float, float]:
    """RapidOCR gives four corner points (possibly rotated): their bounding box."""
    xs = [float(point[0]) for point in points]
    ys = [float(point[1]) for point in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def locate_blocks(page_text: PageText, query: str) -> PageText:
    """The lines containing `query` (case- and space-insensitive) as blocks named by it.

    DeepSeek-OCR answers a locate prompt with `<|ref|>query<|/ref|><|det|>boxes`; a line
    engine can only say which lines hold the query, so the boxes are whole lines.
    """
    needle = _normalise(query)
    label = " ".join(query.split())[:_LOCATE_LABEL_MAX] or "locate"
    found = [
        block.model_copy(update={"label": label})
        for block in page_text.blocks
        if needle and needle in _normalise(block.text)
    ]
    lines = "\n".join(block.text for block in found)
    return PageText(markdown=lines, text=lines, blocks=found)


class RapidOcrEngine:
    """The Engine protocol on RapidOCR; `workers` pages run at once."""

    def __init__(
        self,
        *,
        workers: int = 1,
        intra_op_threads: int | None = None,
        warm_up: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._workers = workers
        # One onnxruntime thread pool per worker: split the cores between workers rather
        # than oversubscribe them (onnxruntime's default is one thread per core each).
        cores = os.cpu_count() or 1
        self._intra_op_threads = intra_op_threads or max(1, cores // workers)
        self._warm_up = warm_up
        version = _package_version()
        self._identity = EngineIdentity(
            name="rapidocr",
            model=f"PP-OCRv4 (rapidocr-onnxruntime {version})",
            version=version[:64],
            mode="",
        )
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._instances: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots = asyncio.Semaphore(workers)
        self._waiting = 0
        self._running = 0
        self._pages_total = 0
        self._closed = False

    @property
    def identity(self) -> EngineIdentity:
        return self._identity

    @property
    def suggested_inflight_pages(self) -> int:
        # One page queued behind each busy worker keeps the pool fed between pages.
        return self._workers + 1

    def _load(self) -> Any:
        from rapidocr_onnxruntime import RapidOCR

        started = time.perf_counter()
        instance = RapidOCR(intra_op_num_threads=self._intra_op_threads, inter_op_num_threads=1)
        if self._warm_up:
            # The first call is ~3x slower (allocations, kernel selection): pay it here,
            # on a word that runs all three models, rather than on the first real page.
            instance(_to_bgr(_warm_up_image()))
        log.info(
            "rapidocr_loaded",
            seconds=round(time.perf_counter() - started, 3),
            intra_op_threads=self._intra_op_threads,
        )
        return instance

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix="rapidocr"
        )
        loop = asyncio.get_running_loop()
        try:
            instances = await asyncio.gather(
                *(loop.run_in_executor(self._executor, self._load) for _ in range(self._workers))
            )
        except Exception as exc:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise EngineError(f"RapidOCR failed to load: {exc}") from exc
        for instance in instances:
            self._instances.put(instance)

    def _ocr(self, request: PageRequest) -> tuple[PageText, str, float]:
        """Runs in a worker thread: inference plus the (cheap) mapping to PageText, and the
        milliseconds of that mapping."""
        instance = self._instances.get()
        try:
            result, _elapsed = instance(_to_bgr(request.page.image))
        finally:
            self._instances.put(instance)
        began = time.perf_counter()
        lines: list[Line] = [
            (str(text), _axis_box(points), float(score)) for points, text, score in result or []
        ]
        page_text = lines_page_text(lines, request.page)
        raw = "\n".join(line[0] for line in lines)
        if request.prompt is PromptKind.LOCATE:
            page_text = locate_blocks(page_text, request.locate_text or "")
        return page_text, raw, (time.perf_counter() - began) * 1000.0

    async def infer(self, request: PageRequest) -> EngineOutput:
        if request.prompt not in _TEXT_PROMPTS and request.prompt is not PromptKind.LOCATE:
            raise EngineError(
                f"prompt '{request.prompt.value}' needs a vision-language model; the rapidocr"
                " engine reads text only (markdown, ocr, free_ocr, locate): use OCR_ENGINE=vllm",
                code=ErrorCode.PROMPT_UNSUPPORTED,
            )
        if self._executor is None or self._closed:
            raise EngineError("rapidocr engine is not started (or already closed)")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            future = self._executor.submit(self._ocr, request)
        except RuntimeError as exc:  # the executor was shut down meanwhile
            self._slots.release()
            raise EngineError("rapidocr engine is closed") from exc
        self._running += 1
        loop = asyncio.get_running_loop()
        # The slot is freed when the thread's work ends, not when the awaiting task does.
        future.add_done_callback(lambda _: _call_soon(loop, self._release))
        try:
            page_text, raw, postprocess_ms = await asyncio.wrap_future(future)
        except Exception as exc:
            raise EngineError(f"rapidocr failed on page {request.page.page}: {exc}") from exc
        self._pages_total += 1
        return EngineOutput(
            markdown=page_text.markdown,
            text=page_text.text,
            blocks=page_text.blocks,
            finish_reason=FinishReason.STOP,
            raw_text=raw,
            postprocess_ms=postprocess_ms,
        )

    def _release(self) -> None:
        self._running -= 1
        self._slots.release()

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self._running, waiting=self._waiting, pages_total=self._pages_total
        )

    def health(self) -> EngineHealth:
        # onnxruntime runs in this process: nothing can die apart from the process itself,
        # which the probe notices by not answering. A closed engine serves no more pages.
        if self._closed:
            return EngineHealth(alive=False, reason="rapidocr engine closed")
        return EngineHealth(alive=True, reason="ok" if self._executor else "not started")

    async def close(self) -> None:
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Queued pages are dropped; a running onnxruntime call finishes on its own (it
        # cannot be interrupted). Wait for it off the loop so the threads end cleanly.
        executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(executor.shutdown, wait=True)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    # A closed loop has nobody left waiting for the slot.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)
