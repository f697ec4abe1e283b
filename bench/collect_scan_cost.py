"""What one task's lookup costs when it scans the results topic, as ocr-collect's one-shot
reader does (collect.read_task_results, behind `ocr-submit --out`), against the gateway's
view, which reads each record once when it arrives.

Fills a one-partition topic of a test run with N page results of a realistic size (the
demo page's RapidOCR result: 17 blocks, about 6 KB of JSON), then times finding the last
task's pages by scanning from the beginning, and the same task from the gateway's view in
Redis after the view applied the partition. Scan time grows with N (every record is
fetched and its key compared); the view's lookup does not. Usage (stack up):

    .venv/bin/python bench/collect_scan_cost.py --records 20000

Writes bench/results/<date>-collect-scan-vm.json; the 1-million figure is extrapolated
linearly from the measured rate, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumer.settings import client_kwargs
from consumer.state import redis_client
from producer_tools.collect import read_task_results
from producer_tools.gateway.metrics import GatewayMetrics
from producer_tools.gateway.settings import GatewayShared
from producer_tools.gateway.view import View
from producer_tools.gateway.view_store import ViewStore
from producer_tools.topic_admin import delete_topics, ensure_topics
from schemas.progress import ProgressEvent, TaskStatus
from schemas.result import (
    Block,
    EngineIdentity,
    FinishReason,
    PageImageInfo,
    PageResult,
    PageStatus,
)
from schemas.topics import TopicSpec
from tests.support.kafka import wait_until

REPO = Path(__file__).resolve().parent.parent


def result(task_id: str) -> PageResult:
    blocks = [
        Block(label="text", text=f"Northwind Logistics moved {i},200 parcels in quarter {i}.",
              bbox_px=[112.0, 280.0 + 28 * i, 780.0, 305.0 + 28 * i],
              bbox_pdf=[56.0, 140.0 + 14 * i, 390.0, 152.5 + 14 * i], confidence=0.98)
        for i in range(17)
    ]
    text = "\n".join(block.text for block in blocks)
    return PageResult(
        task_id=task_id, page=1, page_count=1, status=PageStatus.OK, markdown=text, text=text,
        blocks=blocks, finish_reason=FinishReason.STOP,
        engine=EngineIdentity(name="rapidocr", model="PP-OCRv4", version="1.4.4"),
        image=PageImageInfo(width_px=1190, height_px=1684, dpi=144, width_pt=595.0,
                            height_pt=842.0),
        produced_at=datetime.now(UTC),
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    base = GatewayShared()
    run = uuid.uuid4().hex[:6]
    settings = base.model_copy(update={
        "topic_results": f"bench-{run}.ocr.results",
        "topic_progress": f"bench-{run}.ocr.progress",
        "redis_key_prefix": f"bench-{run}:",
    })
    specs = [TopicSpec(settings.topic_results, 1, 1, {}),
             TopicSpec(settings.topic_progress, 1, 1, {})]
    await ensure_topics(settings, specs)
    redis = redis_client(cast(Any, settings))  # reads only the Redis fields
    try:
        producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=20,
                                    max_batch_size=1 << 20)
        await producer.start()
        sizes = []
        try:
            last = ""
            for i in range(args.records):
                last = f"task-{i:07d}"
                value = result(last).model_dump_json().encode()
                sizes.append(len(value))
                await producer.send(settings.topic_results, value=value,
                                    key=f"{last}/1".encode())
            await producer.send_and_wait(
                settings.topic_progress, key=last.encode(),
                value=ProgressEvent(task_id=last, status=TaskStatus.COMPLETED, pages_done=1,
                                    pages_total=1, emitted_at=datetime.now(UTC))
                .model_dump_json().encode(),
            )
        finally:
            await producer.stop()

        started = time.perf_counter()
        found = await read_task_results(settings, {last: 1})
        scan_s = time.perf_counter() - started
        assert len(found[last]) == 1

        store = ViewStore(redis, settings.redis_key_prefix, 3600)
        view = View(settings, store, f"bench-view-{run}", GatewayMetrics())
        follow = asyncio.create_task(view.run())
        started = time.perf_counter()
        await wait_until(lambda: view.caught_up, 600)
        view_fill_s = time.perf_counter() - started
        view.stop()
        await follow
        started = time.perf_counter()
        for _ in range(100):
            snapshot = await store.snapshot(last)
            pages = await store.pages(last)
        lookup_ms = (time.perf_counter() - started) * 10
        assert snapshot.pages_stored == 1 and len(pages) == 1
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_key_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await delete_topics(settings, [spec.name for spec in specs])

    rate = args.records / scan_s
    mean_bytes = sum(sizes) / len(sizes)
    output = {
        "benchmark": "collect_scan_cost",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": "2-CPU VM",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "host": platform.node(),
        "records": args.records,
        "mean_result_bytes": round(mean_bytes),
        "measured": {
            "scan_one_task_s": round(scan_s, 2),
            "scan_records_per_s": round(rate),
            "view_apply_all_s": round(view_fill_s, 2),
            "view_records_per_s": round(args.records / view_fill_s),
            "view_lookup_ms": round(lookup_ms, 2),
        },
        "extrapolated_to_1m_results": {
            "how": "linear in records read, from the measured scan rate",
            "six_partitions_s": round(1_000_000 / 6 / rate, 1),
            "six_partitions_gb_read": round(1_000_000 / 6 * mean_bytes / 1e9, 2),
            "one_partition_s": round(1_000_000 / rate, 1),
            "view_lookup_ms": "unchanged: a GET and two hash reads of that task's keys",
        },
        "command": f".venv/bin/python bench/collect_scan_cost.py --records {args.records}",
    }
    out = REPO / "bench" / "results" / f"{datetime.now(UTC).date()}-collect-scan-vm.json"
    out.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
