"""CPU pipeline benchmark: N generated PDFs through the real local Kafka + Redis with the
RapidOCR engine, in one consumer process.

Reports pages/s end to end, the same pages through the engine alone, per-page overhead
outside the engine (fetch + render + publish + state, from the timing events), and the
event loop's longest stall. Usage:

    make up-stack   # or: OCR_STACK_CONSUMER=0 bash deploy/local/stack.sh up
    .venv/bin/python bench/pipeline_cpu.py --documents 6 --pages 4

Writes bench/results/<date>-cpu-pipeline-<host>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loop_monitor import LoopStallMonitor
from consumer.config import Settings
from consumer.documents.fetch import fetch_document
from consumer.documents.render import open_document
from consumer.engines.base import PageRequest
from consumer.engines.rapidocr import RapidOcrEngine
from producer_tools.topic_admin import ensure_topics
from schemas.request import OcrRequest, Source
from schemas.topics import TopicNames
from tests.support.apps import running_app
from tests.support.documents import make_pdf
from tests.support.kafka import TopicReader, produce_requests


async def engine_only(engine: RapidOcrEngine, pdfs: list[Path], settings: Settings) -> float:
    """Pages/s of the engine fed directly (rendering excluded from the clock)."""
    pages = []
    for pdf in pdfs:
        document = await fetch_document(Source(uri=pdf.as_uri()), settings)
        opened = await open_document(document, settings, "engine-only")
        for number in range(1, opened.page_count + 1):
            pages.append(await opened.render_page(number, 144))
        await opened.close()
    start = time.perf_counter()
    await asyncio.gather(
        *(engine.infer(PageRequest(request_id=f"e/{i}", page=page)) for i, page in enumerate(pages))
    )
    return len(pages) / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=6)
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="ocr-bench-"))
    settings = Settings(
        group_id=f"bench-{run}",
        redis_key_prefix=f"bench-{run}:",
        file_roots=[workdir],
        metrics_port=0,
    ).with_topic_names(TopicNames().with_prefix(f"bench-{run}"))
    await ensure_topics(settings, settings.topic_specs())
    pdfs = [make_pdf(workdir / f"doc-{i}.pdf", pages=args.pages) for i in range(args.documents)]
    engine = RapidOcrEngine()
    await engine.start()
    # Warm-up: the first onnxruntime call is several times slower than the rest.
    await engine_only(engine, pdfs[:1], settings)
    engine_pps = await engine_only(engine, pdfs, settings)

    monitor = LoopStallMonitor()
    requests = [
        OcrRequest(task_id=f"bench-{run}-{i}", source=Source(uri=pdf.as_uri()))
        for i, pdf in enumerate(pdfs)
    ]
    async with running_app(settings, engine):
        monitor.start()
        async with TopicReader(settings, settings.topic_progress, settings.topic_timing) as reader:
            start = time.perf_counter()
            await produce_requests(settings, requests)
            await reader.wait_for(
                lambda r: all(r.final(settings, q.task_id) for q in requests), timeout=3600
            )
            elapsed = time.perf_counter() - start
        await monitor.stop()
    timing = reader.json_on(settings.topic_timing)
    page_events = [t for t in timing if t["kind"] == "page"]
    task_events = [t for t in timing if t["kind"] == "task"]
    total_pages = len(page_events)
    overhead_ms = [
        t["stages"]["render_ms"] + t["stages"]["postprocess_ms"] + t["stages"]["publish_ms"]
        for t in page_events
    ]
    fetch_per_page = sum(t["stages"]["fetch_ms"] for t in task_events) / max(total_pages, 1)
    infer_ms = [t["stages"]["infer_ms"] for t in page_events]
    result = {
        "benchmark": "pipeline_cpu",
        "date": datetime.now(UTC).isoformat(),
        "machine": f"{socket.gethostname()} ({os.cpu_count()} CPUs, {platform.machine()})",
        "engine": "rapidocr",
        "documents": args.documents,
        "pages": total_pages,
        "pipeline_pages_per_s": round(total_pages / elapsed, 3),
        "engine_pages_per_s": round(engine_pps, 3),
        "pipeline_over_engine": round(total_pages / elapsed / engine_pps, 3),
        "overhead_ms_per_page_mean": round(statistics.mean(overhead_ms) + fetch_per_page, 2),
        "overhead_ms_per_page_p95": round(
            sorted(overhead_ms)[int(0.95 * (len(overhead_ms) - 1))] + fetch_per_page, 2
        ),
        "infer_ms_per_page_mean": round(statistics.mean(infer_ms), 1),
        "loop_longest_stall_ms": round(monitor.longest_stall_ms, 1),
        "loop_stalls_over_50ms": monitor.stalls_over_50ms,
        "elapsed_s": round(elapsed, 2),
    }
    await engine.close()
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{datetime.now(UTC):%Y-%m-%d}-cpu-pipeline-{socket.gethostname()}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
