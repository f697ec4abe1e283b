"""Kafka codecs for what the consumer produces: bytes on the topic and CPU per page.

Builds realistic page results (the repository's own prose, tables and lists, laid out as
pages of about 3,000 characters and post-processed the way each engine's output is:
DeepSeek-OCR grounded text and RapidOCR lines), publishes them with the consumer's own
EventPublisher once per codec to a fresh topic of the real local broker, and reports:

- bytes on the topic: the broker's log segment sizes (what retention and replication pay),
- producer CPU per page: process time of publishing, which includes compression,
- reader CPU per page: process time of an aiokafka consumer reading the topic back,
- the codec alone: compress + decompress time of one record's batch, and its ratio.

Pages are published as the consumer publishes them, one at a time waiting for each ack,
so every batch holds one record (the codec sees one page at a time).

    make up-stack
    .venv/bin/python bench/codecs.py --pages 480 --rounds 3

Writes bench/results/<date>-codecs-<host>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from PIL import Image

from consumer.config import CompressionType, Settings
from consumer.page_image import PageImage
from consumer.postprocess.page import PageText, deepseek_page_text, lines_page_text
from consumer.publisher import EventPublisher
from consumer.settings.kafka import client_kwargs
from producer_tools.topic_admin import delete_topics, ensure_topics
from schemas.result import (
    EngineIdentity,
    FinishReason,
    PageImageInfo,
    PageResult,
    PageStatus,
    PageTimings,
    TokenCounts,
)
from schemas.topics import TopicSpec

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["README.md", "ARCHITECTURE.md", "docs/operations.md", "bench/README.md",
           "deploy/k8s/README.md", "deploy/gpu/README.md"]
PAGE_CHARS = 3000
WIDTH_PX, HEIGHT_PX, DPI = 1240, 1754, 150  # A4 at 150 dpi
WIDTH_PT, HEIGHT_PT = 595.0, 842.0
CODEC_ATTRIBUTE = {
    CompressionType.NONE: DefaultRecordBatch.CODEC_NONE,
    CompressionType.GZIP: DefaultRecordBatch.CODEC_GZIP,
    CompressionType.SNAPPY: DefaultRecordBatch.CODEC_SNAPPY,
    CompressionType.LZ4: DefaultRecordBatch.CODEC_LZ4,
    CompressionType.ZSTD: DefaultRecordBatch.CODEC_ZSTD,
}


def paragraphs() -> Iterator[str]:
    for name in SOURCES:
        text = (REPO / name).read_text()
        text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
        for block in re.split(r"\n\s*\n", text):
            block = block.strip()
            if block and not block.startswith("```"):
                yield block


def pages_of_text() -> list[list[str]]:
    pages: list[list[str]] = [[]]
    size = 0
    for block in paragraphs():
        if size + len(block) > PAGE_CHARS and pages[-1]:
            pages.append([])
            size = 0
        pages[-1].append(block[:PAGE_CHARS])
        size += len(block)
    return pages


def label_of(block: str) -> str:
    if block.startswith("#"):
        return "title"
    if block.startswith("|"):
        return "table"
    return "text"


def deepseek_raw(blocks: list[str]) -> str:
    """DeepSeek-OCR's grounded output for a page holding these blocks, top to bottom."""
    out, top = [], 40
    for block in blocks:
        height = min(20 + 12 * block.count("\n") + len(block) // 12, 900)
        bottom = min(top + height, 990)
        out.append(f"<|ref|>{label_of(block)}<|/ref|><|det|>[[60, {top}, 940, {bottom}]]<|/det|>\n"
                   f"{block}\n")
        top = min(bottom + 8, 980)
    return "\n".join(out)


def rapidocr_lines(blocks: list[str]) -> list[tuple[str, tuple[float, float, float, float], float]]:
    """RapidOCR-like lines: each text line with a pixel box and a confidence."""
    lines, y = [], 80.0
    for number, block in enumerate(blocks):
        for line in block.splitlines():
            for start in range(0, len(line), 90):
                piece = line[start:start + 90]
                lines.append((piece, (96.0, y, 96.0 + 11.5 * len(piece), y + 24.0),
                              0.86 + (number * 7 % 13) / 100))
                y += 30.0
        y += 18.0
    return lines


def page_results(count: int) -> list[PageResult]:
    texts = pages_of_text()
    image = Image.new("RGB", (WIDTH_PX, HEIGHT_PX), "white")
    results = []
    for index in range(count):
        blocks = texts[index % len(texts)]
        engine_kind = "vllm" if index % 2 == 0 else "rapidocr"
        task_id = f"bench-{index // 8:04d}"
        page = PageImage(task_id=task_id, page=index % 8 + 1, image=image, dpi=DPI,
                         width_pt=WIDTH_PT, height_pt=HEIGHT_PT)
        made: PageText = (
            deepseek_page_text(deepseek_raw(blocks), page) if engine_kind == "vllm"
            else lines_page_text(rapidocr_lines(blocks), page)
        )
        results.append(PageResult(
            task_id=task_id, page=page.page, page_count=8, attempt=0, status=PageStatus.OK,
            markdown=made.markdown, text=made.text, blocks=made.blocks,
            finish_reason=FinishReason.STOP,
            tokens=TokenCounts(prompt=912, output=len(made.markdown) // 3),
            engine=(EngineIdentity(name="vllm", model="deepseek-ai/DeepSeek-OCR",
                                   version="0.26.0", mode="gundam")
                    if engine_kind == "vllm" else
                    EngineIdentity(name="rapidocr", model="PP-OCRv4", version="1.4.4")),
            image=PageImageInfo(width_px=WIDTH_PX, height_px=HEIGHT_PX, dpi=DPI,
                                width_pt=WIDTH_PT, height_pt=HEIGHT_PT),
            timings=PageTimings(render_ms=41.0 + index % 7, queue_ms=12.5, infer_ms=2710.3,
                                postprocess_ms=1.2),
            metadata={"tenant": "acme", "batch": f"2026-12-{index % 28 + 1:02d}"},
            produced_at=datetime.now(UTC),
        ))
    return results


def codec_alone(kind: CompressionType, values: list[bytes], rounds: int) -> dict[str, float]:
    """One record a batch, as the trickle publishes: build (compress) and read it back."""
    def batch(value: bytes) -> bytes:
        builder = DefaultRecordBatchBuilder(
            magic=2, compression_type=CODEC_ATTRIBUTE[kind], is_transactional=0,
            producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 22,
        )
        builder.append(0, timestamp=None, key=b"bench-0000/1", value=value, headers=[])
        return bytes(builder.build())

    built = [batch(value) for value in values]
    start = time.process_time()
    for _ in range(rounds):
        for value in values:
            batch(value)
    compress = (time.process_time() - start) / (rounds * len(values))
    start = time.process_time()
    for _ in range(rounds):
        for data in built:
            for _record in DefaultRecordBatch(data):
                pass
    decompress = (time.process_time() - start) / (rounds * len(values))
    return {
        "batch_bytes_per_page": sum(map(len, built)) / len(built),
        "compress_us_per_page": round(compress * 1e6, 1),
        "decompress_us_per_page": round(decompress * 1e6, 1),
    }


def topic_bytes(data_dir: Path, topic: str) -> int:
    return sum(f.stat().st_size for f in data_dir.glob(f"{topic}-*/*.log"))


async def publish(settings: Settings, results: list[PageResult]) -> float:
    """As the consumer publishes: one page at a time, each send waiting for its ack."""
    publisher = EventPublisher(settings, consumer_id="bench-codecs")
    await publisher.start()
    try:
        start = time.process_time()
        for result in results:
            await publisher.result(result)
        return time.process_time() - start
    finally:
        await publisher.stop()


async def read_back(settings: Settings, topic: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(topic, **client_kwargs(settings), group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        seen, start = 0, time.process_time()
        deadline = time.monotonic() + 120
        while seen < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            seen += sum(len(records) for records in batch.values())
        if seen < expected:
            raise RuntimeError(f"read {seen} of {expected} records back from {topic}")
        return time.process_time() - start
    finally:
        await consumer.stop()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    base = Settings()
    results = page_results(args.pages)
    values = [r.model_dump_json().encode() for r in results]
    run = uuid.uuid4().hex[:6]
    samples: dict[CompressionType, list[dict[str, int | float]]] = {k: [] for k in CompressionType}
    # Rounds interleave the codecs, so that load from other work on the machine falls on
    # all of them alike; the median round is reported.
    for round_number in range(args.rounds):
        for kind in CompressionType:
            topic = f"bench-codecs-{run}-{round_number}-{kind.value}"
            await ensure_topics(base, [TopicSpec(topic, 1, 1, {"cleanup.policy": "delete"})])
            settings = base.model_copy(
                update={"topic_results": topic, "kafka_compression_type": kind}
            )
            try:
                cpu_publish = await publish(settings, results)
                on_topic = topic_bytes(args.kafka_data, topic)
                cpu_read = await read_back(settings, topic, len(results))
            finally:
                await delete_topics(base, [topic])
            sample = {
                "bytes_on_topic": on_topic,
                "producer_cpu_ms_per_page": round(cpu_publish * 1000 / len(results), 3),
                "reader_cpu_ms_per_page": round(cpu_read * 1000 / len(results), 3),
            }
            samples[kind].append(sample)
            print(f"round {round_number} {kind.value:7} {sample}", flush=True)
    report: dict[str, Any] = {}
    for kind, rounds in samples.items():
        on_topic = int(statistics.median(s["bytes_on_topic"] for s in rounds))
        report[kind.value] = {
            "bytes_on_topic": on_topic,
            "bytes_on_topic_per_page": round(on_topic / len(results)),
            "producer_cpu_ms_per_page": statistics.median(
                s["producer_cpu_ms_per_page"] for s in rounds),
            "reader_cpu_ms_per_page": statistics.median(
                s["reader_cpu_ms_per_page"] for s in rounds),
            "rounds": rounds,
        }
    for kind in CompressionType:
        report[kind.value]["codec_alone_one_record_a_batch"] = codec_alone(kind, values, 3)
    json_bytes = sum(map(len, values))
    return {
        "pages": len(results),
        "json_bytes_per_page": round(json_bytes / len(results)),
        "page_mix": "half DeepSeek-OCR grounded output, half RapidOCR lines, ~3,000 "
                    "characters of this repository's docs a page",
        "codecs": report,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=480)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kafka-data", type=Path,
                        default=Path(os.environ.get("OCR_RUN_DIR", REPO / ".run")) / "kafka-data",
                        help="the local broker's log.dirs (stack.sh: .run/kafka-data)")
    parser.add_argument("--machine", default="2-CPU VM", help="named in the result file")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    figures = asyncio.run(measure(args))
    host = socket.gethostname()
    result = {
        "benchmark": "codecs",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": args.machine,
        "host": host,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aiokafka": version("aiokafka"),
        "cramjam": version("cramjam"),
        "broker": "Apache Kafka 4.1.1 (deploy/local/stack.sh), topic compression.type=producer",
        "command": f".venv/bin/python bench/codecs.py --pages {args.pages} --rounds {args.rounds}",
        **figures,
    }
    out = args.out or REPO / "bench" / "results" / (
        f"{datetime.now(UTC):%Y-%m-%d}-codecs-{'vm' if 'VM' in args.machine else host}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
