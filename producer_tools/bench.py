"""`ocr-bench`: throughput of the OCR engine alone and of the whole consumer pipeline.

    ocr-bench engine   [--pages N] [--pdf FILE] [settings...]   pages straight into the engine
    ocr-bench pipeline [...]                                     Kafka -> consumer -> results
    ocr-bench all      [...]                                     both, on one started engine

`engine` feeds N rendered pages (synthetic 1240x1754 text pages, or the pages of --pdf
rendered by the consumer's own renderer) to `Engine.infer` all at once after a short
warm-up, and reports pages/s, output tokens/s and per-page latency. For a repeatable
measure of the engine rather than of the model's mood, it decodes a fixed length per page:
`--max-tokens` defaults to 1000 here and `--ignore-eos` to true (set `--ignore-eos false`
to let pages end on their own). Every OCR_* setting is a flag too (`--max-num-seqs 256`,
`--load-format dummy`, `--model DIR`, ...).

Results go to bench/results/<date>-<device>.json (see --out-dir). The engine is started
once and handed to each benchmark, so `all` pays the minutes of a vLLM start only once.

The entry point stays under `if __name__ == "__main__":`: vLLM starts its engine core as a
child process, which may re-import the main module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import platform
import re
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from consumer.config import Settings, add_settings_arguments, settings_from_args
from consumer.engines.base import Engine, EngineOutput, PageImage, PageRequest
from consumer.errors import OcrError
from consumer.log import configure_logging, get_logger
from producer_tools.bench_pages import PAGE_DPI, PAGE_SIZE, pdf_pages, synthetic_pages
from schemas.common import ErrorCode
from schemas.request import PromptKind

log = get_logger(__name__)

DEFAULT_MAX_TOKENS = 1000
STATS_INTERVAL_S = 0.5
# Settings that shape engine throughput: recorded with every result.
ENGINE_SETTINGS = (
    "engine",
    "model",
    "load_format",
    "dtype",
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "tensor_parallel_size",
    "preprocess_workers",
    "enforce_eager",
    "resolution_mode",
    "max_tokens",
    "ngram_size",
    "ngram_window",
    "ignore_eos",
    "page_timeout_s",
)

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
    otherwise at most that many pages are in the engine at a time.
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
    }


# -- starting the engine ------------------------------------------------------------------


def _engine_core_pids() -> list[int]:
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
        for pid in _engine_core_pids():
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
    settings: Settings, args: argparse.Namespace, probe: PageImage
) -> tuple[Engine, float, dict[str, Any]]:
    """A started engine that has completed one page.

    For vLLM, the variants of --vllm-variants are tried in order until one completes a
    first page within --first-page-timeout; the result records which one ran.
    """
    from consumer.config import EngineName
    from consumer.engines.factory import create_engine, resolve_engine_name

    is_vllm = resolve_engine_name(settings.engine) is EngineName.VLLM
    variants: list[str | None] = list(args.vllm_variants.split(",")) if is_vllm else [None]
    failed: list[str] = []
    for variant in variants:
        engine: Engine
        if variant is None:
            engine = create_engine(settings)
        else:
            from consumer.engines.vllm import VARIANTS, VllmEngine

            engine = VllmEngine(settings, **VARIANTS[variant])
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


# -- results ------------------------------------------------------------------------------


def device_name() -> str:
    """The GPU's name (asked after the engine has started: touching CUDA earlier would make
    vLLM spawn its engine core instead of forking it), or the CPU's."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # no torch, or a broken one: this is a CPU run
        pass
    return f"cpu-{platform.machine() or 'unknown'}"


def torch_version() -> str | None:
    try:
        import torch
    except Exception:
        return None
    return str(torch.__version__)


def result_path(out_dir: Path, date: str, device: str, label: str = "") -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"
    stem = f"{date}-{slug}" + (f"-{label}" if label else "")
    path = out_dir / f"{stem}.json"
    number = 2
    while path.exists():
        path = out_dir / f"{stem}-{number}.json"
        number += 1
    return path


def bench_settings(args: argparse.Namespace) -> Settings:
    """Settings from flags and OCR_* variables, with this tool's fixed-length defaults."""
    settings = settings_from_args(args)
    explicit = {name for name in Settings.model_fields if getattr(args, f"setting_{name}", None)}
    updates: dict[str, Any] = {}
    if "max_tokens" not in explicit:
        updates["max_tokens"] = DEFAULT_MAX_TOKENS
    if "ignore_eos" not in explicit:
        updates["ignore_eos"] = True
    if "metrics_port" not in explicit:
        updates["metrics_port"] = 0
    if "page_timeout_s" not in explicit:
        # Every page is submitted at once: pages beyond max_num_seqs queue inside the
        # engine for whole waves, which the consumer's 120 s page limit is not made for
        # (with 512 pages and 256 slots the second wave timed out on the H100).
        updates["page_timeout_s"] = 3600.0
    return settings.model_copy(update=updates) if updates else settings


async def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.pdf is not None:
        pages = await pdf_pages(args.pdf, args.pages, args.dpi, settings)
        source = f"pdf:{args.pdf.name}@{args.dpi}dpi"
    else:
        pages = synthetic_pages(args.pages)
        source = f"synthetic {PAGE_SIZE[0]}x{PAGE_SIZE[1]}"
    engine, start_s, started = await start_engine(settings, args, pages[0])
    if started.get("variants_failed") and args.fallback_pages > 0:
        # The failed variants used up time: keep the run inside the caller's budget.
        pages = pages[: args.fallback_pages]
    identity = engine.identity
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": args.command,
        "engine": identity.model_dump(mode="json"),
        "engine_start_s": round(start_s, 1),
        **started,
        "vllm_version": identity.version if identity.name == "vllm" else None,
        "source": source,
        "settings": {name: _jsonable(getattr(settings, name)) for name in ENGINE_SETTINGS},
        "pipeline_pages_per_s": None,
    }
    try:
        if args.command in ("engine", "all"):
            result.update(
                await run_engine_bench(
                    engine,
                    pages,
                    prompt=PromptKind(args.prompt),
                    warmup=args.warmup,
                    concurrency=args.concurrency,
                    max_tokens=settings.max_tokens,
                )
            )
        if args.command in ("pipeline", "all"):
            try:
                from producer_tools.bench_pipeline import run_pipeline_bench

                if args.command == "pipeline" and args.warmup > 0:
                    await run_engine_bench(engine, pages[: args.warmup], warmup=0)
                result.update(
                    await run_pipeline_bench(
                        engine,
                        settings,
                        pages,
                        pages_per_document=args.doc_pages,
                        dpi=PAGE_DPI if args.pdf is None else args.dpi,
                    )
                )
                if result.get("engine_pages_per_s"):
                    result["pipeline_over_engine"] = round(
                        result["pipeline_pages_per_s"] / result["engine_pages_per_s"], 3
                    )
            except OSError as exc:
                raise OcrError(
                    ErrorCode.INTERNAL,
                    f"pipeline benchmark needs Kafka at {settings.kafka_bootstrap} and Redis "
                    f"at {settings.redis_url}: {exc}",
                ) from exc
    finally:
        await engine.close()
    result["device"] = device_name()
    result["torch_version"] = torch_version()
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def summary(result: dict[str, Any]) -> str:
    keys = (
        "device",
        "engine_start_s",
        "pages_done",
        "engine_pages_per_s",
        "output_tokens_per_s",
        "output_tokens_per_page",
        "prompt_tokens_per_page",
        "latency_p50_s",
        "latency_p100_s",
        "kv_cache_usage_max",
        "errors",
        "pipeline_pages_per_s",
    )
    return "\n".join(f"{key:>24}  {result.get(key)}" for key in keys if key in result)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pages", type=int, default=256, help="pages to time (default 256)")
    common.add_argument("--warmup", type=int, default=4, help="pages run first, untimed")
    common.add_argument(
        "--concurrency", type=int, default=0, help="most pages in the engine at once (0: all)"
    )
    common.add_argument(
        "--prompt",
        default=PromptKind.MARKDOWN.value,
        choices=[kind.value for kind in PromptKind if kind is not PromptKind.LOCATE],
    )
    common.add_argument("--pdf", type=Path, default=None, help="time this PDF's pages instead")
    common.add_argument("--dpi", type=int, default=144, help="render DPI for --pdf")
    common.add_argument(
        "--doc-pages", type=int, default=8, help="pages per document in the pipeline run"
    )
    common.add_argument(
        "--vllm-variants",
        default="renderer-thread,inline-loop",
        help="vLLM engine variants to try in order (consumer.engines.vllm.VARIANTS: "
        "renderer-thread, renderer-loop, inline-thread, inline-loop)",
    )
    common.add_argument(
        "--first-page-timeout",
        type=float,
        default=240.0,
        help="seconds a fresh engine gets for its first page before the next variant",
    )
    common.add_argument(
        "--fallback-pages",
        type=int,
        default=0,
        help="time only this many pages when the first vLLM variant failed (0: all)",
    )
    common.add_argument(
        "--variant-file", type=Path, default=None, help="write the vLLM variant that worked here"
    )
    common.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    common.add_argument("--label", default="", help="suffix of the result file name")
    common.add_argument("--no-write", action="store_true", help="print only")
    add_settings_arguments(common)
    parser = argparse.ArgumentParser(prog="ocr-bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("engine", parents=[common], help="pages straight into the engine")
    commands.add_parser("pipeline", parents=[common], help="the whole consumer pipeline")
    commands.add_parser("all", parents=[common], help="engine, then pipeline, one engine")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = bench_settings(args)
    except ValidationError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return 1
    configure_logging(settings.log_level, settings.log_format)
    try:
        result = asyncio.run(run(args, settings))
    except OcrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(summary(result))
    if not args.no_write:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = result_path(args.out_dir, result["date"][:10], result["device"], args.label)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
