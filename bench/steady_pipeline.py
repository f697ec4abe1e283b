"""The steady-state benchmark through the whole pipeline: Kafka -> consumer -> result topic.

Documents of 1 to 16 pages (bench/mixed_pages.py, written once as PDFs and offered again
under new task ids) are produced as requests, closed-loop on pages: whenever fewer pages are
outstanding (requested, no result yet) than the consumer's page budget plus one largest
document, the next document is requested, so the consumer always has work queued and its
own budget, not the producer, decides how many pages reach the engine. Outstanding pages
grow to that level over `ramp_s` at the start, so that pages reach the engine spread out
rather than in one burst.

A completion is a page result on the results topic, timed when this process reads it; its
latency runs from its document's request being produced. The window is the engine
phase's: after `warmup` results, the next `measure` ones. The consumer's own timings of
each page (render, queue, inference, post-processing) come with the result and are
averaged over the window.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.bench_pipeline import isolated_settings
from bench.closed_loop import Completion, SteadyWindow
from bench.mixed_pages import DOCUMENT_SIZES, MixedPage
from bench.samplers import Sampler
from consumer.app import App, page_budget
from consumer.config import Settings
from consumer.engines.base import Engine
from consumer.settings.kafka import client_kwargs
from producer_tools.topic_admin import ensure_topics
from schemas.request import OcrRequest, Source
from schemas.result import PageResult, PageStatus, PageTimings

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 120.0
PROFILE_WAIT_S = 60.0  # py-spy records 8 s, 10 s into the window


@dataclass(frozen=True, slots=True)
class Document:
    path: Path
    pages: int


def write_pool(images: Sequence[MixedPage], folder: Path, dpi: int) -> list[Document]:
    """One PDF per size of DOCUMENT_SIZES, pages taken from `images` in turn, each page
    sized so that rendering it at `dpi` gives back the image's own pixels."""
    pymupdf: Any = importlib.import_module("pymupdf")
    documents = []
    cursor = 0
    for number, size in enumerate(DOCUMENT_SIZES):
        pdf = pymupdf.open()
        for _ in range(size):
            image = images[cursor % len(images)].image
            cursor += 1
            page = pdf.new_page(width=image.width * 72 / dpi, height=image.height * 72 / dpi)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            page.insert_image(page.rect, stream=buffer.getvalue())
        path = folder / f"steady-{number:02d}-{size}p.pdf"
        pdf.save(path)
        pdf.close()
        documents.append(Document(path, size))
    return documents


def allowed_outstanding(target: int, elapsed_s: float, ramp_s: float) -> int:
    """Pages that may be outstanding `elapsed_s` into the run: `target`, reached linearly
    over `ramp_s` (at least one page from the start)."""
    if ramp_s <= 0 or elapsed_s >= ramp_s:
        return target
    return max(1, int(target * elapsed_s / ramp_s))


def stage_means(timings: Sequence[PageTimings]) -> dict[str, float]:
    """The consumer's own per-page stage times, averaged (ms)."""
    if not timings:
        return {}
    return {
        f"{name}_mean": round(statistics.fmean(getattr(t, name) for t in timings), 1)
        for name in ("render_ms", "queue_ms", "infer_ms", "postprocess_ms")
    }


async def pipeline_phase(
    engine: Engine,
    settings: Settings,
    images: Sequence[MixedPage],
    *,
    length: int,
    warmup: int,
    measure: int,
    ramp_s: float,
    deadline_s: float,
    gpu: Callable[[], float | None] | None,
    dpi: int,
    profile: Callable[[asyncio.Event], Coroutine[Any, Any, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The pipeline's steady state; `profile` (py-spy of both processes) is started with an
    event that is set when the window opens."""
    from consumer.engines.vllm import VllmEngine
    from consumer.engines.vllm_params import configured_decoding

    if isinstance(engine, VllmEngine):
        ngram, detokenize = configured_decoding(settings)
        engine.set_decoding(ngram_processor=ngram, detokenize=detokenize, max_tokens=length)
    run = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix=f"ocr-steady-{run}-"))
    pool = await asyncio.to_thread(write_pool, images, folder, dpi)
    # shutdown_grace_s 0: pages still decoding when the window closes are dropped.
    bench = isolated_settings(settings, f"steady-{run}", folder, shutdown_grace_s=0.0)
    base = bench.group_id
    await ensure_topics(bench, bench.topic_specs())
    budget = page_budget(bench, engine)
    target = budget + max(DOCUMENT_SIZES)
    window = SteadyWindow(warmup or budget, measure)
    app = App(bench, engine=engine)
    app_task = asyncio.create_task(app.run())
    reader = AIOKafkaConsumer(
        bench.topic_results, **client_kwargs(bench), group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    producer = AIOKafkaProducer(
        **client_kwargs(bench), acks="all", enable_idempotence=bench.kafka_idempotence, linger_ms=5
    )
    submitted_at: dict[str, float] = {}
    timings: dict[str, PageTimings] = {}
    sampler = Sampler(engine, gpu)
    sampling: asyncio.Task[None] | None = None
    opened = asyncio.Event()
    profiling: asyncio.Task[dict[str, Any]] | None = None
    if profile is not None:
        profiling = asyncio.create_task(profile(opened))
    outstanding = documents = 0
    await reader.start()
    await producer.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (app.ready or app_task.done()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer not ready after {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)
        if app_task.done():
            app_task.result()
        sampling = asyncio.create_task(sampler.run())
        began = time.perf_counter()
        stop_at = began + deadline_s
        while not window.is_closed and time.perf_counter() < stop_at:
            allowed = allowed_outstanding(target, time.perf_counter() - began, ramp_s)
            while outstanding < allowed:
                document = pool[documents % len(pool)]
                request = OcrRequest(
                    task_id=f"{base}-{documents}",
                    source=Source(uri=document.path.as_uri()),
                    dpi=dpi,
                )
                submitted_at[request.task_id] = time.perf_counter()
                await producer.send(
                    bench.topic_requests, request.model_dump_json().encode(),
                    key=request.task_id.encode(),
                )  # fmt: skip
                documents += 1
                outstanding += document.pages
            batch = await reader.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    result = PageResult.model_validate_json(record.value)
                    outstanding -= 1
                    ok = result.status is PageStatus.OK
                    error = "" if ok or result.error is None else str(result.error.code)
                    window.add(
                        Completion(
                            f"{result.task_id}/{result.page}", submitted_at[result.task_id], now,
                            ok=ok, error=error,
                            output_tokens=result.tokens.output, prompt_tokens=result.tokens.prompt,
                        )
                    )  # fmt: skip
                    timings[f"{result.task_id}/{result.page}"] = result.timings
            if window.opened_at is not None:
                opened.set()
    finally:
        if sampling is not None:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
        await producer.stop()
        await reader.stop()
        app.stop()
        await asyncio.wait_for(app_task, STOP_TIMEOUT_S)
    figures: dict[str, Any] = {
        "kind": "pipeline",
        "max_tokens": length,
        "page_budget": budget,
        "outstanding_target": target,
        "ramp_s": round(ramp_s, 1),
    }
    figures.update(window.figures())
    figures.update(sampler.window(window.opened_at, window.closed_at or time.perf_counter()))
    figures["documents_requested"] = documents
    figures["consumer_stages"] = stage_means(
        [timings[c.key] for c in window.in_window() if c.key in timings]
    )
    figures["broker"] = bench.kafka_bootstrap
    if profiling is not None and not opened.is_set():
        profiling.cancel()
        figures["pyspy"] = {"error": "the window never opened"}
    elif profiling is not None:
        try:
            figures["pyspy"] = await asyncio.wait_for(profiling, PROFILE_WAIT_S)
        except Exception as exc:  # a profile is a bonus: never lose the phase to it
            figures["pyspy"] = {"error": f"{type(exc).__name__}: {exc}"}
    return figures
