"""`ocr-bench pipeline`: the benchmark's pages as PDF documents through the whole consumer.

Kafka requests -> consumer (fetch, render in worker processes, the same started engine,
publish, Redis state) -> result/progress topics. The clock runs from the first request
produced to the last task's final progress event, so fetching, rendering, publishing and
state writes are all inside it. Needs a reachable broker and Redis (`OCR_KAFKA_BOOTSTRAP`,
`OCR_REDIS_URL`); topics, consumer group and Redis prefix are unique to the run.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumer.app import App
from consumer.config import Settings
from consumer.engines.base import Engine, PageImage
from consumer.settings.kafka import client_kwargs
from producer_tools.topic_admin import ensure_topics
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import OcrRequest, Source
from schemas.result import PageResult
from schemas.topics import TopicNames

READY_TIMEOUT_S = 180.0


def write_documents(
    pages: Sequence[PageImage], folder: Path, *, pages_per_document: int, dpi: int
) -> list[Path]:
    """PDFs whose pages are the benchmark's page images, sized so that rendering them at
    `dpi` gives back the same pixels the engine benchmark used."""
    # PyMuPDF's partial annotations would make every call an untyped-call error.
    pymupdf: Any = importlib.import_module("pymupdf")
    paths = []
    for start in range(0, len(pages), pages_per_document):
        document = pymupdf.open()
        for page in pages[start : start + pages_per_document]:
            width, height = page.image.size
            pdf_page = document.new_page(width=width * 72 / dpi, height=height * 72 / dpi)
            buffer = io.BytesIO()
            page.image.save(buffer, format="PNG")
            pdf_page.insert_image(pdf_page.rect, stream=buffer.getvalue())
        path = folder / f"bench-{start // pages_per_document:04d}.pdf"
        document.save(path)
        document.close()
        paths.append(path)
    return paths


def isolated_settings(settings: Settings, base: str, folder: Path, **extra: object) -> Settings:
    """`settings` for one benchmark run on a shared stack: topics, group, Redis keys and
    consumer id of its own (all named after `base`), documents read from `folder`, no
    metrics port; `extra` overrides more."""
    return settings.with_topic_names(TopicNames().with_prefix(base)).model_copy(
        update={
            "group_id": base,
            "redis_key_prefix": f"{base}:",
            "consumer_id": f"{base}-consumer",
            "file_roots": [folder],
            "metrics_port": 0,
            **extra,
        }
    )


async def _wait_until(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


async def run_pipeline_bench(
    engine: Engine,
    settings: Settings,
    pages: Sequence[PageImage],
    *,
    pages_per_document: int = 8,
    dpi: int = 150,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix=f"ocr-bench-{run}-"))
    documents = await asyncio.to_thread(
        write_documents, pages, folder, pages_per_document=pages_per_document, dpi=dpi
    )
    bench = isolated_settings(settings, f"bench-{run}", folder)
    base = bench.group_id
    await ensure_topics(bench, bench.topic_specs())
    requests = [
        OcrRequest(task_id=f"{base}-{index}", source=Source(uri=path.as_uri()), dpi=dpi)
        for index, path in enumerate(documents)
    ]
    waiting = {request.task_id for request in requests}
    statuses: dict[str, TaskStatus] = {}
    app = App(bench, engine=engine)
    app_task = asyncio.create_task(app.run())
    # Progress says when a task is final; results say how many tokens each page decoded,
    # so the figure is comparable with the engine run's output_tokens_per_page.
    progress = AIOKafkaConsumer(
        bench.topic_progress, bench.topic_results, **client_kwargs(bench), group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    output_tokens: dict[str, int] = {}

    def absorb(batch: dict[Any, list[Any]]) -> None:
        for partition, records in batch.items():
            for record in records:
                if partition.topic == bench.topic_results:
                    result = PageResult.model_validate_json(record.value)
                    output_tokens[f"{result.task_id}/{result.page}"] = result.tokens.output
                    continue
                event = ProgressEvent.model_validate_json(record.value)
                if event.status.is_final and event.task_id in waiting:
                    waiting.discard(event.task_id)
                    statuses[event.task_id] = event.status

    producer = AIOKafkaProducer(
        **client_kwargs(bench), acks="all", enable_idempotence=bench.kafka_idempotence
    )
    await progress.start()
    await producer.start()
    try:
        await _wait_until(lambda: app.ready or app_task.done(), READY_TIMEOUT_S)
        if app_task.done():
            app_task.result()
        began = time.perf_counter()
        for request in requests:
            await producer.send(
                bench.topic_requests, request.model_dump_json().encode(),
                key=request.task_id.encode(),
            )
        await producer.flush()
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            absorb(await progress.getmany(timeout_ms=200))
        seconds = time.perf_counter() - began
        # The two topics are fetched independently: a task's last results may still be
        # in flight when its final progress event arrives. Outside the clock.
        drain_until = time.monotonic() + 10.0
        while len(output_tokens) < len(pages) and time.monotonic() < drain_until:
            absorb(await progress.getmany(timeout_ms=200))
    finally:
        await producer.stop()
        await progress.stop()
        app.stop()
        await asyncio.wait_for(app_task, 120)
    done = len(pages) if not waiting else 0
    return {
        "pipeline_documents": len(documents),
        "pipeline_pages": len(pages),
        "pipeline_seconds": round(seconds, 3),
        "pipeline_pages_per_s": round(done / seconds, 3) if done else 0.0,
        "pipeline_tasks_failed": sum(1 for s in statuses.values() if s is TaskStatus.FAILED),
        "pipeline_tasks_missing": len(waiting),
        "pipeline_output_tokens_per_page": (
            round(sum(output_tokens.values()) / len(output_tokens), 1) if output_tokens else 0.0
        ),
        "pipeline_page_budget": bench.max_inflight_pages or "auto",
        "broker": bench.kafka_bootstrap,
    }
