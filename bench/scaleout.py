"""Scale-out benchmark: N consumer processes in one group against one, then a failover.

On a host with a broker and Redis (the local stack, or deploy/gpu/services.sh on a GPU
host) it runs three phases on one requests topic with >= 8 partitions, each phase with its
own batch of PDF documents:

1. `single`: consumer 0 alone owns every partition; `pages_per_consumer` pages.
2. `aggregate`: consumers 1..N-1 join the group; N x `pages_per_consumer` pages. The figure
   of the run is `scaling` = aggregate pages/s / single pages/s.
3. `failover` (with `--kill-after F`): another N x `pages_per_consumer` pages; the last
   consumer is SIGKILLed once a fraction F of them has arrived. The others must take its
   partitions over and every page of every task must still arrive (`pages_lost` = 0);
   `duplicate_results` counts pages computed twice (allowed, reported).

Consumers go one per GPU (CUDA_VISIBLE_DEVICES) when `--gpus` >= `--consumers`. With fewer
GPUs they share them round-robin, start one after another (vLLM sizes its KV cache from the
memory free at start-up) and each gets `--memory-share` of the GPU's memory (default: the
OCR_GPU_MEMORY_UTILIZATION budget divided by the consumers per GPU). `--gpus 0` runs the
consumers without a GPU (the CPU engine).

    python bench/scaleout.py --consumers 2 --gpus 2 --pages-per-consumer 192 --kill-after 0.3
    python bench/scaleout.py --consumers 2 --gpus 1 --pages-per-consumer 192 --kill-after 0.3

Every phase's clock runs from its first request produced to its last task's final progress
event. Task ids are chosen so that every partition gets the same number of documents:
hashing ids at random leaves partitions uneven, which would measure the workload, not the
scaling. Settings come from OCR_* variables (deploy/gpu/env.sh). Results: --out (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.bench_pages import synthetic_pages
from bench.bench_pipeline import write_documents
from consumer.config import Settings
from consumer.settings import Topics, client_kwargs, env_name
from producer_tools.topic_admin import ensure_topics
from schemas.keys import task_partition
from schemas.progress import ProgressEvent
from schemas.request import OcrRequest, Source
from schemas.result import PageResult
from schemas.topics import TopicNames

PHASE_TIMEOUT_S = 1800.0


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


@dataclass
class Observed:
    """What the output topics said so far, across phases (task ids are unique per phase)."""

    results: Counter[tuple[str, int]] = field(default_factory=Counter)
    finals: dict[str, str] = field(default_factory=dict)
    workers: dict[str, str] = field(default_factory=dict)

    def absorb(self, topic_results: str, topic: str, value: bytes) -> None:
        if topic == topic_results:
            result = PageResult.model_validate_json(value)
            self.results[(result.task_id, result.page)] += 1
            return
        event = ProgressEvent.model_validate_json(value)
        if event.status.is_final:
            self.finals[event.task_id] = event.status.value
            self.workers[event.task_id] = event.consumer_id


class Consumers:
    """The consumer processes of the run, by index."""

    def __init__(self, args: argparse.Namespace, logs: Path) -> None:
        self._args = args
        self._logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def memory_share(self) -> str | None:
        args = self._args
        if args.gpus == 0 or args.gpus >= args.consumers:
            return None
        if args.memory_share is not None:
            return str(args.memory_share)
        budget = float(os.environ.get("OCR_GPU_MEMORY_UTILIZATION", "0.85"))
        per_gpu = math.ceil(args.consumers / args.gpus)
        return f"{budget / per_gpu:.3f}"

    def start(self, index: int) -> None:
        env = dict(os.environ)
        env.update(
            {
                "OCR_CONSUMER_ID": f"c{index}",
                "OCR_METRICS_PORT": str(9500 + index),
                "OCR_LOG_FORMAT": "json",
                "OCR_LOG_LEVEL": "WARNING",
            }
        )
        if self._args.gpus > 0:
            env["CUDA_VISIBLE_DEVICES"] = str(index % self._args.gpus)
        share = self.memory_share()
        if share is not None:
            env["OCR_GPU_MEMORY_UTILIZATION"] = share
        log = (self._logs / f"consumer-c{index}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "consumer.app"], env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    async def wait_ready(self, indexes: range) -> float:
        began = time.monotonic()
        while not all(_ready(i) for i in indexes):
            if any(self.processes[i].poll() is not None for i in indexes):
                raise SystemExit("a consumer exited during start-up; see consumer-c*.log")
            if time.monotonic() - began > self._args.ready_timeout:
                raise SystemExit("consumers not ready in time")
            await asyncio.sleep(1)
        return time.monotonic() - began

    def kill(self, index: int) -> None:
        self.processes[index].send_signal(signal.SIGKILL)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def _ready(index: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{9500 + index}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class Run:
    def __init__(self, args: argparse.Namespace, settings: Settings, folder: Path) -> None:
        self.args = args
        self.settings = settings
        self.folder = folder
        self.observed = Observed()
        self.pages = synthetic_pages(args.pages_per_consumer * args.consumers)

    async def read(self, reader: AIOKafkaConsumer) -> None:
        while True:
            batch = await reader.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    self.observed.absorb(self.settings.topic_results, record.topic, record.value)

    def requests(self, phase: str, pages: int) -> list[OcrRequest]:
        folder = self.folder / phase
        folder.mkdir()
        documents = write_documents(
            self.pages[:pages], folder, pages_per_document=self.args.doc_pages, dpi=150
        )
        task_ids = balanced_task_ids(
            f"{self.settings.group_id}-{phase}", len(documents), self.args.partitions
        )
        return [
            OcrRequest(task_id=task_id, source=Source(uri=path.as_uri()), dpi=150)
            for task_id, path in zip(task_ids, documents, strict=True)
        ]

    async def phase(
        self, phase: str, pages: int, producer: AIOKafkaProducer, consumers: Consumers,
        *, kill: int | None = None,
    ) -> dict[str, Any]:
        requests = await asyncio.to_thread(self.requests, phase, pages)
        tasks = {r.task_id for r in requests}
        expected = {(r.task_id, p) for r in requests for p in range(1, self.args.doc_pages + 1)}
        observed = self.observed
        killed_at = None
        began = time.perf_counter()
        for request in requests:
            await producer.send(
                self.settings.topic_requests, request.model_dump_json().encode(),
                key=request.task_id.encode(),
            )
        await producer.flush()
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not tasks <= observed.finals.keys() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if kill is None or killed_at is not None:
                continue
            arrived = sum(1 for key in expected if key in observed.results)
            if arrived >= self.args.kill_after * pages:
                consumers.kill(kill)
                killed_at = round(time.perf_counter() - began, 2)
                print(f"{phase}: SIGKILL c{kill} at {killed_at} s", flush=True)
        seconds = time.perf_counter() - began
        seen = {key for key in expected if key in observed.results}
        finals = {t: observed.finals.get(t) for t in tasks}
        by_consumer = Counter(observed.workers[t] for t in tasks if t in observed.workers)
        figures = {
            "documents": len(requests),
            "pages": len(expected),
            "seconds": round(seconds, 2),
            "pages_per_s": round(len(seen) / seconds, 3),
            "tasks_completed": sum(1 for s in finals.values() if s == "completed"),
            "tasks_unfinished": sum(1 for s in finals.values() if s is None),
            "tasks_by_consumer": dict(sorted(by_consumer.items())),
            "killed_at_s": killed_at,
            "pages_lost": len(expected - seen),
            "duplicate_results": sum(observed.results[key] - 1 for key in seen),
        }
        print(f"{phase}: {json.dumps(figures)}", flush=True)
        return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=2, help="0: no GPU (CPU engine)")
    parser.add_argument("--pages-per-consumer", type=int, default=192)
    parser.add_argument("--doc-pages", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--kill-after", type=float, default=0.0, help="0: no failover phase")
    parser.add_argument("--memory-share", type=float, default=None)
    parser.add_argument("--ready-timeout", type=float, default=420.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    base = f"scale-{uuid.uuid4().hex[:6]}"
    folder = Path(tempfile.mkdtemp(prefix=f"{base}-"))
    settings = Settings().with_topic_names(TopicNames().with_prefix(base)).model_copy(
        update={"topic_partitions": args.partitions, "group_id": base,
                "redis_key_prefix": f"{base}:"}
    )
    for name in Topics.model_fields:
        os.environ[env_name(name)] = getattr(settings, name)
    os.environ.update(
        {"OCR_GROUP_ID": base, "OCR_REDIS_KEY_PREFIX": f"{base}:", "OCR_FILE_ROOTS": str(folder)}
    )
    await ensure_topics(settings, settings.topic_specs())
    run = Run(args, settings, folder)
    consumers = Consumers(args, args.out.parent)
    phases: dict[str, dict[str, Any]] = {}
    ready_s: dict[str, float] = {}
    reader = AIOKafkaConsumer(
        settings.topic_progress, settings.topic_results, **client_kwargs(settings),
        group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(**client_kwargs(settings), enable_idempotence=False)
    reading: asyncio.Task[None] | None = None
    try:
        consumers.start(0)
        ready_s["c0"] = round(await consumers.wait_ready(range(1)), 1)
        await reader.start()
        await producer.start()
        reading = asyncio.create_task(run.read(reader))
        per = args.pages_per_consumer
        phases["single"] = await run.phase("single", per, producer, consumers)
        if args.consumers > 1:
            sharing = consumers.memory_share() is not None
            for index in range(1, args.consumers):
                consumers.start(index)
                if sharing:
                    ready_s[f"c{index}"] = round(await consumers.wait_ready(range(index + 1)), 1)
            if not sharing:
                ready_s["others"] = round(await consumers.wait_ready(range(args.consumers)), 1)
            await asyncio.sleep(5)  # the group's rebalance settles before the clock starts
            pages = per * args.consumers
            phases["aggregate"] = await run.phase("aggregate", pages, producer, consumers)
            if args.kill_after > 0:
                phases["failover"] = await run.phase(
                    "failover", pages, producer, consumers, kill=args.consumers - 1
                )
    finally:
        if reading is not None:
            reading.cancel()
        await producer.stop()
        await reader.stop()
        consumers.stop_all()
    single = phases["single"]["pages_per_s"]
    result = {
        "benchmark": "scaleout",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "consumers": args.consumers,
        "gpus": args.gpus,
        "memory_share": consumers.memory_share(),
        "partitions": args.partitions,
        "doc_pages": args.doc_pages,
        "consumers_ready_s": ready_s,
        "phases": phases,
        "scaling": (
            round(phases["aggregate"]["pages_per_s"] / single, 3)
            if "aggregate" in phases and single else None
        ),
        "settings": {k: os.environ.get(k) for k in sorted(os.environ) if k.startswith("OCR_")},
    }
    print(json.dumps(result, indent=2), flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    broken = {n: p for n, p in phases.items() if p["pages_lost"] or p["tasks_unfinished"]}
    if broken:
        raise SystemExit(f"pages lost or tasks unfinished: {json.dumps(broken)}")


if __name__ == "__main__":
    asyncio.run(main())
