"""Two limits of the consumer, on the local stack with a CPU stand-in for the GPU.

    .venv/bin/python bench/pipeline_limits_cpu.py fairness [--big-pages 300]
    .venv/bin/python bench/pipeline_limits_cpu.py memory [--pages 1000]

The engine is bench/slot_engine.py: `--slots` pages at a time, `--latency-s` each, a GPU's
batch in miniature. Kafka and Redis are the real local ones (`make up-stack`, with
OCR_KAFKA_BOOTSTRAP and OCR_REDIS_URL exported); the consumer runs in this process.

- `fairness`: the latency of a 1-page task alone, then of the same task requested while
  a `--big-pages`-page task fills the consumer's page budget. Issue 21's bound: loaded
  latency at most 3x unloaded. Latency runs from the request produced to its final
  progress event.
- `memory`: one `--pages`-page PDF through the consumer, its resident memory sampled every
  half second (this process, and with its render workers): the growth from ready to peak.
  Issue 21's bound: at most 2 GB.

Writes bench/results/<date>-<what>-cpu-vm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.slot_engine import SlotEngine
from consumer.config import Settings
from consumer.settings import topic_fields
from producer_tools.topic_admin import ensure_topics
from schemas.request import OcrRequest, Source
from schemas.topics import TopicNames
from tests.support.apps import running_app
from tests.support.documents import make_pdf
from tests.support.kafka import TopicReader, produce_requests, wait_until

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def bench_settings(folder: Path, **overrides: Any) -> Settings:
    run = uuid.uuid4().hex[:8]
    base = f"limits-{run}"
    values: dict[str, Any] = {
        **topic_fields(TopicNames().with_prefix(base)),
        "group_id": base,
        "redis_key_prefix": f"{base}:",
        "file_roots": [folder],
        "metrics_port": 0,
        "shutdown_grace_s": 0.0,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


async def one_page_latency(settings: Settings, reader: TopicReader, pdf: Path, tag: str) -> float:
    request = OcrRequest(task_id=f"small-{tag}", source=Source(uri=pdf.as_uri()))
    began = time.perf_counter()
    await produce_requests(settings, [request])
    await reader.wait_for(lambda r: bool(r.final(settings, request.task_id)), timeout=600)
    return time.perf_counter() - began


async def fairness(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    settings = bench_settings(folder, render_workers=args.render_workers)
    await ensure_topics(settings, settings.topic_specs())
    small = make_pdf(folder / "small.pdf", pages=1)
    big = make_pdf(folder / "big.pdf", pages=args.big_pages)
    engine = SlotEngine(args.slots, args.latency_s)
    await engine.start()
    async with (
        running_app(settings, engine),
        TopicReader(settings, settings.topic_progress) as reader,
    ):
        # Unloaded: the small task alone (twice; the first also warms the renderers).
        await one_page_latency(settings, reader, small, "warm")
        unloaded = await one_page_latency(settings, reader, small, "alone")
        big_request = OcrRequest(task_id="big", source=Source(uri=big.as_uri()))
        big_began = time.perf_counter()
        await produce_requests(settings, [big_request])
        # Loaded: once the big task's pages fill the engine.
        await wait_until(lambda: engine.stats().running >= args.slots, 60)
        engine_full_after = time.perf_counter() - big_began
        loaded = await one_page_latency(settings, reader, small, "behind-big")
        big_done_before_small = bool(reader.final(settings, "big"))
        await reader.wait_for(lambda r: bool(r.final(settings, "big")), timeout=3600)
        big_seconds = time.perf_counter() - big_began
    return {
        "unloaded_latency_s": round(unloaded, 3),
        "loaded_latency_s": round(loaded, 3),
        "loaded_over_unloaded": round(loaded / unloaded, 2),
        "bound": 3.0,
        "within_bound": loaded <= 3 * unloaded,
        "big_pages": args.big_pages,
        "big_task_s": round(big_seconds, 1),
        "engine_full_after_s": round(engine_full_after, 2),
        "big_finished_first": big_done_before_small,
    }


async def memory(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    settings = bench_settings(folder, render_workers=args.render_workers)
    await ensure_topics(settings, settings.topic_specs())
    pdf = make_pdf(folder / "big.pdf", pages=args.pages)
    engine = SlotEngine(args.slots, args.latency_s)
    await engine.start()
    me = os.getpid()
    samples: list[tuple[float, int, int]] = []

    async def sample() -> None:
        while True:
            own = rss_bytes(me)
            workers = sum(rss_bytes(child) for child in children(me))
            samples.append((time.perf_counter(), own, own + workers))
            await asyncio.sleep(0.5)

    async with (
        running_app(settings, engine),
        TopicReader(settings, settings.topic_progress) as reader,
    ):
        sampler = asyncio.create_task(sample())
        await asyncio.sleep(1.0)
        began = time.perf_counter()
        request = OcrRequest(task_id="thousand", source=Source(uri=pdf.as_uri()))
        await produce_requests(settings, [request])
        await reader.wait_for(lambda r: bool(r.final(settings, "thousand")), timeout=3600)
        seconds = time.perf_counter() - began
        await asyncio.sleep(1.0)
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        final = reader.final(settings, "thousand")[-1]
    base_own, base_all = samples[0][1], samples[0][2]
    peak_own = max(s[1] for s in samples)
    peak_all = max(s[2] for s in samples)
    mib = 1024 * 1024
    return {
        "pages": args.pages,
        "status": str(final.status),
        "seconds": round(seconds, 1),
        "pages_per_s": round(args.pages / seconds, 2),
        "rss_start_mib": round(base_own / mib, 1),
        "rss_peak_mib": round(peak_own / mib, 1),
        "rss_growth_mib": round((peak_own - base_own) / mib, 1),
        "rss_with_render_workers_start_mib": round(base_all / mib, 1),
        "rss_with_render_workers_peak_mib": round(peak_all / mib, 1),
        "rss_with_render_workers_growth_mib": round((peak_all - base_all) / mib, 1),
        "bound_mib": 2048,
        "within_bound": (peak_all - base_all) <= 2048 * mib,
        "samples": len(samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["fairness", "memory"])
    parser.add_argument("--big-pages", type=int, default=300)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--latency-s", type=float, default=1.0)
    parser.add_argument("--render-workers", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ocr-limits-"))
    began = time.perf_counter()
    run = fairness if args.what == "fairness" else memory
    figures = asyncio.run(run(args, folder))
    result = {
        "benchmark": f"pipeline_limits_cpu {args.what}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"2-CPU VM ({platform.node()}, {os.cpu_count()} CPUs)",
        "engine": f"scripted: {args.slots} pages at a time, {args.latency_s:g} s each",
        "render_workers": args.render_workers,
        "command": " ".join(["bench/pipeline_limits_cpu.py", *sys.argv[1:]]),
        **figures,
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result, indent=2))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{datetime.now(UTC):%Y-%m-%d}-{args.what}-cpu-vm.json"
    (args.out_dir / name).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
