"""The engine half of `ocr-bench`: starting an engine for a benchmark, and timing pages
straight through it (see bench/ocr_bench.py for the command line)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import hashlib
import os
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consumer.config import Settings
from consumer.engines.base import Engine, EngineOutput, PageImage, PageRequest
from consumer.errors import OcrError
from consumer.settings import NgramProcessor
from schemas.common import ErrorCode
from schemas.request import PromptKind

STATS_INTERVAL_S = 0.5

# -- the engine benchmark -----------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _sample_stats(engine: Engine, samples: list[dict[str, float]]) -> None:
    while True:
        stats = engine.stats()
        samples.append(
            {
                "running": stats.running,
                "waiting": stats.waiting,
                "kv_cache_usage": stats.kv_cache_usage,
            }
        )
        await asyncio.sleep(STATS_INTERVAL_S)


async def run_engine_bench(
    engine: Engine,
    pages: Sequence[PageImage],
    *,
    prompt: PromptKind = PromptKind.MARKDOWN,
    warmup: int = 4,
    concurrency: int = 0,
    max_tokens: int = 0,
) -> dict[str, Any]:
    """Pages through a started engine; returns the figures (see the module docstring).

    `concurrency` 0 submits every page at once (the engine queues what it cannot batch);
    otherwise at most that many pages are in the engine at a time. `output_digests` holds
    a hash of each page's raw output by page index (None where the page failed), so that
    runs and passes can be compared page by page (`compare_digests`).
    """
    run = f"{time.time_ns():x}"
    if warmup > 0:
        # First requests pay for lazy set-up (output handler, kernels for new shapes).
        await asyncio.gather(
            *(
                engine.infer(PageRequest(f"bench-{run}-warmup/{index}/0", page, prompt))
                for index, page in enumerate(list(pages)[:warmup])
            )
        )
    gate = asyncio.Semaphore(concurrency) if concurrency > 0 else None
    latencies: list[float] = []
    outputs: list[EngineOutput] = []
    errors: Counter[str] = Counter()
    digests: list[str | None] = [None] * len(pages)

    async def one(index: int, page: PageImage) -> None:
        async with gate if gate is not None else contextlib.nullcontext():
            began = time.perf_counter()
            try:
                output = await engine.infer(PageRequest(f"bench-{run}/{index}/0", page, prompt))
            except OcrError as exc:
                errors[str(exc.code)] += 1
                return
            latencies.append(time.perf_counter() - began)
            outputs.append(output)
            digests[index] = hashlib.sha256(output.raw_text.encode()).hexdigest()[:16]

    samples: list[dict[str, float]] = []
    sampler = asyncio.create_task(_sample_stats(engine, samples))
    before = engine.stats()
    began = time.perf_counter()
    try:
        await asyncio.gather(*(one(index, page) for index, page in enumerate(pages)))
    finally:
        seconds = time.perf_counter() - began
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    after = engine.stats()
    done = len(outputs)
    output_tokens = sum(output.output_tokens for output in outputs)
    prompt_tokens = sum(output.prompt_tokens for output in outputs)
    latencies.sort()
    kv = [sample["kv_cache_usage"] for sample in samples]
    return {
        "pages": len(pages),
        "pages_done": done,
        "errors": dict(errors),
        "warmup_pages": min(warmup, len(pages)),
        "concurrency": concurrency or len(pages),
        "prompt": str(prompt),
        "max_tokens": max_tokens,
        "seconds": round(seconds, 3),
        "engine_pages_per_s": round(done / seconds, 3) if seconds > 0 else 0.0,
        "output_tokens_per_s": round(output_tokens / seconds, 1) if seconds > 0 else 0.0,
        "output_tokens_per_page": round(output_tokens / done, 1) if done else 0.0,
        "prompt_tokens_per_page": round(prompt_tokens / done, 1) if done else 0.0,
        "latency_p50_s": round(_percentile(latencies, 0.5), 3),
        "latency_p90_s": round(_percentile(latencies, 0.9), 3),
        "latency_p100_s": round(latencies[-1], 3) if latencies else 0.0,
        "latency_mean_s": round(statistics.fmean(latencies), 3) if latencies else 0.0,
        "finish_reasons": dict(Counter(str(output.finish_reason) for output in outputs)),
        "running_max": max((int(sample["running"]) for sample in samples), default=0),
        "waiting_max": max((int(sample["waiting"]) for sample in samples), default=0),
        "kv_cache_usage_max": round(max(kv, default=0.0), 4),
        "kv_cache_usage_mean": round(statistics.fmean(kv), 4) if kv else 0.0,
        "preemptions": after.extra.get("preemptions_total", 0.0)
        - before.extra.get("preemptions_total", 0.0),
        "output_digests": digests,
    }


def compare_digests(a: Sequence[str | None], b: Sequence[str | None]) -> dict[str, Any]:
    """How many pages two runs' `output_digests` agree on, of those both finished."""
    shared = [i for i in range(min(len(a), len(b))) if a[i] is not None and b[i] is not None]
    differing = [i for i in shared if a[i] != b[i]]
    return {
        "pages_compared": len(shared),
        "pages_same": len(shared) - len(differing),
        "share_same": round((len(shared) - len(differing)) / len(shared), 4) if shared else None,
        "first_differing_pages": differing[:10],
    }


# -- starting the engine ------------------------------------------------------------------


def engine_core_pids() -> list[int]:
    """Child processes of this one that are vLLM engine cores (by their process title)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"EngineCore" in cmdline:
            pids.append(int(entry.name))
    return pids


def dump_stacks(reason: str) -> None:
    """Every thread's stack of this process, and of the engine core when it listens for it
    (OCR_VLLM_STACKS_ON_SIGUSR1=1, see consumer/engines/deepseek_modes.py), to stderr."""
    print(f"=== stacks: {reason}", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    if os.environ.get("OCR_VLLM_STACKS_ON_SIGUSR1") == "1":
        for pid in engine_core_pids():
            # Without the handler SIGUSR1 would kill the process: only sent when armed.
            os.kill(pid, signal.SIGUSR1)


async def first_page(engine: Engine, page: PageImage, timeout_s: float) -> float | None:
    """Seconds one page takes through a fresh engine, or None when it does not finish in
    `timeout_s` (stacks are dumped first, to show where it is stuck)."""
    loop = asyncio.get_running_loop()
    watch = loop.call_later(timeout_s * 0.8, dump_stacks, "first page is slow")
    began = time.perf_counter()
    try:
        await asyncio.wait_for(engine.infer(PageRequest("bench-first/1/0", page)), timeout_s)
    except TimeoutError:
        dump_stacks("first page timed out")
        return None
    finally:
        watch.cancel()
    return time.perf_counter() - began


async def start_engine(
    settings: Settings,
    args: argparse.Namespace,
    probe: PageImage,
    ngram_processors: Sequence[NgramProcessor] = (),
) -> tuple[Engine, float, dict[str, Any]]:
    """A started engine that has completed one page.

    For vLLM, the variants of --vllm-variants are tried in order until one completes a
    first page within --first-page-timeout; the result records which one ran.
    `ngram_processors`: load these n-gram processors (vLLM; default: the configured one).
    """
    from consumer.engines.factory import create_engine, resolve_engine_name
    from consumer.settings import EngineName

    is_vllm = resolve_engine_name(settings.engine) is EngineName.VLLM
    variants: list[str | None] = list(args.vllm_variants.split(",")) if is_vllm else [None]
    failed: list[str] = []
    for variant in variants:
        engine: Engine
        if variant is None:
            engine = create_engine(settings)
        else:
            from consumer.engines.vllm import VARIANTS, VllmEngine

            engine = VllmEngine(
                settings, **VARIANTS[variant], ngram_processors=ngram_processors
            )
        began = time.perf_counter()
        await engine.start()
        start_s = time.perf_counter() - began
        print(
            f"engine {engine.identity.name} ({variant}) up in {start_s:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        seconds = await first_page(engine, probe, args.first_page_timeout)
        if seconds is not None:
            if args.variant_file is not None and variant is not None:
                args.variant_file.write_text(variant + "\n")
            info = {
                "vllm_variant": variant,
                "variants_failed": failed,
                "first_page_s": round(seconds, 2),
            }
            return engine, start_s, info
        failed.append(str(variant))
        await engine.close()
    raise OcrError(
        ErrorCode.ENGINE_ERROR,
        f"no engine variant finished a page within {args.first_page_timeout:g} s: {failed}",
    )


