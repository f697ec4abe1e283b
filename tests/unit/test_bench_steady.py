"""The steady-state benchmark's parts: the closed loop and its window, the per-page stage
join across vLLM's two processes, the torch-trace and py-spy summaries, and one engine
phase end to end on the fake vLLM."""

from __future__ import annotations

import asyncio
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.closed_loop import ClosedLoop, Completion, SteadyWindow
from bench.gpu_trace import summarise, union_length
from bench.mixed_pages import KINDS, mixed_stream
from bench.pyspy_summary import CORE_STAGES, classify, parse_collapsed
from bench.steady import engine_phase, staggered_tokens
from bench.steady_pipeline import allowed_outstanding
from bench.vllm_probe import FrontendTimes, ProbedVllm, page_stages, stage_table
from consumer.engines.vllm import VllmEngine
from consumer.engines.vllm_backend import FinishedTimes, StatsSink, finished_times
from tests.unit.test_vllm_engine import FakeAsyncLLM, FakeBackend, make_settings

# -- the window ---------------------------------------------------------------------------


def test_window_times_only_the_completions_after_the_warm_up() -> None:
    window = SteadyWindow(warmup=2, measure=4)
    # One completion a second from t=1; the window runs from the 2nd (t=2) to the 6th (t=6).
    for second in range(1, 9):
        window.add(Completion(str(second), submitted=second - 0.5, finished=float(second),
                              output_tokens=100))  # fmt: skip
    figures = window.figures()
    assert window.opened_at == 2.0 and window.closed_at == 6.0
    assert figures["measured_pages"] == 4 and not figures["partial"]
    assert figures["pages_per_s"] == 1.0 and figures["output_tokens_per_s"] == 100.0
    assert figures["latency_p50_s"] == 0.5
    assert len(window.completions) == 6  # nothing is kept once the window has closed


def test_a_window_cut_short_says_so_and_counts_failures() -> None:
    window = SteadyWindow(warmup=1, measure=10)
    window.add(Completion("a", 0.0, 1.0))
    window.add(Completion("b", 0.0, 2.0, ok=False, error="PAGE_TIMEOUT"))
    window.add(Completion("c", 1.0, 3.0))
    figures = window.figures()
    assert figures["partial"] and figures["measured_pages"] == 2
    assert figures["errors"] == {"PAGE_TIMEOUT": 1}
    assert figures["pages_per_s"] == 0.5  # one good page over the two seconds from a to c


# -- the loop -----------------------------------------------------------------------------


async def test_closed_loop_keeps_n_in_flight_and_stops_when_the_window_closes() -> None:
    latency = 0.02
    submitted: list[int] = []
    loop: ClosedLoop

    async def submit(index: int) -> Completion:
        submitted.append(index)
        assert loop.outstanding <= 4
        began = asyncio.get_running_loop().time()
        await asyncio.sleep(latency)
        return Completion(str(index), began, asyncio.get_running_loop().time())

    loop = ClosedLoop(submit, in_flight=4, warmup=4, measure=40,
                      clock=asyncio.get_running_loop().time)  # fmt: skip
    window = await loop.run()
    figures = window.figures()
    assert loop.most_outstanding == 4
    assert figures["measured_pages"] == 40 and not figures["partial"]
    # Four lanes of 20 ms each: about 200 pages/s (the event loop adds a little).
    assert 120 < figures["pages_per_s"] <= 4 / latency * 1.05
    # Every lane stops at the close: no more than one page a lane was submitted beyond it.
    assert len(submitted) <= 44 + 4


async def test_after_window_runs_while_the_load_is_still_on() -> None:
    running_during_hook: list[int] = []
    loop: ClosedLoop

    async def submit(index: int) -> Completion:
        await asyncio.sleep(0.01)
        return Completion(str(index), 0.0, float(index))

    async def hook() -> str:
        await asyncio.sleep(0.05)
        running_during_hook.append(loop.outstanding)
        return "profiled"

    loop = ClosedLoop(submit, in_flight=3, warmup=3, measure=6, after_window=hook)
    await loop.run()
    assert loop.after_window_result == "profiled"
    assert running_during_hook == [3]


async def test_a_failing_submitter_fills_the_window_with_counted_failures() -> None:
    async def submit(index: int) -> Completion:
        await asyncio.sleep(0)
        raise RuntimeError("engine gone")

    loop = ClosedLoop(submit, in_flight=2, warmup=1, measure=5)
    figures = (await loop.run()).figures()
    assert figures["errors"] == {"RuntimeError": 5}
    assert figures["pages_per_s"] == 0.0


async def test_the_deadline_ends_a_window_that_cannot_close() -> None:
    async def submit(index: int) -> Completion:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    loop = ClosedLoop(submit, in_flight=2, warmup=1, measure=5, deadline_s=0.05)
    window = await loop.run()
    assert loop.deadline_hit and window.figures()["partial"]


def test_first_generation_lengths_are_staggered_then_fixed() -> None:
    lengths = [staggered_tokens(index, 4, 1000) for index in range(6)]
    assert lengths == [250, 500, 750, 1000, 1000, 1000]
    assert staggered_tokens(0, 256, 300) == 16  # never below a handful of tokens


def test_pipeline_ramp_reaches_the_target_linearly() -> None:
    assert allowed_outstanding(336, 0.0, 40.0) == 1
    assert allowed_outstanding(336, 20.0, 40.0) == 168
    assert allowed_outstanding(336, 50.0, 40.0) == 336
    assert allowed_outstanding(336, 0.0, 0.0) == 336


def test_mixed_stream_cycles_every_kind() -> None:
    pages = mixed_stream(10)
    sizes = {page.image.size for page in pages}
    assert len(pages) == 10 and len(sizes) >= 4  # portrait, letter, landscape, 16:9
    assert len(KINDS) == 5


# -- where a page's time goes -------------------------------------------------------------


def test_page_stages_split_the_latency_between_the_processes() -> None:
    frontend = FrontendTimes(prepare_began=10.0, prepare_ended=10.05,
                             generate_began=10.06, generate_ended=12.0)  # fmt: skip
    core = FinishedTimes("r", e2e=1.9, queued=0.1, prefill=0.2, decode=1.5,
                         prompt_tokens=900, output_tokens=1000)  # fmt: skip
    row = page_stages("r", 10.0, 12.01, frontend, core, postprocess_ms=5.0)
    assert row is not None
    assert row["preprocess"] == pytest.approx(50.0)
    assert row["frontend_in"] == pytest.approx(1000 * (1.94 - 1.9))
    assert row["to_core"] == pytest.approx(1000 * (1.9 - 1.8))
    assert row["decode"] == pytest.approx(1500.0)
    assert row["total"] == pytest.approx(2010.0)
    # What the stages leave of the latency is kept, not lost.
    assert sum(v for k, v in row.items() if k != "total") == pytest.approx(row["total"])
    assert page_stages("r", 0.0, 1.0, frontend, None, 0.0) is None
    table = stage_table([row, row])
    share = table["stages"]["decode"]["share"]
    assert table["pages"] == 2 and share == pytest.approx(1500 / 2010, abs=1e-3)


def test_finished_times_read_vllms_finished_request_stats() -> None:
    stats = types.SimpleNamespace(
        request_id="task/1/0", e2e_latency=2.5, queued_time=0.1, prefill_time=0.3,
        decode_time=2.0, num_prompt_tokens=912, num_generation_tokens=1000,
    )  # fmt: skip
    times = finished_times(stats)
    assert times == FinishedTimes("task/1/0", 2.5, 0.1, 0.3, 2.0, 912, 1000)
    sink = StatsSink()
    sink.record_finished(times)
    assert list(sink.finished) == [times]
    assert finished_times(types.SimpleNamespace()).request_id == ""  # fields missing: zeros


# -- the GPU trace ------------------------------------------------------------------------


def _x(cat: str, name: str, ts: float, dur: float, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": args}


def test_trace_kernels_are_filed_under_the_scope_that_launched_them() -> None:
    events = [
        # A mixed step (1 page's prompt of 900 tokens + 3 decoding) and a pure decode step.
        _x("user_annotation", "execute_context_1(900)_generation_3(3)", 0, 1000),
        _x("user_annotation", "ocr: vision encoder", 10, 100),
        _x("user_annotation", "gpu_model_runner: forward", 200, 300),
        _x("user_annotation", "gpu_model_runner: sample", 600, 100),
        _x("user_annotation", "ocr: n-gram apply", 620, 50),
        _x("user_annotation", "execute_context_0(0)_generation_4(4)", 1000, 1000),
        _x("user_annotation", "gpu_model_runner: forward", 1100, 300),
        _x("cuda_runtime", "cudaLaunchKernel", 20, 5, correlation=1),
        _x("cuda_runtime", "cudaGraphLaunch", 250, 5, correlation=2),
        _x("cuda_runtime", "cudaLaunchKernel", 630, 5, correlation=3),
        _x("cuda_runtime", "cudaLaunchKernel", 680, 5, correlation=4),
        _x("cuda_runtime", "cudaGraphLaunch", 1150, 5, correlation=5),
        _x("cuda_runtime", "cudaLaunchKernel", 1500, 5, correlation=6),
        _x("kernel", "sam_attention", 100, 400, correlation=1),  # encoder: 0.4 ms
        _x("kernel", "fused_moe_kernel", 500, 600, correlation=2),  # mixed forward 0.6 ms
        _x("kernel", "index_put", 1100, 20, correlation=3),  # n-gram
        _x("kernel", "argmax", 1120, 30, correlation=4),  # sampling
        _x("kernel", "fused_moe_kernel", 1200, 200, correlation=5),  # decode forward 0.2 ms
        _x("gpu_memcpy", "Memcpy HtoD", 1600, 50, correlation=6),  # in the step, no scope
        _x("kernel", "stray", 2500, 100, correlation=99),  # no launch in the trace
    ]
    summary = summarise(events, pages_per_s=500.0)
    stages = summary["stages_ms"]
    assert stages["vision encoder"] == pytest.approx(0.4)
    assert stages["prefill"] == pytest.approx(0.4)  # 0.6 ms less the 0.2 ms pure decode
    assert stages["decode"] == pytest.approx(0.4)  # 0.2 in each step
    assert stages["n-gram rule"] == pytest.approx(0.02)
    assert stages["sampling"] == pytest.approx(0.03)
    assert stages["other in step"] == pytest.approx(0.05)
    assert stages["outside steps"] == pytest.approx(0.1)
    assert summary["steps"] == 2 and summary["pure_decode_steps"] == 1
    assert summary["prompt_tokens"] == 900 and summary["generation_tokens"] == 7
    # Busy: 100-1100 (encoder then forward), 1100-1150, 1200-1400, 1600-1650 of 0-2000 us.
    assert summary["gpu_busy"] == pytest.approx((1000 + 50 + 200 + 50) / 2000)
    assert summary["wall_ms_per_page"] == pytest.approx(2.0)


def test_union_length_merges_overlaps() -> None:
    assert union_length([(0, 10), (5, 15), (20, 25)]) == 20


# -- py-spy -------------------------------------------------------------------------------


def test_pyspy_stacks_are_filed_by_the_first_matching_stage() -> None:
    text = "\n".join(
        [
            "run (v1/engine/core.py:1);step (v1/core/sched/scheduler.py:2) 30",
            "run (v1/engine/core.py:1);apply (consumer/engines/ngram_processor.py:5);"
            "banned (consumer/engines/ngram_ban.py:9) 10",
            "run (v1/engine/core.py:1);busy_loop (v1/engine/core.py:7) 40",
            "thread (threading.py:1);mystery (x.py:1) 20",
        ]
    )
    summary = classify(parse_collapsed(text), CORE_STAGES)
    assert summary["samples"] == 100
    assert summary["shares"] == {
        "n-gram rule": 0.1, "scheduler": 0.3, "engine core loop, other": 0.4, "other": 0.2,
    }  # fmt: skip


# -- one engine phase on the fake vLLM ----------------------------------------------------


@dataclass
class ReportingLLM(FakeAsyncLLM):
    """The fake AsyncLLM, reporting each finished page to the stat sink as vLLM does."""

    sink: StatsSink | None = None
    tokens: list[int] = field(default_factory=list)

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> Any:
        self.tokens.append(sampling_params["max_tokens"])
        async for output in super().generate(prompt, sampling_params, request_id):
            assert self.sink is not None
            self.sink.record_finished(
                FinishedTimes(request_id, self.delay_s, 0.0, 0.001, self.delay_s - 0.001, 912, 40)
            )
            yield output


@dataclass
class ReportingBackend(FakeBackend):
    def create_engine(self, engine_args: dict[str, Any], sink: StatsSink) -> FakeAsyncLLM:
        engine = super().create_engine(engine_args, sink)
        assert isinstance(engine, ReportingLLM)
        engine.sink = sink
        return engine


async def test_engine_phase_times_the_window_and_accounts_every_page() -> None:
    llm = ReportingLLM(delay_s=0.01)
    probe = ProbedVllm(ReportingBackend(engine=llm))
    settings = make_settings(max_tokens=1000)
    engine = VllmEngine(settings, backend=probe, warmup_pages=0)
    await engine.start()
    figures = await engine_phase(
        engine, settings, probe, mixed_stream(5), length=1000, in_flight=4, warmup=4,
        measure=24, deadline_s=30.0, gpu=None,
    )  # fmt: skip
    assert figures["measured_pages"] == 24 and not figures["partial"]
    assert figures["errors"] == {} and figures["most_outstanding"] == 4
    assert llm.tokens[:4] == [250, 500, 750, 1000]  # the staggered first generation
    assert set(llm.tokens[4:]) == {1000}
    assert figures["stages"]["pages"] == 24
    assert figures["stages"]["stages"]["decode"]["mean_ms"] == pytest.approx(9.0, abs=0.5)
    # The fake decodes 40 tokens a page: 9 ms over 39 steps after the first token.
    assert figures["decode_ms_per_token"] == pytest.approx(9.0 / 39, abs=0.02)
    await engine.close()


async def test_after_window_is_cut_at_the_deadline_too() -> None:
    async def submit(index: int) -> Completion:
        await asyncio.sleep(0.001)
        return Completion(str(index), 0.0, float(index))

    async def hook() -> str:
        await asyncio.sleep(3600)
        return "never"

    loop = ClosedLoop(submit, in_flight=2, warmup=1, measure=3, deadline_s=0.2, after_window=hook)
    window = await loop.run()
    assert window.is_closed and not loop.deadline_hit
    assert "cut at the deadline" in loop.after_window_result["error"]
