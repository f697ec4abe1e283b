"""The batched vision encoder (OCR_VISION_BATCH) on a real engine.

Runs after the other GPU modules have closed their engines: the model class it registers
stays in vLLM's registry for the rest of the process. With this project's vLLM plugin
installed the engine core is spawned, so the plugin, not inherited memory, has to carry
the setting into it. Random weights: the test checks that every page of a mixed burst (two
tile grids, and pages too small to tile) gets an embedding of exactly its placeholder count
(vLLM refuses a page otherwise) and decodes, not what it says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image, ImageDraw

from consumer.config import Settings
from consumer.engines import deepseek_modes
from consumer.engines.base import PageImage, PageRequest
from consumer.engines.vllm import VllmEngine

SIZES = [(1240, 1754), (1754, 1240), (600, 600)]  # 2x3 tiles, 3x2 tiles, no tiles


def page(number: int) -> PageImage:
    width, height = SIZES[number % len(SIZES)]
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((40, 40), f"Batched vision page {number}", fill="black")
    return PageImage(task_id="gpu-vision", page=number, image=image, dpi=150)


async def test_a_mixed_burst_decodes_with_the_batched_encoder(
    gpu_settings: Callable[..., Settings],
    engine_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if deepseek_modes.plugin_registered():
        monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    monkeypatch.setenv(deepseek_modes.ENV_VISION_BATCH, "")  # restored after the test
    settings = gpu_settings(vision_batch=16, max_tokens=32, ignore_eos=True)
    engine = VllmEngine(settings, **engine_options)
    began = time.monotonic()
    await engine.start()
    print(f"\nbatched-vision engine start: {time.monotonic() - began:.1f} s")
    try:
        began = time.monotonic()
        outs = await asyncio.wait_for(
            asyncio.gather(
                *(engine.infer(PageRequest(f"gpu-vision/{n}/0", page(n))) for n in range(1, 25))
            ),
            300,
        )
        print(f"24 mixed pages: {time.monotonic() - began:.1f} s")
    finally:
        await engine.close()
    assert [out.output_tokens for out in outs] == [32] * 24
    by_size: dict[tuple[int, int], set[int]] = {}
    for number, out in enumerate(outs, start=1):
        by_size.setdefault(SIZES[number % len(SIZES)], set()).add(out.prompt_tokens)
    # One prompt length per page size, and the untiled page's is the shortest.
    assert all(len(lengths) == 1 for lengths in by_size.values())
    assert min(by_size, key=lambda size: min(by_size[size])) == (600, 600)
