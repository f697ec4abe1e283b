"""Where a page's time goes across the two vLLM processes, for the steady-state benchmark.

`ProbedVllm` is a `VllmBackend` (consumer/engines/vllm_backend.py) that delegates to
another one and records, per page request:

- in the frontend (this process): when the image preprocessing started and ended (it runs
  on vLLM's renderer threads and includes the wait for a free one), and when `generate()`
  was called and returned its final output;
- in the engine core: vLLM's own timings of the finished request (queued, prefill, decode,
  its end-to-end time), which `StatsSink.finished` collects.

`page_stages` joins the two into one row a page; `stage_table` sums rows into the table
the benchmark reports. With `profile_dir`, the engine is built with vLLM's torch profiler
configured (it starts only when asked, `start_profile()`), and the step annotations that
name each step's prefill and decode token counts.

Not measured here: how much of a stage is CPU and how much GPU (the torch trace and py-spy
profiles say that, bench/gpu_trace.py), and time before `infer()` (the pipeline's fetch
and render, which its own timing events carry).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from consumer.engines.vllm_backend import AsyncEngineLike, FinishedTimes, StatsSink, VllmBackend

# record_function scopes in vLLM's model runner: only when this is set at engine start.
SCOPES_ENV = "VLLM_CUSTOM_SCOPES_FOR_PROFILING"


@dataclass(slots=True)
class FrontendTimes:
    """perf_counter seconds of one page request's frontend milestones (0.0: not seen)."""

    prepare_began: float = 0.0
    prepare_ended: float = 0.0
    generate_began: float = 0.0
    generate_ended: float = 0.0


@dataclass
class ProbedVllm:
    """A VllmBackend that records per-page frontend times (see the module docstring)."""

    inner: VllmBackend
    profile_dir: str | None = None
    clock: Callable[[], float] = time.perf_counter
    frontend: dict[str, FrontendTimes] = field(default_factory=dict)
    engine: Any = None  # vLLM's AsyncLLM, once created (start_profile / stop_profile)
    sink: StatsSink | None = None
    _prepared: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.inner.version

    def create_engine(self, engine_args: dict[str, Any], sink: StatsSink) -> AsyncEngineLike:
        args = dict(engine_args)
        if self.profile_dir is not None:
            args["profiler_config"] = profiler_config(self.profile_dir)
            os.environ[SCOPES_ENV] = "1"
        self.sink = sink
        self.engine = self.inner.create_engine(args, sink)
        return ProbedEngine(self.engine, self)

    def sampling_params(self, params: dict[str, Any]) -> Any:
        return self.inner.sampling_params(params)

    async def prepare_inputs(self, engine: AsyncEngineLike, prompt: str, image: Image.Image) -> Any:
        inner_engine = engine.inner if isinstance(engine, ProbedEngine) else engine
        began = self.clock()
        inputs = await self.inner.prepare_inputs(inner_engine, prompt, image)
        self._prepared[id(inputs)] = (began, self.clock())
        return inputs

    def activate_mode(self, mode: str) -> None:
        self.inner.activate_mode(mode)

    def release_mode(self, mode: str) -> None:
        self.inner.release_mode(mode)

    def claim_prepared(self, inputs: Any, request_id: str) -> FrontendTimes:
        times = FrontendTimes()
        prepared = self._prepared.pop(id(inputs), None)
        if prepared is not None:
            times.prepare_began, times.prepare_ended = prepared
        self.frontend[request_id] = times
        return times

    def finished_by_id(self) -> dict[str, FinishedTimes]:
        return {times.request_id: times for times in (self.sink.finished if self.sink else ())}


def profiler_config(directory: str) -> Any:
    """vLLM's ProfilerConfig for a short torch trace of the engine core's GPU work: no
    Python stacks or shapes (they multiply the trace's size), no frontend trace (py-spy
    covers this process)."""
    from vllm.config import ProfilerConfig

    return ProfilerConfig(
        profiler="torch",
        torch_profiler_dir=directory,
        torch_profiler_with_stack=False,
        torch_profiler_record_shapes=False,
        torch_profiler_use_gzip=True,
        # Its per-kernel table takes the core many seconds to build; gpu_trace has its own.
        torch_profiler_dump_cuda_time_total=False,
        ignore_frontend=True,
    )


class ProbedEngine:
    """vLLM's AsyncLLM with `generate()` timed; everything else passes through."""

    def __init__(self, inner: Any, probe: ProbedVllm) -> None:
        self.inner = inner
        self._probe = probe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def generate(
        self, prompt: Any, sampling_params: Any, request_id: str
    ) -> AsyncGenerator[Any, None]:
        times = self._probe.claim_prepared(prompt, request_id)
        times.generate_began = self._probe.clock()
        stream = self.inner.generate(prompt, sampling_params, request_id=request_id)
        try:
            async for output in stream:
                yield output
        finally:
            await stream.aclose()
            times.generate_ended = self._probe.clock()

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def get_tokenizer(self) -> Any:
        return self.inner.get_tokenizer()

    def shutdown(self) -> None:
        self.inner.shutdown()

    @property
    def errored(self) -> bool:
        return bool(self.inner.errored)

    @property
    def dead_error(self) -> BaseException:
        error: BaseException = self.inner.dead_error
        return error


# Stages of one page, milliseconds, in the order a page meets them.
STAGES = (
    "preprocess",  # image to tensors on vLLM's renderer threads, waiting for one included
    "frontend_in",  # generate() to the request's arrival time in vLLM, and back out
    "to_core",  # arrival to the engine core's QUEUED event: serialisation, transfer
    "queued",  # waiting for the scheduler
    "prefill",  # scheduled to first token: vision encoder and prompt prefill chunks
    "decode",  # first token to last
    "postprocess",  # detokenisation and our Markdown/blocks parsing (an executor thread)
)


def page_stages(
    request_id: str,
    submitted: float,
    finished: float,
    frontend: FrontendTimes | None,
    core: FinishedTimes | None,
    postprocess_ms: float,
) -> dict[str, float] | None:
    """One page's stages in ms (STAGES, plus `other` and `total`), or None when either
    process did not report it. `other` is what the stages leave of the page's latency."""
    if frontend is None or core is None or frontend.generate_ended <= 0:
        return None
    in_generate = frontend.generate_ended - frontend.generate_began
    in_core = core.queued + core.prefill + core.decode
    row = {
        "preprocess": 1000 * max(0.0, frontend.prepare_ended - frontend.prepare_began),
        "frontend_in": 1000 * max(0.0, in_generate - core.e2e),
        "to_core": 1000 * max(0.0, core.e2e - in_core),
        "queued": 1000 * core.queued,
        "prefill": 1000 * core.prefill,
        "decode": 1000 * core.decode,
        "postprocess": postprocess_ms,
    }
    total = 1000 * (finished - submitted)
    row["other"] = max(0.0, total - sum(row.values()))
    row["total"] = total
    return row


def stage_table(rows: Iterable[dict[str, float]]) -> dict[str, Any]:
    """Mean and median per stage over the pages, and each stage's share of the mean
    latency."""
    rows = list(rows)
    if not rows:
        return {"pages": 0}
    names = [*STAGES, "other", "total"]
    means = {name: statistics.fmean(row[name] for row in rows) for name in names}
    total = means["total"] or 1.0
    return {
        "pages": len(rows),
        "stages": {
            name: {
                "mean_ms": round(means[name], 2),
                "p50_ms": round(statistics.median(row[name] for row in rows), 2),
                "share": round(means[name] / total, 4),
            }
            for name in names
        },
    }
