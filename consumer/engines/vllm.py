"""DeepSeek-OCR on vLLM's `AsyncLLM`, inside the consumer's own process.

One `AsyncLLM` per consumer: it spawns vLLM's engine core as a child process (the program's
entry point must therefore sit under `if __name__ == "__main__":`), and every page is one
request to it, `request_id` = the page attempt's id, so a page can be aborted by name.

- `start()` builds the engine (minutes: weights, kernel compilation, CUDA graphs) in a
  worker thread, so the event loop, and with it the health endpoint, stays responsive.
- `infer()` turns the image into model inputs on vLLM's renderer thread pool
  (`preprocess_workers` threads; done on the event loop it would serialise every page's
  resize, tiling and normalisation), runs greedy decoding, and post-processes the grounded
  output into the result schema. Cancellation (the caller's page deadline included) aborts
  the request inside vLLM, so an abandoned page stops taking batch slots and KV cache at
  once; `aborted_total` in the stats counts those aborts.
- `stats()` reads the scheduler's own numbers (running, waiting, KV-cache usage), which a
  stat logger passed to `AsyncLLM` receives after every engine step.

vLLM is imported only inside `vllm_backend.RealVllm`: the module imports (and its tests run)
on machines without vLLM or torch. Tests swap it for a fake through the `backend` argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from consumer.config import Detokenize, NgramProcessor, ResolutionMode, Settings
from consumer.engines import deepseek_modes, deepseek_pixels, vllm_params
from consumer.engines.base import EngineHealth, EngineOutput, EngineStats, PageRequest
from consumer.engines.deepseek_prompts import build_prompt, strip_eos
from consumer.engines.vllm_backend import (
    MP_METHOD_ENV,
    AsyncEngineLike,
    RealVllm,
    StatsSink,
    VllmBackend,
    fork_poisoned,
    spawn_expected,
)
from consumer.errors import EngineError, OcrError
from consumer.log import get_logger
from consumer.postprocess.finish import classify_finish
from consumer.postprocess.page import PageText, deepseek_page_text
from schemas.common import ErrorCode
from schemas.request import PromptKind
from schemas.result import EngineIdentity

log = get_logger(__name__)

V2_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
# vLLM's folder of fused-MoE tables, looked up before its own (moe_configs/README.md).
MOE_CONFIGS_ENV = "VLLM_TUNED_CONFIG_FOLDER"
MOE_CONFIGS = Path(__file__).resolve().parent / "moe_configs"
MAX_IDENTITY_MODEL = 256  # EngineIdentity.model's limit; a long local path must still fit

Preprocess = Literal["renderer", "inline"]

# Named combinations of VllmEngine's start/preprocess options, for benchmarks and tests:
# where the engine is constructed (a worker thread, or the event loop) and where images
# are processed (vLLM's renderer thread pool, or inline by vLLM on the event loop).
VARIANTS: dict[str, dict[str, Any]] = {
    "renderer-thread": {"start_in_thread": True, "preprocess": "renderer"},
    "renderer-loop": {"start_in_thread": False, "preprocess": "renderer"},
    "inline-thread": {"start_in_thread": True, "preprocess": "inline"},
    "inline-loop": {"start_in_thread": False, "preprocess": "inline"},
}


WARMUP_TOKENS = 16
WARMUP_TIMEOUT_S = 900.0
MAX_HEALTH_REASON = 300  # a probe's JSON answer, not a traceback


class VllmEngine:
    """The Engine protocol on vLLM (see consumer/engines/base.py)."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: VllmBackend | None = None,
        start_in_thread: bool = True,
        preprocess: Preprocess = "renderer",
        warmup_pages: int = 2,
        ngram_processors: Sequence[NgramProcessor] = (),
    ) -> None:
        """`start_in_thread`: build the engine off the event loop (else on it, blocking it
        for the minutes of a start, as vLLM's own server does). `preprocess`: "renderer"
        processes images on vLLM's renderer thread pool; "inline" hands vLLM the plain
        prompt, which it processes on the event loop (vLLM 0.26's own path).
        `warmup_pages`: blank pages decoded (a few tokens each) before start() returns.
        `ngram_processors`: the n-gram processors to load (default: the configured one);
        benchmarks load both and switch between them with `set_decoding`."""
        self._settings = settings
        self._backend: VllmBackend = backend or RealVllm()
        self._start_in_thread = start_in_thread
        self._preprocess = preprocess
        self._warmup_pages = warmup_pages
        self._engine: AsyncEngineLike | None = None
        self._closed = False
        self._sampling: Any = None
        self._tokenizer: Any = None
        self._ngram, self._detokenize = vllm_params.configured_decoding(settings)
        self._max_tokens = settings.max_tokens
        self._ngram_loaded = tuple(ngram_processors) or (settings.ngram_processor,)
        self._mode = settings.resolution_mode.value
        self._mode_active = False
        self._sink = StatsSink()
        self._inflight: set[str] = set()
        self._version: str | None = None
        self.start_seconds = 0.0
        self._pages_total = 0
        self._prompt_tokens_total = 0
        self._output_tokens_total = 0
        self._aborted_total = 0

    # -- identity and sizing ------------------------------------------------------------

    @property
    def identity(self) -> EngineIdentity:
        if self._version is None:
            self._version = self._backend.version
        return EngineIdentity(
            name="vllm",
            model=self._settings.model[-MAX_IDENTITY_MODEL:],
            version=self._version[:64],
            mode=self._mode,
        )

    @property
    def suggested_inflight_pages(self) -> int:
        # vLLM decodes at most max_num_seqs pages per step; the scheduler adds its margin.
        return self._settings.max_num_seqs

    # -- configuration ------------------------------------------------------------------

    def engine_args(self) -> dict[str, Any]:
        """`AsyncEngineArgs` keyword arguments for these settings."""
        return vllm_params.engine_args(self._settings, self._mode, self._ngram_loaded)

    def sampling_args(self) -> dict[str, Any]:
        """`SamplingParams` keyword arguments: one set for every page of this engine."""
        return vllm_params.sampling_args(
            self._settings, self._ngram, self._detokenize, self._max_tokens
        )

    def set_decoding(
        self,
        *,
        ngram_processor: NgramProcessor | None,
        detokenize: Detokenize,
        max_tokens: int | None = None,
    ) -> None:
        """Benchmarks: the n-gram rule (None: off), detokenization and token cap (None:
        the configured one) for the pages submitted from now on; the processor must be
        one loaded at start."""
        if ngram_processor is not None and (
            ngram_processor not in self._ngram_loaded or self._settings.ngram_size <= 0
        ):
            raise EngineError(f"n-gram processor {ngram_processor!s} is not loaded")
        if max_tokens is not None and max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, not {max_tokens}")
        self._ngram = ngram_processor
        self._detokenize = detokenize
        self._max_tokens = self._settings.max_tokens if max_tokens is None else max_tokens
        if self._engine is not None:
            self._sampling = self._backend.sampling_params(self.sampling_args())

    # -- life cycle ---------------------------------------------------------------------

    def _prepare_mode(self) -> None:
        mode = self._mode
        if (
            mode != ResolutionMode.GUNDAM.value
            and spawn_expected()
            and not (deepseek_modes.plugin_registered())
        ):
            raise OcrError(
                ErrorCode.RESOLUTION_MODE_UNSUPPORTED,
                f"resolution mode {mode!r} needs vLLM's DeepSeek-OCR constants set in the "
                "engine core process, which vLLM will spawn here (CUDA is already "
                "initialised or VLLM_WORKER_MULTIPROC_METHOD=spawn) and which then cannot "
                "see this process's settings. The vLLM plugin that sets them there "
                f"({deepseek_modes.PLUGIN_GROUP}: {deepseek_modes.PLUGIN_VALUE}) is not "
                "registered in this Python environment: ocr-stream runs from a source tree "
                "here, not from an install. Install it into the environment that runs vLLM "
                "(pip install 'ocr-stream[gpu]', or pip install -e . in the checkout), or "
                "use mode 'gundam'",
            )
        try:
            self._backend.activate_mode(mode)
        except deepseek_modes.ModeError as exc:
            raise OcrError(ErrorCode.RESOLUTION_MODE_UNSUPPORTED, str(exc)) from exc
        self._mode_active = True

    def _prepare_runner_env(self) -> None:
        if self._settings.ngram_size <= 0:
            return
        value = os.environ.get(V2_RUNNER_ENV)
        if value is None:
            # The n-gram processor is a V1 logits processor: the V2 model runner refuses
            # to load it, and the engine core reads this variable when it starts.
            os.environ[V2_RUNNER_ENV] = "0"
            log.info(
                "vllm_env_set",
                variable=V2_RUNNER_ENV,
                value="0",
                reason="the no-repeat n-gram processor needs the V1 model runner",
            )
        elif value.strip() not in ("0", "false", "False"):
            raise EngineError(
                f"{V2_RUNNER_ENV}={value} selects vLLM's V2 model runner, which cannot load "
                "the no-repeat n-gram processor: unset it, or set OCR_NGRAM_SIZE=0"
            )

    def _prepare_moe_configs(self) -> None:
        if os.environ.get(MOE_CONFIGS_ENV):
            return  # the operator's tables (or, to compare, none)
        # Read by vLLM in the engine core: our tuned fused-MoE tables, on the GPUs they name.
        os.environ[MOE_CONFIGS_ENV] = str(MOE_CONFIGS)

    def _prepare_start_method(self) -> None:
        if os.environ.get(MP_METHOD_ENV) == "spawn" or not fork_poisoned():
            return
        os.environ[MP_METHOD_ENV] = "spawn"
        log.warning(
            "vllm_spawn_forced",
            variable=MP_METHOD_ENV,
            reason="CUDA was initialised in this process (e.g. torch.cuda.is_available()); "
            "a forked engine core could not use the GPU",
        )

    async def start(self) -> None:
        if self._engine is not None:
            return
        self._prepare_runner_env()
        self._prepare_moe_configs()
        self._prepare_start_method()
        self._prepare_mode()
        # Read by RealVllm here and by vLLM's plugin hook in the engine core it starts.
        os.environ[deepseek_pixels.ENV] = "1" if self._settings.vision_uint8 else "0"
        args = self.engine_args()
        log.info(
            "vllm_engine_starting",
            model=self._settings.model,
            mode=self._mode,
            max_num_seqs=self._settings.max_num_seqs,
        )
        began = time.monotonic()
        try:
            if self._start_in_thread:
                engine = await asyncio.to_thread(self._backend.create_engine, args, self._sink)
            else:
                engine = self._backend.create_engine(args, self._sink)
            sampling = self._backend.sampling_params(self.sampling_args())
            tokenizer = engine.get_tokenizer()
        except BaseException as exc:
            self._release_mode()
            if isinstance(exc, OcrError | asyncio.CancelledError | KeyboardInterrupt):
                raise
            if self._mode != ResolutionMode.GUNDAM.value and "placeholder" in str(exc):
                raise OcrError(
                    ErrorCode.RESOLUTION_MODE_UNSUPPORTED,
                    f"vLLM could not run DeepSeek-OCR in mode {self._mode!r}: {exc}",
                ) from exc
            raise EngineError(f"vLLM engine failed to start: {type(exc).__name__}: {exc}") from exc
        self._engine = engine
        self._sampling = sampling
        self._tokenizer = tokenizer
        await self._warm_up(engine)
        self.start_seconds = time.monotonic() - began
        log.info(
            "vllm_engine_started",
            seconds=round(self.start_seconds, 1),
            version=self.identity.version,
        )

    async def _warm_up(self, engine: AsyncEngineLike) -> None:
        """Decode a few tokens of blank pages, so the first real pages do not pay for lazy
        set-up: image processor creation, and Triton kernels compiled for new batch shapes
        (on the H100 a fresh engine's first page took 31 s, four concurrent first pages
        more than 120 s, the default page time limit). Failures only log: the engine may
        still serve, and a real page will say if it cannot."""
        if self._warmup_pages <= 0:
            return
        params = self._backend.sampling_params(
            self.sampling_args() | {"max_tokens": WARMUP_TOKENS, "ignore_eos": True}
        )
        prompt = build_prompt(PromptKind.MARKDOWN)
        image = Image.new("RGB", (1240, 1754), "white")  # A4 at 150 dpi: the usual tiling
        run = uuid.uuid4().hex[:8]

        async def one(index: int) -> None:
            await self._run_request(engine, f"warmup-{run}-{index}", prompt, image, params)

        began = time.monotonic()
        try:
            async with asyncio.timeout(WARMUP_TIMEOUT_S):
                await asyncio.gather(*(one(index) for index in range(self._warmup_pages)))
        except Exception as exc:
            log.warning("vllm_warmup_failed", error=f"{type(exc).__name__}: {exc}")
            return
        log.info(
            "vllm_warmup_done", pages=self._warmup_pages, seconds=round(time.monotonic() - began, 1)
        )

    def _release_mode(self) -> None:
        if self._mode_active:
            self._mode_active = False
            self._backend.release_mode(self._mode)

    async def close(self) -> None:
        self._closed = True
        engine, self._engine = self._engine, None
        if engine is None:
            return
        for request_id in list(self._inflight):
            await self._abort(engine, request_id)
        try:
            engine.shutdown()
        finally:
            self._release_mode()
        log.info("vllm_engine_closed", pages=self._pages_total)

    # -- pages --------------------------------------------------------------------------

    async def _abort(self, engine: AsyncEngineLike, request_id: str) -> None:
        # Shielded: a second cancellation must not stop the abort half-way and leave the
        # request decoding inside vLLM. Failures only log: the engine may already be gone.
        try:
            await asyncio.shield(engine.abort(request_id))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("vllm_abort_failed", request_id=request_id, error=str(exc))
        self._aborted_total += 1

    async def _run_request(
        self,
        engine: AsyncEngineLike,
        request_id: str,
        prompt: str,
        image: Image.Image,
        sampling: Any,
    ) -> Any:
        inputs: Any
        if self._preprocess == "inline":
            inputs = {"prompt": prompt, "multi_modal_data": {"image": image}}
        else:
            inputs = await self._backend.prepare_inputs(engine, prompt, image)
        final: Any = None
        # FINAL_ONLY yields once; aclosing ends the generator (and with it vLLM's own
        # abort-on-close) even if the loop is left early.
        stream = engine.generate(inputs, sampling, request_id=request_id)
        async with contextlib.aclosing(stream):
            async for output in stream:
                final = output
        return final

    async def preprocess(self, request: PageRequest) -> None:
        """Benchmarks: only the image processing of one page, as infer() does it with
        preprocess="renderer" (vLLM's renderer thread pool)."""
        engine = self._started()
        prompt = build_prompt(request.prompt, request.locate_text)
        await self._backend.prepare_inputs(engine, prompt, request.page.image)

    def _started(self) -> AsyncEngineLike:
        if self._engine is None:
            raise EngineError("the vllm engine is not started (or already closed)")
        return self._engine

    async def infer(self, request: PageRequest) -> EngineOutput:
        engine = self._started()
        prompt = build_prompt(request.prompt, request.locate_text)
        request_id = request.request_id
        if request_id in self._inflight:
            # vLLM would reject the duplicate, and an abort by this id would hit both.
            raise EngineError(f"page request {request_id} is already running")
        self._inflight.add(request_id)
        # The page's text is made as its sampling parameters say, even if set_decoding()
        # changes them while it runs.
        sampling, detokenize, max_tokens = self._sampling, self._detokenize, self._max_tokens
        try:
            final = await self._run_request(
                engine, request_id, prompt, request.page.image, sampling
            )
        except asyncio.CancelledError:
            # Revoked, shut down, or past the page deadline (the caller's: see base.py).
            await self._abort(engine, request_id)
            raise
        except OcrError:
            raise
        except Exception as exc:
            # vLLM already aborted the request on its way out; repeat it in case the
            # failure came before vLLM had it.
            await self._abort(engine, request_id)
            raise EngineError(
                f"vLLM failed page {request_id}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            self._inflight.discard(request_id)
        if final is None or not getattr(final, "outputs", None):
            raise EngineError(f"vLLM returned no output for page {request_id}")
        return await self._to_output(final, request, detokenize, max_tokens)

    def _page_text(
        self, completion: Any, request: PageRequest, detokenize: Detokenize
    ) -> tuple[str, PageText]:
        if detokenize is Detokenize.FINAL:
            # vLLM left the text empty (detokenize=False): one decode of the whole page,
            # without the tokenizer's space clean-up, which vLLM's incremental decoding
            # never applies either (the same text for valid UTF-8; see bench/README.md).
            ids = list(completion.token_ids or ())
            text = ""
            if ids:
                text = str(
                    self._tokenizer.decode(
                        ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
                    )
                )
        else:
            text = str(completion.text or "")
        raw = strip_eos(text)
        crop = self._settings.artifacts_uri is not None
        return raw, deepseek_page_text(raw, request.page, crop_figures=crop)

    async def _to_output(
        self, final: Any, request: PageRequest, detokenize: Detokenize, max_tokens: int
    ) -> EngineOutput:
        completion = final.outputs[0]
        output_tokens = len(completion.token_ids or ())
        prompt_tokens = len(getattr(final, "prompt_token_ids", None) or ())
        # Decoding up to max_tokens ids, regexes over the text, and PNG figure crops when a
        # store is configured: off the event loop, which is busy feeding the engine.
        convert = functools.partial(self._page_text, completion, request, detokenize)
        began = time.perf_counter()
        try:
            raw, page_text = await asyncio.get_running_loop().run_in_executor(None, convert)
        except Exception as exc:
            raise EngineError(
                f"post-processing page {request.page.page} failed: {type(exc).__name__}: {exc}"
            ) from exc
        reason, truncated = classify_finish(
            completion.finish_reason,
            raw,
            output_tokens=output_tokens,
            max_tokens=max_tokens,
        )
        postprocess_ms = (time.perf_counter() - began) * 1000.0
        self._pages_total += 1
        self._prompt_tokens_total += prompt_tokens
        self._output_tokens_total += output_tokens
        return EngineOutput(
            markdown=page_text.markdown,
            text=page_text.text,
            blocks=page_text.blocks,
            finish_reason=reason,
            truncated=truncated,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            raw_text=raw,
            postprocess_ms=postprocess_ms,
            figures=page_text.figures,
        )

    # -- health and stats ---------------------------------------------------------------

    def health(self) -> EngineHealth:
        engine = self._engine
        if engine is None:
            if self._closed:
                return EngineHealth(alive=False, reason="vLLM engine closed")
            return EngineHealth(alive=True, reason="not started")
        if engine.errored:
            error = engine.dead_error
            reason = f"vLLM engine core is dead: {type(error).__name__}: {error}"
            return EngineHealth(alive=False, reason=reason[:MAX_HEALTH_REASON])
        return EngineHealth(alive=True)

    def stats(self) -> EngineStats:
        sink = self._sink
        inflight = len(self._inflight)
        if inflight == 0:
            # vLLM reports only when it steps: once idle, its last numbers are stale.
            running, waiting, kv_usage = 0, 0, 0.0
        elif sink.records:
            running, waiting, kv_usage = sink.running, sink.waiting, sink.kv_cache_usage
        else:
            # No scheduler numbers yet: our own count of pages handed to vLLM.
            running = min(inflight, self._settings.max_num_seqs)
            waiting, kv_usage = inflight - running, 0.0
        return EngineStats(
            running=running,
            waiting=waiting,
            kv_cache_usage=kv_usage,
            prompt_tokens_total=self._prompt_tokens_total,
            output_tokens_total=self._output_tokens_total,
            pages_total=self._pages_total,
            extra={
                "inflight": float(inflight),
                "preemptions_total": float(sink.preemptions_total),
                "steps_total": float(sink.steps_total),
                "generation_tokens_total": float(sink.generation_tokens_total),
                "aborted_total": float(self._aborted_total),
                "start_seconds": round(self.start_seconds, 3),
            },
        )
