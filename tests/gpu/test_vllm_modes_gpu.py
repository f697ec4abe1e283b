"""A resolution mode other than vLLM's default (Gundam), on a real engine.

Runs after test_vllm_engine_gpu.py has closed its Gundam engine: the mode is process-wide.
When the `vllm.general_plugins` entry point of this project is installed (the GPU driver
script declares it), the engine core is spawned rather than forked, so the test proves that
the plugin, not inherited memory, carries the mode into vLLM's child process.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image, ImageDraw

from consumer.config import Settings
from consumer.engines import deepseek_modes
from consumer.engines.base import PageImage, PageRequest
from consumer.engines.deepseek_prompts import build_prompt
from consumer.engines.vllm import VllmEngine
from schemas.request import PromptKind


def page() -> PageImage:
    image = Image.new("RGB", (1240, 1754), "white")
    ImageDraw.Draw(image).text((80, 80), "Base mode page", fill="black")
    return PageImage(task_id="gpu-mode", page=1, image=image, dpi=150)


async def test_base_mode_prompt_is_273_image_tokens(
    gpu_settings: Callable[..., Settings],
    engine_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import AutoTokenizer

    spawn = deepseek_modes.plugin_registered()
    if spawn:
        monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    settings = gpu_settings(resolution_mode="base", max_tokens=32, ignore_eos=True)
    engine = VllmEngine(settings, **engine_options)
    began = time.monotonic()
    await engine.start()
    print(
        f"\nbase-mode engine start: {time.monotonic() - began:.1f} s, "
        f"core {'spawned (plugin)' if spawn else 'forked'}"
    )
    try:
        out = await asyncio.wait_for(engine.infer(PageRequest("gpu-base/1/0", page())), 120)
    finally:
        await engine.close()
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    text = build_prompt(PromptKind.MARKDOWN).split("<image>", 1)[1]
    expected = 1 + deepseek_modes.num_image_tokens("base", 1240, 1754)  # type: ignore[operator]
    expected += len(tokenizer.encode(text, add_special_tokens=False))
    assert out.prompt_tokens == expected
    assert out.output_tokens == 32
    assert engine.identity.mode == "base"
    assert deepseek_modes.current_mode() is None  # released: another mode may start now
    assert deepseek_modes.ENV_MODE not in os.environ
