"""Scale-out benchmark: N consumer processes (one per GPU) in one group, against one.

On a host with GPUs, a broker and Redis (deploy/gpu/services.sh): starts consumer processes
(`python -m consumer.app`, one per GPU via CUDA_VISIBLE_DEVICES, all in one group), feeds
them PDF documents through a requests topic with >= 8 partitions and measures aggregate
pages/s from the first request to the last final progress event. `--kill-after F` SIGKILLs
the last consumer once a fraction F of the pages is published and checks that the others
take its partitions over and every page of every task still arrives.

    python bench/scaleout.py --gpus 1 --pages 192            # baseline
    python bench/scaleout.py --gpus 2 --pages 384 --kill-after 0   # aggregate
    python bench/scaleout.py --gpus 2 --pages 256 --kill-after 0.3 # failover

Task ids are chosen so that every partition gets the same number of documents: hashing
ids at random leaves partitions uneven, which would measure the workload, not the scaling.
Settings come from OCR_* variables (deploy/gpu/env.sh). Results: --out (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumer.config import Settings
from consumer.kafka_clients import client_kwargs
from consumer.publisher import task_partition
from consumer.topics import default_topic_specs, ensure_topics
from producer_tools.bench import synthetic_pages
from producer_tools.bench_pipeline import write_documents
from schemas.progress import ProgressEvent
from schemas.request import OcrRequest, Source
from schemas.result import PageResult


def balanced_task_ids(prefix: str, count: int, partitions: int) -> list[str]:
    per_partition: dict[int, list[str]] = {p: [] for p in range(partitions)}
    target = -(-count // partitions)
    for n in itertools.count():
        task_id = f"{prefix}-{n}"
        slot = task_partition(task_id.encode(), partitions)
        if len(per_partition[slot]) < target:
            per_partition[slot].append(task_id)
        if sum(len(ids) for ids in per_partition.values()) >= count:
            break
    # Interleave partitions so the consumers see work arrive evenly.
    ordered = [ids[i] for i in range(target) for ids in per_partition.values() if i < len(ids)]
    return ordered[:count]


def start_consumer(index: int, settings: Settings, logs: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": str(index),
            "OCR_CONSUMER_ID": f"gpu{index}",
            "OCR_METRICS_PORT": str(9500 + index),
            "OCR_LOG_FORMAT": "json",
            "OCR_LOG_LEVEL": "WARNING",
        }
    )
    log = (logs / f"consumer-gpu{index}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.app"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def ready(index: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{9500 + index}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--pages", type=int, default=256)
    parser.add_argument("--doc-pages", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--kill-after", type=float, default=0.0)
    parser.add_argument("--ready-timeout", type=float, default=420.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    run = uuid.uuid4().hex[:6]
    base = f"scale-{run}"
    folder = Path(tempfile.mkdtemp(prefix=f"{base}-"))
    settings = Settings().model_copy(
        update={
            "topic_requests": f"{base}.ocr.requests",
            "topic_results": f"{base}.ocr.results",
            "topic_progress": f"{base}.ocr.progress",
            "topic_timing": f"{base}.ocr.timing",
            "topic_dlq": f"{base}.ocr.requests.dlq",
            "topic_partitions": args.partitions,
            "group_id": base,
            "redis_key_prefix": f"{base}:",
        }
    )
    for name, value in {
        "OCR_TOPIC_REQUESTS": settings.topic_requests, "OCR_TOPIC_RESULTS": settings.topic_results,
        "OCR_TOPIC_PROGRESS": settings.topic_progress, "OCR_TOPIC_TIMING": settings.topic_timing,
        "OCR_TOPIC_DLQ": settings.topic_dlq, "OCR_GROUP_ID": base,
        "OCR_REDIS_KEY_PREFIX": f"{base}:", "OCR_FILE_ROOTS": str(folder),
    }.items():
        os.environ[name] = value
    await ensure_topics(settings, default_topic_specs(settings))
    pages = synthetic_pages(args.pages)
    documents = write_documents(pages, folder, pages_per_document=args.doc_pages, dpi=150)
    task_ids = balanced_task_ids(base, len(documents), args.partitions)
    requests = [
        OcrRequest(task_id=task_id, source=Source(uri=path.as_uri()), dpi=150)
        for task_id, path in zip(task_ids, documents, strict=True)
    ]
    expected = {(r.task_id, p) for r in requests for p in range(1, args.doc_pages + 1)}

    consumers = [start_consumer(i, settings, args.out.parent) for i in range(args.gpus)]
    began_start = time.monotonic()
    try:
        while not all(ready(i) for i in range(args.gpus)):
            if any(c.poll() is not None for c in consumers):
                raise SystemExit("a consumer exited during start-up; see consumer-gpu*.log")
            if time.monotonic() - began_start > args.ready_timeout:
                raise SystemExit("consumers not ready in time")
            await asyncio.sleep(1)
        start_s = time.monotonic() - began_start
        print(f"{args.gpus} consumer(s) ready in {start_s:.0f} s", flush=True)
        reader = AIOKafkaConsumer(
            settings.topic_progress, settings.topic_results, **client_kwargs(settings),
            group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
        )
        producer = AIOKafkaProducer(**client_kwargs(settings), enable_idempotence=False)
        await reader.start()
        await producer.start()
        seen_pages: set[tuple[str, int]] = set()
        raw_results = 0
        finals: dict[str, str] = {}
        workers: dict[str, str] = {}
        killed_at = None
        began = time.perf_counter()
        for request in requests:
            await producer.send(
                settings.topic_requests, request.model_dump_json().encode(),
                key=request.task_id.encode(),
            )
        await producer.flush()
        deadline = time.monotonic() + 1800
        while len(finals) < len(requests) and time.monotonic() < deadline:
            batch = await reader.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    if record.topic == settings.topic_results:
                        result = PageResult.model_validate_json(record.value)
                        seen_pages.add((result.task_id, result.page))
                        raw_results += 1
                    else:
                        event = ProgressEvent.model_validate_json(record.value)
                        if event.status.is_final:
                            finals[event.task_id] = event.status.value
                            workers[event.task_id] = event.consumer_id
            if (args.kill_after and killed_at is None
                    and len(seen_pages) >= args.kill_after * len(expected)):
                victim = consumers[-1]
                victim.send_signal(signal.SIGKILL)
                killed_at = round(time.perf_counter() - began, 2)
                print(f"SIGKILL gpu{args.gpus - 1} at {killed_at} s", flush=True)
        seconds = time.perf_counter() - began
        await producer.stop()
        await reader.stop()
    finally:
        for consumer in consumers:
            if consumer.poll() is None:
                consumer.send_signal(signal.SIGTERM)
        for consumer in consumers:
            try:
                consumer.wait(60)
            except subprocess.TimeoutExpired:
                consumer.kill()
    lost = sorted(expected - seen_pages)
    result = {
        "benchmark": "scaleout",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpus": args.gpus,
        "consumers": args.gpus,
        "partitions": args.partitions,
        "documents": len(requests),
        "pages": len(expected),
        "seconds": round(seconds, 2),
        "aggregate_pages_per_s": round(len(seen_pages & expected) / seconds, 3),
        "consumers_ready_s": round(start_s, 1),
        "tasks_completed": sum(1 for s in finals.values() if s == "completed"),
        "tasks_by_consumer": {w: list(workers.values()).count(w) for w in set(workers.values())},
        "killed_at_s": killed_at,
        "pages_lost": len(lost),
        "duplicate_results": raw_results - len(seen_pages),
        "settings": {k: os.environ.get(k) for k in sorted(os.environ) if k.startswith("OCR_")},
    }
    print(json.dumps(result, indent=2), flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if lost or len(finals) < len(requests):
        raise SystemExit(f"{len(lost)} pages lost, {len(requests) - len(finals)} tasks unfinished")


if __name__ == "__main__":
    asyncio.run(main())
