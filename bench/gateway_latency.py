"""Latency through ocr-gateway against ocr-submit, for the same pages, on a running stack.

Each round submits the same one-page document twice, once through the gateway (multipart
upload, then its Server-Sent Events until the task is final) and once as `ocr-submit
--wait` does it (its own functions, in-process, so no interpreter start-up is counted:
hand-over, progress follower positioned, request produced, follower waits), alternating
which goes first. Besides upload-to-final, each path is split into its two parts of its
own: submitting (to the gateway's 202, or to the broker's ack) and delivering the final
status (from the consumer's `emitted_at` to the client seeing it), which the engine's
time, noisy on a shared machine, does not enter. The two copies differ only in a serial
number printed at the foot of the page, so they are distinct tasks (no duplicate
short-cut) with the same OCR work. One warm-up round of each is not counted. Usage:

    make up                       # Kafka, Redis, one consumer (CPU engine), the gateway
    .venv/bin/python bench/gateway_latency.py --rounds 15

Writes bench/results/<date>-gateway-latency-<host>.json (p50/p95 of both, the overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pymupdf as _pymupdf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer_tools import submit
from producer_tools.follow_progress import ProgressFollower
from producer_tools.submit import SubmitSettings
from producer_tools.submit_requests import RequestOptions, build_submissions
from schemas.progress import TaskStatus

# Untyped in parts (consumer/documents/rasterize.py says so too).
pymupdf: Any = _pymupdf
REPO = Path(__file__).resolve().parent.parent
PARTS = ("total_s", "submit_s", "delivery_s")
LINES = [
    "Northwind Logistics moved 48,200 parcels in the third quarter.",
    "Average delivery time fell from 3.4 days to 2.9 days.",
    "Damaged goods claims dropped by twelve percent.",
    "The Rotterdam hub opened its second sorting line in August.",
]


def draw(path: Path, serial: str) -> Path:
    document = pymupdf.open()
    page = document.new_page(width=595, height=842)
    page.insert_text((72, 90), "Quarterly Shipping Report", fontsize=22, fontname="hebo")
    for i, line in enumerate(LINES):
        page.insert_text((72, 140 + 26 * i), line, fontsize=13, fontname="helv")
    page.insert_text((72, 800), f"Serial {serial}", fontsize=9, fontname="helv")
    document.save(path)
    document.close()
    return path


@dataclass
class Sample:
    total_s: float  # upload (or hand-over) to the final status seen by the client
    submit_s: float  # to the gateway's 202, or to the broker's ack of ocr-submit's request
    delivery_s: float  # final event emitted by the consumer -> seen by the client


async def through_gateway(client: httpx.AsyncClient, name: str, data: bytes) -> Sample:
    started = time.perf_counter()
    accepted = await client.post("/v1/tasks", files={"file": (name, data, "application/pdf")})
    accepted.raise_for_status()
    submitted = time.perf_counter()
    task_id = accepted.json()["task_id"]
    answer: dict[str, Any] = {}
    async with client.stream("GET", f"/v1/tasks/{task_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: ") and '"task_id"' in line:
                answer = json.loads(line[6:])
                if answer["status"] in ("completed", "failed", "cancelled"):
                    break
    seen, seen_at = time.perf_counter(), datetime.now(UTC)
    if answer.get("status") != "completed":
        raise RuntimeError(f"gateway task {task_id} ended {answer.get('status')}")
    emitted = datetime.fromisoformat(answer["timings"]["finished_at"])
    return Sample(seen - started, submitted - started, (seen_at - emitted).total_seconds())


async def through_submit(settings: SubmitSettings, pdf: Path) -> Sample:
    """What `ocr-submit --wait FILE` does (producer_tools/submit.py run()), timed."""
    started = time.perf_counter()
    submissions = await asyncio.to_thread(
        build_submissions, [str(pdf)], RequestOptions(), settings.blob_root
    )
    labels = {s.task_id: s.label for s in submissions}
    follower = ProgressFollower(settings, labels, None, dead_letters=True, client_id="bench")
    try:
        await follower.start(from_beginning=False)
        await submit.produce_requests(settings, submissions)
        submitted = time.perf_counter()
        outcome = await follower.wait(300)
    finally:
        await follower.stop()
    seen, seen_at = time.perf_counter(), datetime.now(UTC)
    [final] = outcome.latest.values()
    if final is None or final.status is not TaskStatus.COMPLETED:
        raise RuntimeError(f"ocr-submit task ended {final}")
    return Sample(seen - started, submitted - started, (seen_at - final.emitted_at).total_seconds())


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=20, method="inclusive")
    return {
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(cuts[18], 3),
        "min_s": round(ordered[0], 3),
        "max_s": round(ordered[-1], 3),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--gateway-url",
        default=f"http://127.0.0.1:{os.environ.get('OCR_GATEWAY_PORT', '8080')}",
    )
    parser.add_argument("--machine", default="2-CPU VM")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    folder = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    settings = SubmitSettings()
    gateway: list[Sample] = []
    direct: list[Sample] = []
    load_before = os.getloadavg()
    async with httpx.AsyncClient(base_url=args.gateway_url, timeout=300) as client:
        (await client.get("/readyz")).raise_for_status()
        for round_ in range(args.rounds + 1):
            via_gateway = draw(folder / f"g{round_}.pdf", f"{run}-G{round_}")
            via_submit = draw(folder / f"s{round_}.pdf", f"{run}-S{round_}")
            gateway_pdf = via_gateway.read_bytes()
            if round_ % 2 == 0:
                g = await through_gateway(client, via_gateway.name, gateway_pdf)
                s = await through_submit(settings, via_submit)
            else:
                s = await through_submit(settings, via_submit)
                g = await through_gateway(client, via_gateway.name, gateway_pdf)
            print(f"round {round_}: gateway {g}, ocr-submit {s}", flush=True)
            if round_ > 0:  # round 0 warms both paths up
                gateway.append(g)
                direct.append(s)
    g_stats = {part: quantiles([getattr(x, part) for x in gateway]) for part in PARTS}
    s_stats = {part: quantiles([getattr(x, part) for x in direct]) for part in PARTS}
    result = {
        "benchmark": "gateway_latency",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": args.machine,
        "host": platform.node(),
        "python": platform.python_version(),
        "engine": "rapidocr (the consumer of `make up`)",
        "document": "1-page PDF, A4, 144 dpi, 5 lines and a serial",
        "rounds": args.rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "measured": {
            "total_s": "upload (or hand-over) to the final status, seen by the client",
            "submit_s": "to the gateway's 202 (upload, limits checked, hand-over, request "
            "acked) / to the broker's ack of ocr-submit's request (hand-over included)",
            "delivery_s": "final progress event emitted by the consumer -> seen by the client "
            "(gateway: view applies it to Redis, pings, SSE; ocr-submit: its follower)",
        },
        "gateway": g_stats,
        "ocr_submit": s_stats,
        "overhead": {
            part: {
                "p50_s": round(g_stats[part]["p50_s"] - s_stats[part]["p50_s"], 3),
                "p95_s": round(g_stats[part]["p95_s"] - s_stats[part]["p95_s"], 3),
                "median_of_paired_differences_s": round(statistics.median(
                    getattr(g, part) - getattr(s, part)
                    for g, s in zip(gateway, direct, strict=True)
                ), 3),
            }
            for part in PARTS
        },
        "samples": {"gateway": [asdict(x) for x in gateway],
                    "ocr_submit": [asdict(x) for x in direct]},
        "command": f"make up && .venv/bin/python bench/gateway_latency.py --rounds {args.rounds}",
    }
    out = args.out or REPO / "bench" / "results" / (
        f"{datetime.now(UTC).date()}-gateway-latency-vm.json"
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("gateway", "ocr_submit", "overhead")}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
