"""VllmEngine on a real GPU: prompts, token counts, abort, timeout and stats (Gundam mode).

One engine serves the module (starting one takes a minute or more); it closes at the end
of the module so that test_vllm_modes_gpu.py can start an engine in another mode in this
process. Random weights make the text meaningless: the tests check mechanics, lengths and
numbers, never content.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from PIL import Image, ImageDraw

from consumer.config import Settings
from consumer.engines.base import PageImage, PageRequest
from consumer.engines.deepseek_prompts import build_prompt
from consumer.engines.vllm import VllmEngine
from schemas.request import PromptKind
from schemas.result import FinishReason

MAX_TOKENS = 48
GUNDAM_IMAGE_TOKENS = 903  # a 1240x1754 page: 2x3 tiles of 640 plus the 1024 global view
LONG_TOKENS = 4000  # a page that would decode for many seconds unless aborted
PAGE_LIMIT_S = 120  # fail a test rather than hang the session on a stuck engine


def text_page(number: int) -> PageImage:
    image = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(image)
    for line in range(40):
        draw.text(
            (80, 60 + 40 * line), f"Page {number} line {line}: total 12,345.67 due", fill="black"
        )
    return PageImage(
        task_id="gpu-test", page=number, image=image, dpi=150, width_pt=595.0, height_pt=842.0
    )


def request(name: str, kind: PromptKind = PromptKind.MARKDOWN, number: int = 1) -> PageRequest:
    locate = "total" if kind is PromptKind.LOCATE else None
    return PageRequest(f"gpu-{name}/{number}/0", text_page(number), kind, locate)


@functools.cache
def text_tokens(model: str, kind: PromptKind) -> int:
    """BOS plus the prompt's text tokens, as DeepSeek-OCR's processor counts them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    after_image = build_prompt(kind, "total").split("<image>", 1)[1]
    return 1 + len(tokenizer.encode(after_image, add_special_tokens=False))


@pytest.fixture(scope="module")
async def engine(
    gpu_settings: Callable[..., Settings], engine_options: dict[str, Any]
) -> AsyncIterator[VllmEngine]:
    settings = gpu_settings(max_tokens=MAX_TOKENS, ignore_eos=True)
    engine = VllmEngine(settings, **engine_options)
    began = time.monotonic()
    await engine.start()
    print(f"\nengine start: {time.monotonic() - began:.1f} s")
    yield engine
    await engine.close()


def long_sampling(engine: VllmEngine) -> Any:
    # The same parameters with a long fixed length, for abort tests (test-only access).
    params = engine.sampling_args() | {"max_tokens": LONG_TOKENS, "ignore_eos": True}
    return engine._backend.sampling_params(params)


async def test_markdown_page_token_counts(engine: VllmEngine) -> None:
    out = await asyncio.wait_for(engine.infer(request("markdown")), PAGE_LIMIT_S)
    expected_prompt = GUNDAM_IMAGE_TOKENS + text_tokens(engine._settings.model, PromptKind.MARKDOWN)
    assert out.prompt_tokens == expected_prompt
    assert out.output_tokens == MAX_TOKENS
    assert out.finish_reason in (FinishReason.LENGTH, FinishReason.REPETITION)
    assert out.truncated is True
    assert out.raw_text  # random ids still detokenize to something
    identity = engine.identity
    assert (identity.name, identity.version, identity.mode) == ("vllm", "0.26.0", "gundam")


async def test_every_prompt_kind_runs(engine: VllmEngine) -> None:
    kinds = list(PromptKind)
    outs = await asyncio.wait_for(
        asyncio.gather(
            *(engine.infer(request(f"kind-{kind.value}", kind, n)) for n, kind in enumerate(kinds))
        ),
        PAGE_LIMIT_S,
    )
    for kind, out in zip(kinds, outs, strict=True):
        assert out.prompt_tokens == GUNDAM_IMAGE_TOKENS + text_tokens(engine._settings.model, kind)
        assert out.output_tokens == MAX_TOKENS


async def test_offloaded_preprocessing_matches_vllm_own_path(engine: VllmEngine) -> None:
    # The engine processes images on vLLM's renderer pool through a private vLLM method;
    # vLLM's public path (a plain prompt dict) must give the same prompt.
    page = text_page(7)
    prompt = build_prompt(PromptKind.MARKDOWN)
    llm: Any = engine._engine
    final: Any = None
    plain = {"prompt": prompt, "multi_modal_data": {"image": page.image}}
    async for output in llm.generate(plain, engine._sampling, request_id="gpu-plain/7/0"):
        final = output
    ours = await asyncio.wait_for(engine.infer(PageRequest("gpu-ours/7/0", page)), PAGE_LIMIT_S)
    assert len(final.prompt_token_ids) == ours.prompt_tokens
    prepared = await asyncio.wait_for(
        engine._backend.prepare_inputs(llm, prompt, page.image), PAGE_LIMIT_S
    )
    assert prepared["type"] == "multimodal"  # the fast path, not the fallback


async def test_cancellation_frees_the_batch_slot(engine: VllmEngine) -> None:
    engine._sampling, normal = long_sampling(engine), engine._sampling
    try:
        task = asyncio.create_task(engine.infer(request("cancel")))
        await asyncio.sleep(2.0)
        assert engine._sink.running >= 1
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - began < 2.0
    finally:
        engine._sampling = normal
    # The next page runs alone: were the aborted one still decoding, the scheduler would
    # report two running requests during it.
    await asyncio.wait_for(engine.infer(request("after-cancel")), PAGE_LIMIT_S)
    assert engine._sink.running <= 1
    assert engine.stats().extra["inflight"] == 0


async def test_the_callers_page_deadline_aborts(engine: VllmEngine) -> None:
    # The page deadline is the task runner's (an asyncio.timeout around infer()); its
    # cancellation must stop the page inside vLLM.
    engine._sampling, normal = long_sampling(engine), engine._sampling
    aborted = engine.stats().extra["aborted_total"]
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.0):
                await engine.infer(request("timeout"))
    finally:
        engine._sampling = normal
    await asyncio.wait_for(engine.infer(request("after-timeout")), PAGE_LIMIT_S)
    assert engine._sink.running <= 1
    assert engine.stats().extra["aborted_total"] > aborted


async def test_stats_during_a_burst(engine: VllmEngine) -> None:
    before = engine.stats()
    samples = []

    async def sample() -> None:
        while True:
            samples.append(engine.stats())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        burst = asyncio.gather(*(engine.infer(request("burst", number=n)) for n in range(48)))
        outs = await asyncio.wait_for(burst, PAGE_LIMIT_S)
    finally:
        sampler.cancel()
    after = engine.stats()
    assert len(outs) == 48
    assert after.pages_total - before.pages_total == 48
    assert after.output_tokens_total - before.output_tokens_total == 48 * MAX_TOKENS
    assert max(s.running for s in samples) > 1
    assert max(s.kv_cache_usage for s in samples) > 0.0
    assert (after.running, after.waiting) == (0, 0)


def rule_violations(ids: list[int], ngram: int, window: int, whitelist: frozenset[int]) -> int:
    """Tokens that complete an n-gram already seen in the window before them."""
    count = 0
    for end in range(ngram, len(ids)):
        seen = ids[max(0, end - window) : end]
        prefix = ids[end - ngram + 1 : end]
        for start in range(len(seen) - ngram + 1):
            if seen[start : start + ngram - 1] == prefix and seen[start + ngram - 1] == ids[end]:
                count += ids[end] not in whitelist
                break
    return count


async def test_batched_ngram_rule_holds_in_the_decoded_tokens(engine: VllmEngine) -> None:
    # Random weights loop readily; with the rule on, no token may complete a repeat.
    from consumer.config import Detokenize, NgramProcessor
    from consumer.engines.deepseek_prompts import NGRAM_WHITELIST_TOKEN_IDS

    settings = engine._settings
    llm: Any = engine._engine
    page = text_page(9)
    prompt = build_prompt(PromptKind.MARKDOWN)
    inputs = {"prompt": prompt, "multi_modal_data": {"image": page.image}}
    found: dict[str, int] = {}
    try:
        for name, processor in (("batched", NgramProcessor.BATCHED), ("off", None)):
            engine.set_decoding(ngram_processor=processor, detokenize=Detokenize.FINAL)
            params = engine._backend.sampling_params(
                engine.sampling_args() | {"max_tokens": 600, "ignore_eos": True}
            )
            final: Any = None
            async for output in llm.generate(inputs, params, request_id=f"gpu-rule-{name}/9/0"):
                final = output
            ids = list(final.outputs[0].token_ids)
            assert len(ids) == 600
            found[name] = rule_violations(
                ids, settings.ngram_size, settings.ngram_window, NGRAM_WHITELIST_TOKEN_IDS
            )
    finally:
        engine.set_decoding(
            ngram_processor=settings.ngram_processor, detokenize=settings.detokenize
        )
    print(f"\nn-gram rule violations in 600 tokens: {found}")
    assert found["off"] > 0  # else the page never repeated and the check proved nothing
    assert found["batched"] == 0
