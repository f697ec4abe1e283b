"""Memory an in-flight page costs the consumer, by dpi: what sizes OCR_MAX_INFLIGHT_MEGAPIXELS.

A page holds memory from its render until its result is published: the RGB image in the
consumer process (3 bytes a pixel), plus, while it is being handed over, the pixel bytes
received from the render worker. This renders a US-letter text page at several dpi through
the real render workers, holds N rendered pages at once as in-flight pages are held, and
reads the consumer process's RSS (and its peak) before and after; the render worker's own
peak is read from its /proc entry. Linux only (/proc).

    .venv/bin/python bench/page_memory.py [--pages 8] [--dpi 72,144,300,600] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymupdf as _pymupdf

from consumer.config import Settings
from consumer.documents import renderproc
from consumer.documents.fetch import FetchedDocument
from consumer.documents.media import PDF
from consumer.documents.render import open_document, shutdown_renderers
from consumer.engines.base import PageImage

# PyMuPDF is untyped where it matters here (Document(), new_page(), tobytes()).
pymupdf: Any = _pymupdf
LETTER_PT = (612.0, 792.0)


def _status(pid: int | str, field: str) -> int:
    """A VmRSS/VmHWM line of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def _letter_pdf(pages: int) -> bytes:
    document = pymupdf.open()
    for number in range(1, pages + 1):
        page = document.new_page(width=LETTER_PT[0], height=LETTER_PT[1])
        for line in range(30):
            page.insert_text((72, 72 + 20 * line), f"Page {number} line {line} total paid 42")
    data: bytes = document.tobytes()
    document.close()
    return data


async def measure(dpi: int, pages: int) -> dict[str, float]:
    settings = Settings(render_workers=1, max_page_pixels=100_000_000, page_timeout_s=300)
    data = _letter_pdf(pages)
    document = FetchedDocument(data=data, media_type=PDF, sha256="0" * 64, name="letter")
    opened = await open_document(document, settings, "bench")
    try:
        await opened.render_page(1, 36)  # worker started, document open
        gc.collect()
        _reset_peak()
        before = _status("self", "VmRSS")
        held: list[PageImage] = []
        for page in range(1, pages + 1):
            held.append(await opened.render_page(page, dpi))
        gc.collect()
        after = _status("self", "VmRSS")
        peak = _status("self", "VmHWM")
        worker = renderproc.render_pool(1).workers[0]
        worker_peak = _status(worker.pid, "VmHWM") if worker.pid else 0
        width, height = held[0].image.size
        pixels = width * height
        per_page = (after - before) / pages
        del held
    finally:
        await opened.close()
    return {
        "dpi": dpi,
        "width_px": width,
        "height_px": height,
        "megapixels": round(pixels / 1e6, 2),
        "held_mb_per_page": round(per_page / 1e6, 2),
        "held_bytes_per_pixel": round(per_page / pixels, 2),
        "peak_mb_over_held": round((peak - after) / 1e6, 1),
        "render_worker_peak_mb": round(worker_peak / 1e6, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--dpi", default="72,144,300,600")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    try:
        for dpi in (int(value) for value in args.dpi.split(",")):
            row = await measure(dpi, args.pages)
            rows.append(row)
            print(json.dumps(row))
    finally:
        shutdown_renderers()
    document = {
        "bench": "page_memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{socket.gethostname()} ({os.cpu_count()} CPUs, {platform.machine()}, "
                   f"Python {platform.python_version()}, PyMuPDF {pymupdf.VersionBind})",
        "page": "US letter (612 x 792 pt), text",
        "pages_held": args.pages,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
