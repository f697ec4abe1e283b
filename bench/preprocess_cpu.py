"""DeepSeek-OCR's Gundam image preprocessing on the CPU: threads against processes, float
pixels against uint8.

vLLM's processor (vllm/transformers_utils/processors/deepseek_ocr.py) pads each page to a
1024x1024 global view, resizes it to a grid of 640x640 tiles (2 to 6), and turns every view
into a normalised float tensor, cast to bf16: about 21 MB a page. On the H100 its renderer
threads were the frontend's busiest code (bench/README.md, "Steady state on the H100"). This
replays the same PIL steps with numpy in place of torchvision (ToTensor is a /255 and a
transpose; Normalize a subtract and divide; float16 stands in for the bf16 cast) to see:

- whether threads scale (PIL's resize and numpy release the GIL for their C loops), or
  whether processes are needed, which must ship each page's pixels back (pickled here);
- what sending uint8 tiles (normalising on the GPU instead) saves on the CPU and in bytes.

    .venv/bin/python bench/preprocess_cpu.py [--pages 60]

Writes bench/results/<date>-preprocess-cpu-vm.json. Not vLLM's code: a proxy for its cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mixed_pages import mixed_images

BASE, TILE, MIN_CROPS, MAX_CROPS = 1024, 640, 2, 6
RATIOS = sorted(
    {
        (i, j)
        for n in range(MIN_CROPS, MAX_CROPS + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if MIN_CROPS <= i * j <= MAX_CROPS
    },
    key=lambda r: r[0] * r[1],
)


def grid(width: int, height: int) -> tuple[int, int]:
    """vLLM's find_closest_aspect_ratio for Gundam."""
    aspect, best, best_diff = width / height, (1, 1), float("inf")
    for ratio in RATIOS:
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best, best_diff = ratio, diff
        elif diff == best_diff and width * height > 0.5 * TILE * TILE * ratio[0] * ratio[1]:
            best = ratio
    return best


def views(image: Image.Image) -> list[Image.Image]:
    columns, rows = grid(*image.size)
    resized = image.resize((TILE * columns, TILE * rows))
    tiles = [
        resized.crop((c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE))
        for r in range(rows)
        for c in range(columns)
    ]
    return [ImageOps.pad(image, (BASE, BASE), color=(127, 127, 127)), *tiles]


def as_float(view: Image.Image) -> np.ndarray:
    # ToTensor (/255, HWC -> CHW), Normalize(0.5, 0.5), then the cast to a 2-byte float.
    pixels = np.asarray(view, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((pixels - 0.5) / 0.5).astype(np.float16)


def preprocess_float(image: Image.Image) -> list[np.ndarray]:
    return [as_float(view) for view in views(image)]


def preprocess_uint8(image: Image.Image) -> list[np.ndarray]:
    return [np.asarray(view, dtype=np.uint8) for view in views(image)]


def run(
    executor: Executor, work: Callable[[Image.Image], list[np.ndarray]], images: list[Image.Image]
) -> tuple[float, int]:
    list(executor.map(work, images[:4]))  # warm the pool (process start, imports)
    began = time.perf_counter()
    outputs = list(executor.map(work, images))
    seconds = time.perf_counter() - began
    return seconds, sum(array.nbytes for arrays in outputs for array in arrays)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=60)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    distinct = [page.image for page in mixed_images(10)]
    images = [distinct[i % len(distinct)] for i in range(args.pages)]
    rows: list[dict[str, Any]] = []
    plans: list[tuple[str, Callable[[], Executor]]] = [
        ("threads x1", lambda: ThreadPoolExecutor(1)),
        ("threads x2", lambda: ThreadPoolExecutor(2)),
        ("threads x4", lambda: ThreadPoolExecutor(4)),
        ("processes x2", lambda: ProcessPoolExecutor(2)),
    ]
    for output, work in (("float16", preprocess_float), ("uint8", preprocess_uint8)):
        for name, make in plans:
            with make() as executor:
                seconds, nbytes = run(executor, work, images)
            row = {
                "pixels": output,
                "pool": name,
                "pages_per_s": round(args.pages / seconds, 2),
                "ms_per_page": round(1000 * seconds / args.pages, 1),
                "mb_per_page": round(nbytes / args.pages / 1e6, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "benchmark": "preprocess_cpu",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"2-CPU VM ({platform.node()}, {os.cpu_count()} CPUs)",
        "pages": args.pages,
        "page_kinds": "bench/mixed_pages.py, 10 distinct pages cycled",
        "command": "bench/preprocess_cpu.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{datetime.now(UTC):%Y-%m-%d}-preprocess-cpu-vm.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
