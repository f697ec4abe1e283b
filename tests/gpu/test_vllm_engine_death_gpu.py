"""The vLLM engine core dying under load, on a real GPU: health() must say so, in-flight
and later pages must fail at once (not hang), so that the consumer leaves their tasks
resumable and exits for its supervisor to restart it (consumer/app.py, EXIT_ENGINE_DEAD).

Its own engine: it kills it. Runs before test_vllm_engine_gpu.py (file order).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from PIL import Image, ImageDraw

from consumer.config import Settings
from consumer.engines.base import PageImage, PageRequest
from consumer.engines.vllm import VllmEngine
from consumer.errors import EngineError

DEATH_NOTICE_S = 30.0  # vLLM's monitor thread notices a dead core within a second or two


def _page(number: int) -> PageRequest:
    image = Image.new("RGB", (1240, 1754), "white")
    ImageDraw.Draw(image).text((80, 80), f"page {number} before the crash", fill="black")
    page = PageImage(task_id="gpu-death", page=number, image=image, dpi=150)
    return PageRequest(f"gpu-death/{number}/0", page)


def _engine_core_pids() -> list[int]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            title = f"{child.name()} {' '.join(child.cmdline())}"
        except psutil.Error:
            continue
        if "EngineCore" in title:
            found.append(child.pid)
    return found


async def test_a_killed_engine_core_is_reported_dead_and_pages_fail_fast(
    gpu_settings: Callable[..., Settings], engine_options: dict[str, Any]
) -> None:
    settings = gpu_settings(max_tokens=2000, ignore_eos=True)
    engine = VllmEngine(settings, **engine_options)
    await engine.start()
    try:
        assert engine.health().alive
        pids = _engine_core_pids()
        assert pids, "no EngineCore child process found"
        in_flight = [asyncio.create_task(engine.infer(_page(n))) for n in range(4)]
        await asyncio.sleep(3.0)  # decoding by now
        assert not any(task.done() for task in in_flight)
        killed_at = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*in_flight, return_exceptions=True), DEATH_NOTICE_S
        )
        noticed_s = time.monotonic() - killed_at
        print(f"\nin-flight pages failed {noticed_s:.1f} s after the kill: "
              f"{[type(o).__name__ for o in outcomes]}")
        assert all(isinstance(outcome, EngineError) for outcome in outcomes), outcomes
        health = engine.health()
        print(f"health after the kill: {health}")
        assert not health.alive and "dead" in health.reason
        began = time.monotonic()
        with pytest.raises(EngineError):
            await asyncio.wait_for(engine.infer(_page(9)), DEATH_NOTICE_S)
        assert time.monotonic() - began < 5.0, "a page sent to a dead engine must fail at once"
    finally:
        await asyncio.wait_for(engine.close(), 60)
