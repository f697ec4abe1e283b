"""`ocr-bench steady`: pages/s in the steady state, for the engine and through the pipeline.

    ocr-bench steady [--lengths 300,1000] [--in-flight 256] [--measure 1024]
                     [--pipeline-lengths 1000] [--pyspy PATH] [--torch-profile] [settings...]

A closed loop (bench/closed_loop.py) keeps N pages in flight over a stream of mixed
synthetic pages (bench/mixed_pages.py): each finished page submits the next. After a
warm-up of N pages the next `--measure` completions are timed: pages/s, output tokens/s,
p50/p95 page latency, and over the same window the engine's KV cache use, batch size,
generated tokens/s and the GPU's busy share (NVML), plus where each page's time went across
the frontend and the engine core (bench/vllm_probe.py).

The engine's first N pages decode staggered lengths (page i of N: (i+1)/N of the length),
so they end one after another and their successors arrive spread out, as in a stream;
without it every page of a closed loop would start and end in lock step for ever.

Phases run in this order on one started engine: for each output length, the engine at each
`--in-flight`, then (`--pipeline-lengths`) the same length through Kafka -> consumer ->
result topics, documents of 1 to 16 pages offered closed-loop so that the consumer's page
budget stays full, ramped in over the engine phase's p50 latency. The result file is
rewritten after every phase, so a run cut short keeps what it measured.

Profiles (vLLM only): `--pyspy` samples both processes for 8 s inside the first engine
phase's window and inside each pipeline phase's window (where the engine core ran slower:
bench/README.md); every phase also reports the CPU share of the frontend, the engine core
and the render workers, and the host's load (bench/samplers.py). `--torch-profile`
records the engine core's GPU timeline for 2 s after the first window closes (the load
still on) and files every kernel under its stage (bench/gpu_trace.py).

`--scripted-latency-s S --scripted-slots K` swaps the engine for a CPU stand-in that
decodes K pages at a time in S seconds each (bench/slot_engine.py): the pipeline's own
overhead, measured on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by path: python bench/steady.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.bench_engine import engine_core_pids, first_page
from bench.closed_loop import ClosedLoop, Completion
from bench.mixed_pages import PAGE_DPI, mixed_images, mixed_stream
from bench.ocr_bench import ENGINE_SETTINGS, bench_settings, device_name, result_path
from bench.pyspy_summary import CORE_STAGES, FRONTEND_STAGES, classify, parse_collapsed
from bench.samplers import Sampler, nvml_device_name, nvml_utilization
from bench.vllm_probe import ProbedVllm, page_stages, stage_table
from consumer.config import Settings
from consumer.engines.base import Engine, EngineOutput, PageRequest
from consumer.errors import OcrError
from consumer.page_image import PageImage
from consumer.settings import add_settings_arguments
from producer_tools import ToolError, run_cli

PYSPY_DELAY_S = 10.0  # into the window: the load is steady by then
PYSPY_SECONDS = 8
TORCH_PROFILE_S = 2.0
TRACE_WAIT_S = 120.0  # the engine core writes the trace when the profile stops
MIN_PHASE_S = 45.0  # a phase that cannot get this long is skipped, not started


# -- profiles -----------------------------------------------------------------------------


async def pyspy_record(pyspy: Path, pid: int, out_file: Path, seconds: int) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        str(pyspy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100",
        "--nonblocking", "--format", "raw", "--output", str(out_file),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await process.communicate()
    try:
        text = await asyncio.to_thread(out_file.read_text)
    except FileNotFoundError:
        return {"error": stderr.decode(errors="replace")[-400:]}
    return {"file": out_file.name, "stacks": parse_collapsed(text)}


async def pyspy_both(pyspy: Path, out_dir: Path, tag: str, opened: asyncio.Event) -> dict[str, Any]:
    """The frontend (this process) and the engine core, sampled together in the window."""
    await opened.wait()
    await asyncio.sleep(PYSPY_DELAY_S)
    cores = engine_core_pids()
    jobs = {
        "frontend": pyspy_record(
            pyspy, os.getpid(), out_dir / f"pyspy-frontend-{tag}.txt", PYSPY_SECONDS
        )
    }
    if cores:
        jobs["engine_core"] = pyspy_record(
            pyspy, cores[0], out_dir / f"pyspy-core-{tag}.txt", PYSPY_SECONDS
        )
    done = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
    result: dict[str, Any] = {}
    for name, record in done.items():
        stacks = record.pop("stacks", None)
        if stacks is not None:
            stages = FRONTEND_STAGES if name == "frontend" else CORE_STAGES
            record.update(classify(stacks, stages))
        result[name] = record
    return result


async def torch_profile(
    probe: ProbedVllm, out_dir: Path, tag: str, pages_per_s: float
) -> dict[str, Any]:
    from bench.gpu_trace import newest_trace, summarise_file

    engine = probe.engine
    before = newest_trace(out_dir)
    await engine.start_profile()
    await asyncio.sleep(TORCH_PROFILE_S)
    began = time.perf_counter()
    await engine.stop_profile()
    trace = None
    while time.perf_counter() - began < TRACE_WAIT_S:
        trace = newest_trace(out_dir)
        if trace is not None and trace != before:
            break
        await asyncio.sleep(1.0)
    if trace is None or trace == before:
        return {"error": f"no trace in {out_dir} {TRACE_WAIT_S:g} s after the profile stopped"}
    # One plain name (vLLM's carries its worker's name and a timestamp).
    kept = out_dir / f"torch-trace-{tag}.json.gz"
    await asyncio.to_thread(trace.replace, kept)
    summary = await asyncio.to_thread(summarise_file, kept, pages_per_s)
    summary["profiled_s"] = TORCH_PROFILE_S
    summary["export_s"] = round(time.perf_counter() - began, 1)
    return summary


# -- the engine phase ---------------------------------------------------------------------


def staggered_tokens(index: int, in_flight: int, length: int) -> int:
    """Output length of page `index`: the first generation ends one page after another."""
    if index >= in_flight:
        return length
    return max(16, round(length * (index + 1) / in_flight))


async def engine_phase(
    engine: Engine,
    settings: Settings,
    probe: ProbedVllm | None,
    pages: Sequence[PageImage],
    *,
    length: int,
    in_flight: int,
    warmup: int,
    measure: int,
    deadline_s: float,
    gpu: Callable[[], float | None] | None,
    pyspy: Path | None = None,
    profile_dir: Path | None = None,
    torch_trace: bool = False,
) -> dict[str, Any]:
    from consumer.engines.vllm import VllmEngine
    from consumer.engines.vllm_params import configured_decoding

    run = uuid.uuid4().hex[:6]
    vllm = engine if isinstance(engine, VllmEngine) else None
    decoding = configured_decoding(settings)
    outputs: dict[str, EngineOutput] = {}

    async def submit(index: int) -> Completion:
        request_id = f"steady-{run}/{index}/0"
        if vllm is not None:
            # Sampling parameters are read when infer() starts, before it awaits anything.
            vllm.set_decoding(
                ngram_processor=decoding[0], detokenize=decoding[1],
                max_tokens=staggered_tokens(index, in_flight, length),
            )  # fmt: skip
        began = time.perf_counter()
        try:
            output = await engine.infer(PageRequest(request_id, pages[index % len(pages)]))
        except OcrError as exc:
            return Completion(request_id, began, time.perf_counter(), ok=False, error=str(exc.code))
        outputs[request_id] = output
        return Completion(
            request_id, began, time.perf_counter(), output_tokens=output.output_tokens,
            prompt_tokens=output.prompt_tokens,
        )  # fmt: skip

    tag = f"L{length}-N{in_flight}"
    profile_task: asyncio.Task[dict[str, Any]] | None = None

    async def after_window() -> dict[str, Any]:
        assert probe is not None and profile_dir is not None
        figures = loop.window.figures()
        return await torch_profile(probe, profile_dir, tag, figures["pages_per_s"])

    loop = ClosedLoop(
        submit, in_flight=in_flight, warmup=warmup, measure=measure, deadline_s=deadline_s,
        after_window=after_window if (torch_trace and probe is not None and profile_dir) else None,
    )  # fmt: skip
    sampler = Sampler(engine, gpu)
    sampling = asyncio.create_task(sampler.run())
    if pyspy is not None and profile_dir is not None and vllm is not None:
        profile_task = asyncio.create_task(pyspy_both(pyspy, profile_dir, tag, loop.opened))
    began = time.perf_counter()
    try:
        window = await loop.run()
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    figures: dict[str, Any] = {"kind": "engine", "max_tokens": length, "in_flight": in_flight}
    figures.update(window.figures())
    figures.update(sampler.window(window.opened_at, window.closed_at or time.perf_counter()))
    figures["phase_s"] = round(time.perf_counter() - began, 1)
    figures["deadline_hit"] = loop.deadline_hit
    figures["most_outstanding"] = loop.most_outstanding
    if probe is not None:
        frontend, core = probe.frontend, probe.finished_by_id()
        rows = [
            page_stages(
                c.key, c.submitted, c.finished, frontend.get(c.key), core.get(c.key),
                outputs[c.key].postprocess_ms,
            )
            for c in window.in_window()
            if c.ok and c.key in outputs
        ]  # fmt: skip
        figures["stages"] = stage_table(row for row in rows if row is not None)
        decode = figures["stages"].get("stages", {}).get("decode")
        if decode and figures.get("output_tokens_per_page", 0) > 1:
            # A decoding page gets one token a step: this is the step time it saw.
            per_token = decode["mean_ms"] / (figures["output_tokens_per_page"] - 1)
            figures["decode_ms_per_token"] = round(per_token, 2)
    if profile_task is not None and not loop.opened.is_set():
        profile_task.cancel()
        figures["pyspy"] = {"error": "the window never opened"}
    elif profile_task is not None:
        try:
            figures["pyspy"] = await asyncio.wait_for(profile_task, PYSPY_SECONDS + 30)
        except Exception as exc:  # a profile is a bonus: never lose the phase to it
            figures["pyspy"] = {"error": f"{type(exc).__name__}: {exc}"}
    if loop.after_window_result is not None:
        figures["torch_profile"] = loop.after_window_result
    return figures


# -- running it ---------------------------------------------------------------------------


def git_commit() -> str | None:
    commit = os.environ.get("OCR_BENCH_COMMIT")
    if commit:
        return commit
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            check=False,
        )  # fmt: skip
    except OSError:
        return None
    return done.stdout.strip() or None


def parse_ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, comma-separated: {text!r}")
    return values


async def make_engine(
    settings: Settings, args: argparse.Namespace
) -> tuple[Engine, ProbedVllm | None, float]:
    if args.scripted_latency_s is not None:
        from bench.slot_engine import SlotEngine

        engine: Engine = SlotEngine(args.scripted_slots, args.scripted_latency_s)
        await engine.start()
        return engine, None, 0.0
    from consumer.engines.vllm import VllmEngine
    from consumer.engines.vllm_backend import RealVllm

    profile_dir = (
        str(args.profile_dir.resolve()) if args.torch_profile and args.profile_dir else None
    )
    probe = ProbedVllm(RealVllm(), profile_dir=profile_dir)
    vllm = VllmEngine(settings, backend=probe)
    began = time.perf_counter()
    await vllm.start()
    return vllm, probe, time.perf_counter() - began


async def run(
    args: argparse.Namespace, settings: Settings, write: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    clock_began = time.perf_counter()
    pages = mixed_stream(64)
    engine, probe, start_s = await make_engine(settings, args)
    result: dict[str, Any] = {
        "benchmark": "steady",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "engine": engine.identity.model_dump(mode="json"),
        "engine_start_s": round(start_s, 1),
        "settings": {name: _plain(getattr(settings, name)) for name in ENGINE_SETTINGS},
        "pages": "mixed synthetic: report, dense, table, figure, slide (bench/mixed_pages.py)",
        "phases": [],
    }
    if probe is not None:
        seconds = await first_page(engine, pages[0], args.first_page_timeout)
        result["first_page_s"] = None if seconds is None else round(seconds, 1)
    gpu = nvml_utilization() if probe is not None else None
    if args.scripted_latency_s is not None:
        result["device"] = "cpu (scripted)"
    else:
        # NVML names the card without initialising CUDA here (torch would).
        result["device"] = nvml_device_name() or device_name()
    profiled = False
    try:
        for length in args.lengths:
            engine_latency: float | None = None
            for in_flight in args.in_flight or [engine.suggested_inflight_pages]:
                remaining = args.deadline_s - (time.perf_counter() - clock_began)
                if remaining < MIN_PHASE_S:
                    result["phases"].append(
                        {
                            "kind": "engine",
                            "max_tokens": length,
                            "in_flight": in_flight,
                            "skipped": "no time left",
                        }
                    )
                    continue
                profile = not profiled
                figures = await engine_phase(
                    engine, settings, probe, pages, length=length, in_flight=in_flight,
                    warmup=args.warmup or in_flight, measure=args.measure,
                    deadline_s=remaining - args.reserve_s, gpu=gpu,
                    pyspy=args.pyspy if profile else None,
                    profile_dir=args.profile_dir, torch_trace=args.torch_profile and profile,
                )  # fmt: skip
                profiled = profiled or profile
                engine_latency = engine_latency or figures.get("latency_p50_s")
                result["phases"].append(figures)
                print(_line(figures), flush=True)
                write(result)
            if length in args.pipeline_lengths:
                remaining = args.deadline_s - (time.perf_counter() - clock_began)
                if remaining < MIN_PHASE_S:
                    result["phases"].append(
                        {"kind": "pipeline", "max_tokens": length, "skipped": "no time left"}
                    )
                    continue
                from bench.steady_pipeline import pipeline_phase

                pipeline_profile = None
                if args.pyspy is not None and args.profile_dir is not None and probe is not None:
                    pipeline_profile = functools.partial(
                        pyspy_both, args.pyspy, args.profile_dir, f"pipeline-L{length}"
                    )
                figures = await pipeline_phase(
                    engine, settings, mixed_images(), length=length,
                    warmup=args.pipeline_warmup, measure=args.measure,
                    ramp_s=args.ramp_s if args.ramp_s is not None else (engine_latency or 0.0),
                    deadline_s=remaining - args.reserve_s, gpu=gpu, dpi=PAGE_DPI,
                    profile=pipeline_profile,
                )  # fmt: skip
                engine_rate = next(
                    (p.get("pages_per_s") for p in result["phases"]
                     if p.get("kind") == "engine" and p.get("max_tokens") == length
                     and p.get("pages_per_s")), None,
                )  # fmt: skip
                if engine_rate:
                    figures["pipeline_over_engine"] = round(figures["pages_per_s"] / engine_rate, 3)
                result["phases"].append(figures)
                print(_line(figures), flush=True)
                write(result)
    finally:
        await engine.close()
    return result


def _line(figures: dict[str, Any]) -> str:
    keys = ("kind", "max_tokens", "in_flight", "pages_per_s", "output_tokens_per_s",
            "latency_p50_s", "latency_p95_s", "kv_cache_usage_mean", "gpu_busy_nvml_mean",
            "decode_ms_per_token", "measured_pages", "partial", "pipeline_over_engine",
            "cpu_frontend", "cpu_engine_core", "cpu_other_children",
            "host_load_1m_mean")  # fmt: skip
    return "steady " + " ".join(f"{key}={figures[key]}" for key in keys if key in figures)


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ocr-bench steady", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lengths",
        type=parse_ints,
        default=[1000],
        help="output tokens a page, each a phase (e.g. 300,1000)",
    )
    parser.add_argument(
        "--in-flight",
        type=parse_ints,
        default=None,
        help="pages in flight, each a phase (default: max_num_seqs)",
    )
    parser.add_argument(
        "--measure", type=int, default=1024, help="completions timed (default 1024)"
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="completions before the window (default: in-flight)"
    )
    parser.add_argument(
        "--pipeline-lengths",
        type=parse_ints,
        default=[],
        help="these lengths also through the pipeline",
    )
    parser.add_argument(
        "--pipeline-warmup",
        type=int,
        default=0,
        help="pipeline completions before its window (default: its page budget)",
    )
    parser.add_argument(
        "--ramp-s",
        type=float,
        default=None,
        help="pipeline ramp (default: the engine phase's p50 latency)",
    )
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=3600.0,
        help="whole run's time budget; later phases are skipped or cut",
    )
    parser.add_argument(
        "--reserve-s",
        type=float,
        default=20.0,
        help="kept from each phase's deadline for writing results",
    )
    parser.add_argument("--first-page-timeout", type=float, default=600.0)
    parser.add_argument(
        "--pyspy",
        type=Path,
        default=None,
        help="py-spy binary: profile both processes in the first window",
    )
    parser.add_argument(
        "--torch-profile",
        action="store_true",
        help="torch trace of the engine core after the first window",
    )
    parser.add_argument("--profile-dir", type=Path, default=None)
    parser.add_argument(
        "--scripted-latency-s", type=float, default=None, help="CPU stand-in engine: seconds a page"
    )
    parser.add_argument(
        "--scripted-slots", type=int, default=64, help="CPU stand-in engine: pages at a time"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--label", default="steady")
    parser.add_argument("--no-write", action="store_true")
    add_settings_arguments(parser, Settings)
    return parser


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    settings = bench_settings(args, settings)
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    path: list[Path] = []

    def write(result: dict[str, Any]) -> None:
        if args.no_write:
            return
        if not path:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            path.append(
                result_path(args.out_dir, result["date"][:10], result["device"], args.label)
            )
        path[0].write_text(json.dumps(result, indent=2) + "\n")

    try:
        result = await run(args, settings, write)
    except OcrError as exc:
        raise ToolError(str(exc)) from exc
    write(result)
    if path:
        print(f"wrote {path[0]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _main, argv, Settings)


if __name__ == "__main__":
    sys.exit(main())
