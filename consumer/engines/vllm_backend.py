"""What touches the vllm package itself, and where its engine core may run.

`VllmBackend` is the seam between `VllmEngine` and vLLM: `RealVllm` imports vllm 0.26 on
first use (so `consumer.engines.vllm` imports on machines without vLLM or torch) and tests
pass a fake. `fork_poisoned` / `spawn_expected` decide whether vLLM may fork its engine
core from this process.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from consumer.engines import deepseek_modes, deepseek_pixels

MP_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"
FINISHED_KEPT = 4096  # finished pages' timings kept for benchmarks (a bounded history)


@dataclass(frozen=True, slots=True)
class FinishedTimes:
    """Where one finished request spent its time inside vLLM, in seconds, as vLLM's own
    `FinishedRequestStats` says: `e2e` from its arrival in the frontend to the frontend
    seeing its last token; `queued` waiting for the scheduler; `prefill` from scheduling to
    the first token (the vision encoder and the prompt's prefill chunks); `decode` from the
    first token to the last."""

    request_id: str
    e2e: float
    queued: float
    prefill: float
    decode: float
    prompt_tokens: int
    output_tokens: int


class StatsSink:
    """The scheduler's latest numbers, written by vLLM's stat-logger hook on the event loop
    after each engine step (so reads need no lock), plus counters over the engine's life."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.preemptions_total = 0
        self.records = 0
        # Engine steps seen and tokens they decoded: their rates say how long a step takes
        # and how full it was (the decoding benchmark's timeline).
        self.steps_total = 0
        self.generation_tokens_total = 0
        # The latest finished requests' timings, newest last (benchmarks read them).
        self.finished: deque[FinishedTimes] = deque(maxlen=FINISHED_KEPT)

    def record(
        self, *, running: int, waiting: int, kv_cache_usage: float, preempted: int = 0
    ) -> None:
        self.running = running
        self.waiting = waiting
        self.kv_cache_usage = min(max(kv_cache_usage, 0.0), 1.0)
        self.preemptions_total += preempted
        self.records += 1

    def record_step(self, generation_tokens: int) -> None:
        self.steps_total += 1
        self.generation_tokens_total += generation_tokens

    def record_finished(self, times: FinishedTimes) -> None:
        self.finished.append(times)


class AsyncEngineLike(Protocol):
    """The part of vLLM's `AsyncLLM` this engine uses."""

    def generate(
        self, prompt: Any, sampling_params: Any, request_id: str
    ) -> AsyncGenerator[Any, None]: ...

    async def abort(self, request_id: str) -> None: ...

    def get_tokenizer(self) -> Any: ...

    def shutdown(self) -> None: ...

    # vLLM sets these itself when its engine core process dies or its output handler ends;
    # from then on every request fails with EngineDeadError and only a new engine helps.
    @property
    def errored(self) -> bool: ...

    @property
    def dead_error(self) -> BaseException: ...


class VllmBackend(Protocol):
    """Everything that touches the vllm package; `RealVllm` in production, fakes in tests."""

    @property
    def version(self) -> str: ...

    def create_engine(self, engine_args: dict[str, Any], sink: StatsSink) -> AsyncEngineLike:
        """Build and start the engine (blocking, minutes); `sink` receives scheduler stats."""
        ...

    def sampling_params(self, params: dict[str, Any]) -> Any: ...

    async def prepare_inputs(self, engine: AsyncEngineLike, prompt: str, image: Image.Image) -> Any:
        """The prompt as `generate()` takes it, its image already processed off the loop."""
        ...

    def activate_mode(self, mode: str) -> None: ...

    def release_mode(self, mode: str) -> None: ...


class RealVllm:
    """vllm 0.26 (the version pinned by the `gpu` extra), imported on first use."""

    @property
    def version(self) -> str:
        try:
            import vllm
        except ImportError:
            return ""
        return str(vllm.__version__)

    def create_engine(self, engine_args: dict[str, Any], sink: StatsSink) -> AsyncEngineLike:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.loggers import StatLoggerBase

        class SinkStatLogger(StatLoggerBase):  # type: ignore[misc]
            # A per-engine logger: vLLM builds one per engine core with (config, index).
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                if iteration_stats is not None:
                    sink.record_step(int(iteration_stats.num_generation_tokens))
                    for done in getattr(iteration_stats, "finished_requests", ()):
                        sink.record_finished(finished_times(done))
                if scheduler_stats is None:
                    return
                preempted = getattr(iteration_stats, "num_preempted_reqs", 0) or 0
                sink.record(
                    running=int(scheduler_stats.num_running_reqs),
                    waiting=int(scheduler_stats.num_waiting_reqs),
                    kv_cache_usage=float(scheduler_stats.kv_cache_usage),
                    preempted=int(preempted),
                )

            def log_engine_initialized(self) -> None:
                pass

        # The model class for the uint8 pixel path, as VllmEngine set its variable; vLLM's
        # plugin hook does the same in the engine core, but runs once per process.
        deepseek_pixels.apply_from_env()
        args = AsyncEngineArgs(**engine_args)
        engine: AsyncEngineLike = AsyncLLM.from_engine_args(args, stat_loggers=[SinkStatLogger])
        return engine

    def sampling_params(self, params: dict[str, Any]) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = dict(params)
        params["output_kind"] = RequestOutputKind[str(params["output_kind"]).upper()]
        return SamplingParams(**params)

    async def prepare_inputs(self, engine: AsyncEngineLike, prompt: str, image: Image.Image) -> Any:
        mm_data = {"image": image}
        renderer = getattr(engine, "renderer", None)
        # The same call vLLM's own input processor makes for a text prompt with an image,
        # but on the renderer's thread pool (renderer_num_workers threads) instead of on
        # the event loop. A private method of vllm 0.26: when it is gone, fall back to the
        # plain prompt (correct, only slower).
        process = getattr(renderer, "_process_multimodal_async", None)
        if process is None:
            return {"prompt": prompt, "multi_modal_data": mm_data}
        inputs = await process(prompt, mm_data, None, None, None)
        inputs["prompt"] = prompt
        return inputs

    def activate_mode(self, mode: str) -> None:
        deepseek_modes.activate(mode)

    def release_mode(self, mode: str) -> None:
        deepseek_modes.release(mode)


def finished_times(stats: Any) -> FinishedTimes:
    """`FinishedTimes` from vLLM 0.26's `FinishedRequestStats` (missing fields read 0)."""

    def seconds(name: str) -> float:
        return float(getattr(stats, name, 0.0) or 0.0)

    return FinishedTimes(
        request_id=str(getattr(stats, "request_id", "") or ""),
        e2e=seconds("e2e_latency"),
        queued=seconds("queued_time"),
        prefill=seconds("prefill_time"),
        decode=seconds("decode_time"),
        prompt_tokens=int(getattr(stats, "num_prompt_tokens", 0) or 0),
        output_tokens=int(getattr(stats, "num_generation_tokens", 0) or 0),
    )


def fork_poisoned() -> bool:
    """True when a forked child of this process could not use CUDA.

    torch.cuda.is_available() (without PYTORCH_NVML_BASED_CUDA_CHECK=1) initialises the
    CUDA driver here and marks every later fork as unable to use CUDA, yet
    torch.cuda.is_initialized() stays False, so vLLM forks its engine core anyway and the
    core dies with "Cannot re-initialize CUDA in forked subprocess" (seen on the H100 host).
    torch tells only inside a forked child, so ask a throw-away one.
    """
    torch = sys.modules.get("torch")  # never import torch just to ask
    if torch is None or not hasattr(os, "fork"):
        return False
    try:
        with warnings.catch_warnings():
            # "multi-threaded process, fork() may deadlock": the child only reads a flag.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        return False
    if pid == 0:  # the child: one flag, then out without running any cleanup
        try:
            code = 1 if torch.cuda._is_in_bad_fork() else 0
        except BaseException:
            code = 0
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 1


def spawn_expected() -> bool:
    """Whether vLLM will spawn (not fork) its engine core: then module patches made here do
    not reach it, and only the vLLM plugin can set the resolution mode there."""
    if os.environ.get(MP_METHOD_ENV) == "spawn":
        return True
    torch = sys.modules.get("torch")  # never import torch just to ask
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:
        return False
