"""VllmEngine against a fake vLLM (no GPU, no vllm package needed).

The fake stands in for `AsyncLLM` at the `VllmBackend` seam: `generate()` is an async
generator that answers after a delay with a RequestOutput-shaped object, and records the
prompts, sampling parameters and aborts it saw.
"""

from __future__ import annotations

import asyncio
import os
import sys
import types
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from consumer.config import Detokenize, NgramProcessor, ResolutionMode, Settings
from consumer.engines import deepseek_modes, deepseek_pixels
from consumer.engines.base import EngineHealth, PageImage, PageRequest
from consumer.engines.deepseek_prompts import PROMPTS, build_prompt, clean_locate_text
from consumer.engines.vllm import MOE_CONFIGS, MOE_CONFIGS_ENV, V2_RUNNER_ENV, VllmEngine
from consumer.engines.vllm_backend import AsyncEngineLike, StatsSink
from consumer.engines.vllm_params import NGRAM_PROCESSORS
from consumer.errors import EngineError, OcrError
from schemas.common import ErrorCode
from schemas.request import PromptKind
from schemas.result import FinishReason

GROUNDED = (
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 120]]<|/det|>\n# Quarterly report\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 150, 900, 400]]<|/det|>\nRevenue grew by 12%.\n\n"
    "<|ref|>image<|/ref|><|det|>[[200, 500, 800, 900]]<|/det|>\n"
)


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class FakeRequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]
    finished: bool = True


Script = Callable[[str], tuple[str, int, str | None]]  # prompt -> text, tokens, reason


def answer(text: str, tokens: int = 40, reason: str | None = "stop") -> Script:
    def script(prompt: str) -> tuple[str, int, str | None]:
        return text, tokens, reason

    return script


@dataclass
class FakeTokenizer:
    """Decodes the ids FakeAsyncLLM hands out when asked not to detokenize: the first id
    indexes the text it stands for, the rest pad the output to its token count."""

    texts: list[str] = field(default_factory=list)
    decoded: list[int] = field(default_factory=list)  # lengths of the id lists decoded

    def encode(self, text: str, tokens: int) -> list[int]:
        self.texts.append(text)
        return [len(self.texts) - 1] + [0] * (tokens - 1) if tokens else []

    def decode(
        self,
        ids: list[int],
        skip_special_tokens: bool = True,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        assert skip_special_tokens is False  # grounding tags must survive
        assert clean_up_tokenization_spaces is False  # as vLLM's incremental decoding
        self.decoded.append(len(ids))
        return self.texts[ids[0]]


class EngineDeadError(Exception):
    """Stands in for vllm.v1.engine.exceptions.EngineDeadError."""


@dataclass
class FakeAsyncLLM:
    delay_s: float = 0.0
    script: Script = field(default_factory=lambda: answer(GROUNDED))
    prompt_tokens: int = 912
    fail: Exception | None = None
    calls: list[tuple[Any, Any, str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    internal_aborts: list[str] = field(default_factory=list)
    shut_down: bool = False
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    # AsyncLLM.errored: its engine core process died (or its output handler ended).
    errored: bool = False

    @property
    def dead_error(self) -> BaseException:
        return EngineDeadError("EngineCore encountered an issue. See stack trace above.")

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    async def generate(
        self, prompt: Any, sampling_params: Any, request_id: str
    ) -> AsyncGenerator[FakeRequestOutput, None]:
        self.calls.append((prompt, sampling_params, request_id))
        if self.errored:  # as AsyncLLM.add_request once the core is gone
            raise self.dead_error
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            # vLLM's generate() aborts its own request when cancelled, then re-raises.
            self.internal_aborts.append(request_id)
            raise
        if self.fail is not None:
            raise self.fail
        text, tokens, reason = self.script(prompt["prompt"])
        if sampling_params.get("detokenize", True):
            completion = FakeCompletion(text, list(range(tokens)), reason)
        else:  # as vLLM: ids only, the text left empty
            completion = FakeCompletion("", self.tokenizer.encode(text, tokens), reason)
        yield FakeRequestOutput(
            request_id=request_id,
            prompt_token_ids=list(range(self.prompt_tokens)),
            outputs=[completion],
        )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


@dataclass
class FakeBackend:
    engine: FakeAsyncLLM = field(default_factory=FakeAsyncLLM)
    start_error: Exception | None = None
    mode_error: Exception | None = None
    engine_args: dict[str, Any] | None = None
    sink: StatsSink | None = None
    modes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def version(self) -> str:
        return "0.26.0"

    def create_engine(self, engine_args: dict[str, Any], sink: StatsSink) -> FakeAsyncLLM:
        self.engine_args = engine_args
        self.sink = sink
        if self.start_error is not None:
            raise self.start_error
        return self.engine

    def sampling_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(params)

    async def prepare_inputs(
        self, engine: AsyncEngineLike, prompt: str, image: Image.Image
    ) -> dict[str, Any]:
        return {"prompt": prompt, "multi_modal_data": {"image": image}}

    def activate_mode(self, mode: str) -> None:
        if self.mode_error is not None:
            raise self.mode_error
        self.modes.append(("activate", mode))

    def release_mode(self, mode: str) -> None:
        self.modes.append(("release", mode))


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"model": "deepseek-ai/DeepSeek-OCR", "max_tokens": 100}
    values.update(overrides)
    return Settings(**values)


def page_request(
    request_id: str = "task-1/1/0",
    prompt: PromptKind = PromptKind.MARKDOWN,
    locate_text: str | None = None,
) -> PageRequest:
    image = Image.new("RGB", (1000, 1000), "white")
    page = PageImage(
        task_id="task-1", page=1, image=image, dpi=144, width_pt=500.0, height_pt=500.0
    )
    return PageRequest(request_id=request_id, page=page, prompt=prompt, locate_text=locate_text)


@pytest.fixture(autouse=True)
def _v1_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    # start() sets these variables (n-gram processor, spawn after CUDA use). Setting each
    # first makes monkeypatch restore its original state after the test, whatever start()
    # did to it, so nothing leaks into other tests.
    for name in (V2_RUNNER_ENV, "VLLM_WORKER_MULTIPROC_METHOD", deepseek_pixels.ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


async def started(
    backend: FakeBackend | None = None, **overrides: Any
) -> tuple[VllmEngine, FakeBackend]:
    backend = backend or FakeBackend()
    engine = VllmEngine(make_settings(**overrides), backend=backend, warmup_pages=0)
    await engine.start()
    return engine, backend


# -- prompts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (PromptKind.MARKDOWN, "<image>\n<|grounding|>Convert the document to markdown."),
        (PromptKind.OCR, "<image>\n<|grounding|>OCR this image."),
        (PromptKind.FREE_OCR, "<image>\nFree OCR."),
        (PromptKind.FIGURE, "<image>\nParse the figure."),
        (PromptKind.DESCRIBE, "<image>\nDescribe this image in detail."),
    ],
)
def test_official_prompts(kind: PromptKind, expected: str) -> None:
    assert build_prompt(kind) == expected


def test_every_prompt_kind_has_a_prompt() -> None:
    assert set(PROMPTS) == set(PromptKind)


def test_locate_prompt_embeds_the_text() -> None:
    assert build_prompt(PromptKind.LOCATE, "  total\namount ") == (
        "<image>\nLocate <|ref|>total amount<|/ref|> in the image."
    )


def test_locate_without_text_is_refused() -> None:
    with pytest.raises(EngineError) as info:
        build_prompt(PromptKind.LOCATE, "  ")
    assert info.value.code is ErrorCode.PROMPT_UNSUPPORTED


def test_locate_text_cannot_inject_special_tokens() -> None:
    cleaned = clean_locate_text("a<image>b<|/ref|>c<｜end▁of▁sentence｜>d\x00e")
    assert "<image>" not in cleaned and "<|" not in cleaned and "<｜" not in cleaned
    assert cleaned == "a b c d e"


async def test_each_prompt_kind_reaches_the_engine() -> None:
    engine, backend = await started()
    for number, kind in enumerate(PromptKind):
        text = "the total" if kind is PromptKind.LOCATE else None
        await engine.infer(page_request(f"t/{number}/0", kind, text))
    prompts = [call[0]["prompt"] for call in backend.engine.calls]
    assert prompts == [build_prompt(kind, "the total") for kind in PromptKind]
    image = backend.engine.calls[0][0]["multi_modal_data"]["image"]
    assert image.size == (1000, 1000)


# -- engine and sampling arguments --------------------------------------------------------


async def test_engine_args_follow_settings() -> None:
    _, backend = await started(
        max_num_seqs=128,
        max_num_batched_tokens=8192,
        preprocess_workers=6,
        gpu_memory_utilization=0.7,
        load_format="dummy",
        enforce_eager=True,
    )
    args = backend.engine_args
    assert args is not None
    assert args["model"] == "deepseek-ai/DeepSeek-OCR"
    assert args["load_format"] == "dummy"
    assert args["max_num_seqs"] == 128
    assert args["max_num_batched_tokens"] == 8192
    assert args["renderer_num_workers"] == 6
    assert args["gpu_memory_utilization"] == 0.7
    assert args["enforce_eager"] is True
    assert args["limit_mm_per_prompt"] == {"image": 1}
    assert args["mm_processor_cache_gb"] == 0
    assert args["enable_prefix_caching"] is False
    assert args["disable_log_stats"] is False
    assert args["logits_processors"] == [NGRAM_PROCESSORS[NgramProcessor.BATCHED]]
    assert "mm_processor_kwargs" not in args  # gundam is vLLM's own default
    assert "compilation_config" not in args  # enforce_eager: no vision encoder graphs


@pytest.mark.parametrize(
    ("mode", "setting", "eager", "graphs"),
    [
        (ResolutionMode.GUNDAM, None, False, True),
        (ResolutionMode.GUNDAM, False, False, False),
        (ResolutionMode.GUNDAM, None, True, False),  # enforce_eager: no graphs by default
        (ResolutionMode.TINY, None, False, False),  # unmeasured modes stay eager unless asked
        (ResolutionMode.LARGE, True, False, True),
    ],
)
def test_vision_cudagraphs_default_follows_the_measured_mode(
    mode: ResolutionMode, setting: bool | None, eager: bool, graphs: bool
) -> None:
    settings = make_settings(resolution_mode=mode, vision_cudagraphs=setting, enforce_eager=eager)
    engine = VllmEngine(settings, backend=FakeBackend())
    args = engine.engine_args()
    assert ("compilation_config" in args) is graphs
    if graphs:
        assert args["compilation_config"] == {"cudagraph_mm_encoder": True}


async def test_sampling_is_greedy_final_only_with_ngram_guard() -> None:
    engine, backend = await started(max_tokens=777, ngram_size=30, ngram_window=90)
    await engine.infer(page_request())
    params = backend.engine.calls[0][1]
    assert params["temperature"] == 0.0
    assert params["max_tokens"] == 777
    assert params["skip_special_tokens"] is False
    assert params["ignore_eos"] is False
    assert params["output_kind"] == "final_only"
    assert params["detokenize"] is False  # the default: decoded once, when the page is done
    assert params["extra_args"] == {
        "no_repeat_ngram_size": 30,
        "no_repeat_window": 90,
        "no_repeat_whitelist": [128821, 128822],
    }


async def test_per_request_processor_uses_vllms_own_keys() -> None:
    engine, backend = await started(ngram_processor="per-request", detokenize="incremental")
    await engine.infer(page_request())
    assert backend.engine_args is not None
    assert backend.engine_args["logits_processors"] == [
        "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"
    ]
    params = backend.engine.calls[0][1]
    assert params["detokenize"] is True
    assert params["extra_args"] == {
        "ngram_size": 30,
        "window_size": 90,
        "whitelist_token_ids": {128821, 128822},
    }


@pytest.mark.parametrize("detokenize", ["final", "incremental"])
async def test_both_detokenize_modes_give_the_same_page(detokenize: str) -> None:
    engine, backend = await started(detokenize=detokenize)
    out = await engine.infer(page_request())
    assert out.raw_text == GROUNDED
    assert [block.label for block in out.blocks] == ["title", "text", "image"]
    assert out.output_tokens == 40
    # "final" decodes each page's whole id list once; "incremental" leaves it to vLLM.
    assert backend.engine.tokenizer.decoded == ([40] if detokenize == "final" else [])


async def test_final_decoding_strips_the_eos_marker_vllm_would_have_dropped() -> None:
    from consumer.engines.deepseek_prompts import EOS_TEXT

    backend = FakeBackend(engine=FakeAsyncLLM(script=answer(GROUNDED + EOS_TEXT)))
    engine, _ = await started(backend)
    out = await engine.infer(page_request())
    assert out.raw_text == GROUNDED


async def test_a_page_keeps_its_decoding_when_set_decoding_changes_midway() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(delay_s=0.2))
    engine = VllmEngine(
        make_settings(), backend=backend, warmup_pages=0, ngram_processors=tuple(NgramProcessor)
    )
    await engine.start()
    running = asyncio.create_task(engine.infer(page_request()))  # detokenize=False
    await asyncio.sleep(0.05)
    engine.set_decoding(ngram_processor=None, detokenize=Detokenize.INCREMENTAL)
    out = await running
    assert out.raw_text == GROUNDED  # decoded from its ids, not vLLM's (empty) text
    assert backend.engine.calls[0][1]["detokenize"] is False


async def test_set_decoding_caps_later_pages_at_its_own_token_count() -> None:
    # No finish reason from the engine: the cap decides whether a page was cut short.
    backend = FakeBackend(engine=FakeAsyncLLM(script=answer(GROUNDED, tokens=40, reason=None)))
    engine, _ = await started(backend)
    assert not (await engine.infer(page_request("t/1/0"))).truncated  # 40 of 100
    engine.set_decoding(ngram_processor=NgramProcessor.BATCHED, detokenize=Detokenize.FINAL,
                        max_tokens=40)  # fmt: skip
    capped = await engine.infer(page_request("t/2/0"))
    assert capped.truncated and capped.finish_reason == FinishReason.LENGTH
    engine.set_decoding(ngram_processor=NgramProcessor.BATCHED, detokenize=Detokenize.FINAL)
    await engine.infer(page_request("t/3/0"))
    assert [call[1]["max_tokens"] for call in backend.engine.calls] == [100, 40, 100]
    with pytest.raises(EngineError, match="at least 1"):
        engine.set_decoding(ngram_processor=None, detokenize=Detokenize.FINAL, max_tokens=0)


async def test_set_decoding_switches_later_pages_only_between_loaded_processors() -> None:
    backend = FakeBackend()
    engine = VllmEngine(
        make_settings(), backend=backend, warmup_pages=0, ngram_processors=tuple(NgramProcessor)
    )
    await engine.start()
    assert backend.engine_args is not None
    assert backend.engine_args["logits_processors"] == list(NGRAM_PROCESSORS.values())
    engine.set_decoding(ngram_processor=NgramProcessor.PER_REQUEST, detokenize=Detokenize.FINAL)
    await engine.infer(page_request("t/1/0"))
    engine.set_decoding(ngram_processor=None, detokenize=Detokenize.INCREMENTAL)
    await engine.infer(page_request("t/2/0"))
    first, second = (call[1] for call in backend.engine.calls)
    assert "ngram_size" in first["extra_args"] and first["detokenize"] is False
    assert "extra_args" not in second and second["detokenize"] is True

    only_batched = VllmEngine(make_settings(), backend=FakeBackend(), warmup_pages=0)
    with pytest.raises(EngineError, match="not loaded"):
        only_batched.set_decoding(
            ngram_processor=NgramProcessor.PER_REQUEST, detokenize=Detokenize.FINAL
        )


async def test_ngram_off_drops_processor_and_extra_args() -> None:
    engine, backend = await started(ngram_size=0, ignore_eos=True)
    await engine.infer(page_request())
    assert backend.engine_args is not None
    assert "logits_processors" not in backend.engine_args
    params = backend.engine.calls[0][1]
    assert "extra_args" not in params
    assert params["ignore_eos"] is True


async def test_start_selects_v1_runner_for_the_ngram_processor() -> None:
    import os

    await started()
    assert os.environ[V2_RUNNER_ENV] == "0"


@pytest.mark.parametrize("uint8", [True, False])
async def test_start_exports_the_uint8_pixel_switch_for_the_engine_core(uint8: bool) -> None:
    import os

    await started(vision_uint8=uint8)
    assert os.environ[deepseek_pixels.ENV] == ("1" if uint8 else "0")


async def test_start_points_vllm_at_our_moe_tables_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    await started()
    assert os.environ[MOE_CONFIGS_ENV] == str(MOE_CONFIGS)
    assert (MOE_CONFIGS / "README.md").exists()  # shipped as package data
    monkeypatch.setenv(MOE_CONFIGS_ENV, "/nonexistent")  # the baseline of an A/B run
    await started()
    assert os.environ[MOE_CONFIGS_ENV] == "/nonexistent"


async def test_explicit_v2_runner_conflicts_with_ngram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(V2_RUNNER_ENV, "1")
    backend = FakeBackend()
    with pytest.raises(EngineError, match=V2_RUNNER_ENV):
        await VllmEngine(make_settings(), backend=backend, warmup_pages=0).start()
    assert backend.engine_args is None  # refused before any engine was built


async def test_v2_runner_is_fine_without_ngram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(V2_RUNNER_ENV, "1")
    engine, _ = await started(ngram_size=0)
    assert engine.stats().pages_total == 0


# -- outputs ------------------------------------------------------------------------------


async def test_grounded_output_becomes_blocks() -> None:
    engine, _ = await started()
    out = await engine.infer(page_request())
    assert out.finish_reason is FinishReason.STOP
    assert out.truncated is False
    assert out.prompt_tokens == 912
    assert out.output_tokens == 40
    assert out.raw_text == GROUNDED
    assert [block.label for block in out.blocks] == ["title", "text", "image"]
    title = out.blocks[0]
    assert title.text == "Quarterly report"
    # 0..999 coordinates scaled to the 1000 px image and the 500 pt page.
    assert title.bbox_px == pytest.approx([100.1, 50.05, 900.9, 120.12], abs=0.01)
    assert title.bbox_pdf == pytest.approx([50.05, 25.03, 450.45, 60.06], abs=0.01)
    assert "# Quarterly report" in out.markdown
    assert "Revenue grew by 12%." in out.text
    # No store configured: the figure is not cut, and the Markdown says why, with no link.
    assert out.figures == []
    assert "*[figure 1 of page 1 not stored: no artifact store" in out.markdown
    assert "](" not in out.markdown
    assert "<|ref|>" not in out.markdown


async def test_figures_are_handed_to_the_runner_when_a_store_is_configured(
    tmp_path: Path,
) -> None:
    engine, _ = await started(artifacts_uri=str(tmp_path))
    out = await engine.infer(page_request())
    (figure,) = out.figures
    assert (figure.index, figure.block, figure.width_px, figure.height_px) == (1, 2, 601, 401)
    assert figure.placeholder in out.markdown
    assert not os.listdir(tmp_path)  # the engine writes no file itself


async def test_plain_output_without_grounding() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(script=answer("Just some text.\n")))
    engine, _ = await started(backend)
    out = await engine.infer(page_request(prompt=PromptKind.FREE_OCR))
    assert out.text.strip() == "Just some text."
    assert out.blocks == []


async def test_length_finish_is_flagged_truncated() -> None:
    script = answer("# Heading\n\nA long page that goes on", 100, "length")
    engine, _ = await started(FakeBackend(engine=FakeAsyncLLM(script=script)), max_tokens=100)
    out = await engine.infer(page_request())
    assert out.finish_reason is FinishReason.LENGTH
    assert out.truncated is True
    assert out.output_tokens == 100


async def test_loop_at_the_cap_is_repetition() -> None:
    script = answer("Intro\n" + "the same row again\n" * 40, 100, "length")
    engine, _ = await started(FakeBackend(engine=FakeAsyncLLM(script=script)), max_tokens=100)
    out = await engine.infer(page_request())
    assert out.finish_reason is FinishReason.REPETITION
    assert out.truncated is True


async def test_trailing_eos_marker_is_stripped() -> None:
    script = answer("Hello<｜end▁of▁sentence｜>", 3, "length")
    engine, _ = await started(FakeBackend(engine=FakeAsyncLLM(script=script)))
    out = await engine.infer(page_request())
    assert out.raw_text == "Hello"


# -- abort, timeout, errors ---------------------------------------------------------------


async def test_cancellation_aborts_the_request() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(delay_s=30))
    engine, _ = await started(backend)
    task = asyncio.create_task(engine.infer(page_request("task-1/7/2")))
    await asyncio.sleep(0.05)
    assert engine.stats().extra["inflight"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.engine.aborted == ["task-1/7/2"]
    assert backend.engine.internal_aborts == ["task-1/7/2"]
    assert engine.stats().extra["inflight"] == 0


async def test_the_callers_page_deadline_aborts_the_request() -> None:
    # The page deadline is the task runner's alone (consumer/tasks.py): the engine keeps no
    # timer of its own, and the runner's cancellation must abort the request inside vLLM.
    backend = FakeBackend(engine=FakeAsyncLLM(delay_s=30))
    engine, _ = await started(backend, page_timeout_s=0.05)  # not the engine's to enforce
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await engine.infer(page_request("task-1/3/0"))
    assert backend.engine.aborted == ["task-1/3/0"]
    stats = engine.stats()
    assert stats.extra["aborted_total"] == 1 and "timeouts_total" not in stats.extra
    assert stats.extra["inflight"] == 0


async def test_engine_failure_becomes_engine_error() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(fail=ValueError("prompt too long")))
    engine, _ = await started(backend)
    with pytest.raises(EngineError) as info:
        await engine.infer(page_request("task-1/4/0"))
    assert info.value.code is ErrorCode.ENGINE_ERROR
    assert "prompt too long" in info.value.message
    assert backend.engine.aborted == ["task-1/4/0"]


async def test_infer_before_start_is_an_engine_error() -> None:
    engine = VllmEngine(make_settings(), backend=FakeBackend(), warmup_pages=0)
    with pytest.raises(EngineError, match="not started"):
        await engine.infer(page_request())


async def test_duplicate_request_id_is_refused() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(delay_s=0.2))
    engine, _ = await started(backend)
    first = asyncio.create_task(engine.infer(page_request("same/1/0")))
    await asyncio.sleep(0.01)
    with pytest.raises(EngineError, match="already running"):
        await engine.infer(page_request("same/1/0"))
    await first


async def test_close_aborts_inflight_and_shuts_down() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(delay_s=30))
    engine, _ = await started(backend)
    task = asyncio.create_task(engine.infer(page_request("task-1/9/0")))
    await asyncio.sleep(0.02)
    await engine.close()
    assert backend.engine.shut_down
    assert "task-1/9/0" in backend.engine.aborted
    assert backend.modes == [("activate", "gundam"), ("release", "gundam")]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- health -------------------------------------------------------------------------------


async def test_health_says_when_the_engine_core_died() -> None:
    backend = FakeBackend()
    engine = VllmEngine(make_settings(), backend=backend, warmup_pages=0)
    # Loading takes minutes; that is readiness's business, not a reason to restart.
    assert engine.health().alive and engine.health().reason == "not started"
    await engine.start()
    assert engine.health().alive
    backend.engine.errored = True
    health = engine.health()
    assert not health.alive
    assert health.reason.startswith("vLLM engine core is dead: EngineDeadError: EngineCore")
    with pytest.raises(EngineError, match="EngineDeadError"):
        await engine.infer(page_request())
    await engine.close()
    assert engine.health() == EngineHealth(alive=False, reason="vLLM engine closed")


async def test_health_reason_is_short() -> None:
    class Verbose(FakeAsyncLLM):
        @property
        def dead_error(self) -> BaseException:
            return EngineDeadError("x" * 10_000)

    engine, backend = await started(FakeBackend(engine=Verbose()))
    backend.engine.errored = True
    assert len(engine.health().reason) <= 300


async def test_postprocessing_time_is_reported_apart() -> None:
    engine, _ = await started()
    out = await engine.infer(page_request())
    assert out.postprocess_ms > 0


# -- stats and identity -------------------------------------------------------------------


async def test_stats_come_from_the_scheduler_while_busy() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(delay_s=0.1))
    engine, _ = await started(backend, max_num_seqs=4)
    assert backend.sink is not None
    tasks = [asyncio.create_task(engine.infer(page_request(f"t/{i}/0"))) for i in range(6)]
    await asyncio.sleep(0.01)
    # Before the first scheduler report: our own count, capped at max_num_seqs.
    early = engine.stats()
    assert (early.running, early.waiting) == (4, 2)
    backend.sink.record(running=4, waiting=2, kv_cache_usage=0.37, preempted=1)
    busy = engine.stats()
    assert (busy.running, busy.waiting) == (4, 2)
    assert busy.kv_cache_usage == pytest.approx(0.37)
    assert busy.extra["preemptions_total"] == 1
    await asyncio.gather(*tasks)
    idle = engine.stats()
    assert (idle.running, idle.waiting, idle.kv_cache_usage) == (0, 0, 0.0)
    assert idle.pages_total == 6
    assert idle.prompt_tokens_total == 6 * 912
    assert idle.output_tokens_total == 6 * 40


async def test_identity_and_concurrency_hint() -> None:
    engine = VllmEngine(
        make_settings(max_num_seqs=200, resolution_mode="base"),
        backend=FakeBackend(),
        warmup_pages=0,
    )
    identity = engine.identity
    assert (identity.name, identity.model, identity.version, identity.mode) == (
        "vllm",
        "deepseek-ai/DeepSeek-OCR",
        "0.26.0",
        "base",
    )
    assert engine.suggested_inflight_pages == 200


# -- resolution modes ---------------------------------------------------------------------


async def test_non_default_mode_passes_crop_flag_and_activates() -> None:
    _, backend = await started(resolution_mode=ResolutionMode.BASE)
    assert backend.engine_args is not None
    assert backend.engine_args["mm_processor_kwargs"] == {"crop_mode": False}
    assert backend.modes == [("activate", "base")]


async def test_mode_unreachable_in_spawned_core_is_unsupported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    monkeypatch.setattr(deepseek_modes, "plugin_registered", lambda: False)
    backend = FakeBackend()
    with pytest.raises(OcrError) as info:
        await VllmEngine(
            make_settings(resolution_mode="large"), backend=backend, warmup_pages=0
        ).start()
    assert info.value.code is ErrorCode.RESOLUTION_MODE_UNSUPPORTED
    assert "spawn" in info.value.message
    # It says what is missing (the entry point in this environment) and the install step.
    assert "is not registered in this Python environment" in info.value.message
    assert "pip install 'ocr-stream[gpu]'" in info.value.message
    assert backend.engine_args is None


async def test_spawn_is_fine_with_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    monkeypatch.setattr(deepseek_modes, "plugin_registered", lambda: True)
    _, backend = await started(resolution_mode="tiny")
    assert backend.modes == [("activate", "tiny")]


async def test_second_mode_in_one_process_is_unsupported() -> None:
    backend = FakeBackend(mode_error=deepseek_modes.ModeError("mode 'base' is already active"))
    with pytest.raises(OcrError) as info:
        await VllmEngine(
            make_settings(resolution_mode="small"), backend=backend, warmup_pages=0
        ).start()
    assert info.value.code is ErrorCode.RESOLUTION_MODE_UNSUPPORTED


async def test_placeholder_mismatch_at_start_is_unsupported_mode() -> None:
    backend = FakeBackend(
        start_error=RuntimeError("Attempted to assign 273 multimodal tokens to 903 placeholders")
    )
    with pytest.raises(OcrError) as info:
        await VllmEngine(
            make_settings(resolution_mode="base"), backend=backend, warmup_pages=0
        ).start()
    assert info.value.code is ErrorCode.RESOLUTION_MODE_UNSUPPORTED
    assert backend.modes == [("activate", "base"), ("release", "base")]


async def test_other_start_failure_is_engine_error() -> None:
    backend = FakeBackend(start_error=RuntimeError("CUDA out of memory"))
    with pytest.raises(EngineError) as info:
        await VllmEngine(make_settings(), backend=backend, warmup_pages=0).start()
    assert info.value.code is ErrorCode.ENGINE_ERROR
    assert "out of memory" in info.value.message


@pytest.fixture
def fake_vllm_modules(monkeypatch: pytest.MonkeyPatch) -> list[types.ModuleType]:
    modules = []
    for name in (deepseek_modes.PROCESSOR_MODULE, deepseek_modes.MODEL_MODULE):
        module = types.ModuleType(name)
        module.BASE_SIZE = 1024  # type: ignore[attr-defined]
        module.IMAGE_SIZE = 640  # type: ignore[attr-defined]
        module.CROP_MODE = True  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, module)
        modules.append(module)
    monkeypatch.setattr(deepseek_modes, "_active", None)
    monkeypatch.delenv(deepseek_modes.ENV_MODE, raising=False)
    return modules


def test_activate_patches_vllm_constants(fake_vllm_modules: list[types.ModuleType]) -> None:
    import os

    deepseek_modes.activate("large")
    for module in fake_vllm_modules:
        assert (module.BASE_SIZE, module.IMAGE_SIZE, module.CROP_MODE) == (1280, 1280, False)
    assert os.environ[deepseek_modes.ENV_MODE] == "large"
    deepseek_modes.activate("large")  # idempotent
    with pytest.raises(deepseek_modes.ModeError):
        deepseek_modes.activate("tiny")
    deepseek_modes.release("large")
    for module in fake_vllm_modules:
        assert (module.BASE_SIZE, module.IMAGE_SIZE, module.CROP_MODE) == (1024, 640, True)
    assert deepseek_modes.ENV_MODE not in os.environ
    assert deepseek_modes.current_mode() is None


def test_plugin_applies_the_mode_from_the_environment(
    fake_vllm_modules: list[types.ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(deepseek_modes.ENV_MODE, "small")
    deepseek_modes.vllm_general_plugin()
    for module in fake_vllm_modules:
        assert (module.BASE_SIZE, module.IMAGE_SIZE, module.CROP_MODE) == (640, 640, False)


@pytest.mark.parametrize(
    ("mode", "tokens"),
    [("tiny", 73), ("small", 111), ("base", 273), ("large", 421), ("gundam", None)],
)
def test_image_token_counts(mode: str, tokens: int | None) -> None:
    assert deepseek_modes.num_image_tokens(mode, 1240, 1754) == tokens


async def test_inline_preprocess_hands_vllm_the_plain_prompt() -> None:
    class NoPrepare(FakeBackend):
        async def prepare_inputs(
            self, engine: AsyncEngineLike, prompt: str, image: Image.Image
        ) -> dict[str, Any]:
            raise AssertionError("inline preprocessing must not use the renderer path")

    backend = NoPrepare()
    engine = VllmEngine(make_settings(), backend=backend, preprocess="inline", warmup_pages=0)
    await engine.start()
    await engine.infer(page_request())
    prompt = backend.engine.calls[0][0]
    assert prompt["prompt"] == build_prompt(PromptKind.MARKDOWN)
    assert prompt["multi_modal_data"]["image"].size == (1000, 1000)


async def test_start_on_the_loop_uses_the_same_arguments() -> None:
    backend = FakeBackend()
    engine = VllmEngine(make_settings(), backend=backend, start_in_thread=False, warmup_pages=0)
    await engine.start()
    assert backend.engine_args is not None
    assert (await engine.infer(page_request())).output_tokens == 40


def test_plugin_can_arm_stack_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    import faulthandler
    import signal

    registered: list[int] = []
    monkeypatch.setattr(faulthandler, "register", lambda signum, **kw: registered.append(signum))
    monkeypatch.delenv(deepseek_modes.ENV_MODE, raising=False)
    monkeypatch.setenv(deepseek_modes.ENV_STACKS, "1")
    deepseek_modes.vllm_general_plugin()
    assert registered == [signal.SIGUSR1]


async def test_start_warms_up_with_short_blank_pages() -> None:
    backend = FakeBackend()
    engine = VllmEngine(make_settings(max_tokens=500), backend=backend, warmup_pages=3)
    await engine.start()
    assert [call[2].rsplit("-", 1)[1] for call in backend.engine.calls] == ["0", "1", "2"]
    assert all(call[2].startswith("warmup-") for call in backend.engine.calls)
    assert all(call[1]["max_tokens"] == 16 for call in backend.engine.calls)
    assert all(call[1]["ignore_eos"] is True for call in backend.engine.calls)
    stats = engine.stats()
    assert (stats.pages_total, stats.extra["inflight"]) == (0, 0)  # not counted as pages
    out = await engine.infer(page_request())
    assert backend.engine.calls[-1][1]["max_tokens"] == 500  # real pages: the real cap
    assert out.output_tokens == 40


async def test_failed_warm_up_does_not_fail_start() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(fail=RuntimeError("kernel compile failed")))
    engine = VllmEngine(make_settings(), backend=backend, warmup_pages=1)
    await engine.start()
    assert backend.engine.calls  # it was tried


def _fake_torch(bad_fork: bool) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        _is_in_bad_fork=lambda: bad_fork, is_initialized=lambda: False
    )
    return torch


async def test_cuda_touched_before_start_forces_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setitem(sys.modules, "torch", _fake_torch(bad_fork=True))
    await started()
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


async def test_clean_process_keeps_vllm_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setitem(sys.modules, "torch", _fake_torch(bad_fork=False))
    await started()
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in os.environ


async def test_spawn_forced_makes_plugin_mandatory_for_modes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(bad_fork=True))
    monkeypatch.setattr(deepseek_modes, "plugin_registered", lambda: False)
    with pytest.raises(OcrError) as info:
        await started(resolution_mode="base")
    assert info.value.code is ErrorCode.RESOLUTION_MODE_UNSUPPORTED
