"""`ocr-bench`: throughput of the OCR engine alone and of the whole consumer pipeline.

Run from the repository root as `python -m bench.ocr_bench` (below: `ocr-bench`).

    ocr-bench engine   [--pages N] [--pdf FILE] [settings...]   pages straight into the engine
    ocr-bench pipeline [...]                                     Kafka -> consumer -> results
    ocr-bench all      [...]                                     both, on one started engine
    ocr-bench decoding [--passes ...] [--with-pipeline]          decoding options compared
    ocr-bench steady   [--lengths 300,1000] [--pipeline-lengths ...]  the steady state

`engine` feeds N rendered pages (synthetic 1240x1754 text pages, or the pages of --pdf
rendered by the consumer's own renderer) to `Engine.infer` all at once after a short
warm-up, and reports pages/s, output tokens/s and per-page latency. For a repeatable
measure of the engine rather than of the model's mood, it decodes a fixed length per page:
`--max-tokens` defaults to 1000 here and `--ignore-eos` to true (set `--ignore-eos false`
to let pages end on their own). Every OCR_* setting is a flag too (`--max-num-seqs 256`,
`--load-format dummy`, `--model DIR`, ...).

`decoding` (vLLM only, bench/bench_decoding.py) runs the engine benchmark once
per decoding pass on one engine: n-gram rule per-request / batched / off, detokenization
incremental / final; `--with-pipeline` then runs the pipeline with the configured ones.

`steady` (bench/steady.py, run from a checkout) keeps N pages in flight in a closed loop and
times 1,024 pages after a warm-up, for the engine and through the pipeline.

Results go to bench/results/<date>-<device>.json (see --out-dir). The engine is started
once and handed to each benchmark, so `all` pays the minutes of a vLLM start only once.

The entry point stays under `if __name__ == "__main__":`: vLLM starts its engine core as a
child process, which may re-import the main module.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.bench_engine import run_engine_bench, start_engine
from bench.bench_pages import PAGE_DPI, PAGE_SIZE, pdf_pages, synthetic_pages
from consumer.config import Settings
from consumer.engines.base import Engine, PageImage
from consumer.errors import OcrError
from consumer.log import get_logger
from consumer.settings import NgramProcessor, add_settings_arguments
from producer_tools import ToolError, run_cli
from schemas.common import ErrorCode
from schemas.request import PromptKind

if TYPE_CHECKING:
    from bench.bench_decoding import Pass

log = get_logger(__name__)

DEFAULT_MAX_TOKENS = 1000
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
    "ngram_processor",
    "detokenize",
    "vision_cudagraphs",
    "vision_uint8",
    "ignore_eos",
    "page_timeout_s",
)

# -- the engine benchmark -----------------------------------------------------------------


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


def bench_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """`settings` (from flags and OCR_* variables) with this tool's fixed-length defaults
    where neither set them."""
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
    decoding = args.command == "decoding"
    passes = _decoding_passes(args, settings) if decoding else []  # before an engine start
    loaded = tuple(NgramProcessor) if decoding else ()
    engine, start_s, started = await start_engine(settings, args, pages[0], loaded)
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
    if identity.name == "vllm":
        from consumer.engines.vllm_params import vision_cudagraphs

        # What the engine ran with, where the setting says "unset" (auto).
        result["vision_cudagraphs_on"] = vision_cudagraphs(settings, identity.mode)
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
        if decoding:
            result.update(await _decoding(engine, settings, pages, passes, args))
        if args.command in ("pipeline", "all") or (decoding and args.with_pipeline):
            try:
                from bench.bench_pipeline import run_pipeline_bench

                if args.command != "all" and args.warmup > 0:
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


def _decoding_passes(args: argparse.Namespace, settings: Settings) -> list[Pass]:
    """The passes of --passes, refused now when these settings cannot run them."""
    from bench.bench_decoding import DEFAULT_PASSES, parse_passes

    try:
        passes = parse_passes(args.passes or DEFAULT_PASSES)
    except ValueError as exc:
        raise OcrError(ErrorCode.ENGINE_ERROR, str(exc)) from exc
    if settings.ngram_size <= 0 and any(spec.ngram is not None for spec in passes):
        raise OcrError(
            ErrorCode.ENGINE_ERROR,
            "decoding passes with an n-gram rule need OCR_NGRAM_SIZE > 0 (the rule's "
            "processors are loaded only then); pass only off+final, or set a size",
        )
    return passes


async def _decoding(
    engine: Engine,
    settings: Settings,
    pages: Sequence[PageImage],
    passes: Sequence[Pass],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from bench.bench_decoding import run_decoding_bench
    from consumer.engines.vllm import VllmEngine
    from consumer.engines.vllm_params import configured_decoding

    if not isinstance(engine, VllmEngine):
        raise OcrError(ErrorCode.ENGINE_ERROR, "ocr-bench decoding needs the vllm engine")
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    result = await run_decoding_bench(
        engine,
        pages,
        passes,
        warmup=args.warmup,
        max_tokens=settings.max_tokens,
        preprocess_concurrency=2 * settings.preprocess_workers,
        pyspy=args.pyspy,
        profile_dir=args.profile_dir,
    )
    configured = configured_decoding(settings)
    engine.set_decoding(ngram_processor=configured[0], detokenize=configured[1])
    # The headline figures are those of the configured decoding, when a pass ran it.
    for spec in passes:
        if (spec.ngram, spec.detokenize) == configured and spec.max_tokens in (
            None,
            settings.max_tokens,
        ):
            headline = result["passes"][spec.name]
            result["configured_pass"] = spec.name
            result.update({k: v for k, v in headline.items() if not isinstance(v, dict | list)})
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
    add_settings_arguments(common, Settings)
    parser = argparse.ArgumentParser(
        prog="python -m bench.ocr_bench", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("engine", parents=[common], help="pages straight into the engine")
    commands.add_parser("pipeline", parents=[common], help="the whole consumer pipeline")
    commands.add_parser("all", parents=[common], help="engine, then pipeline, one engine")
    commands.add_parser(
        "steady", add_help=False, help="steady state, closed loop (ocr-bench steady --help)"
    )
    decoding = commands.add_parser(
        "decoding", parents=[common], help="decoding options compared on one vLLM engine"
    )
    decoding.add_argument("--passes", default=None, help="comma-separated decoding passes")
    decoding.add_argument("--with-pipeline", action="store_true", help="then the pipeline")
    decoding.add_argument("--pyspy", type=Path, default=None, help="py-spy binary (profiles)")
    decoding.add_argument("--profile-dir", type=Path, default=None, help="py-spy output here")
    return parser


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    try:
        result = await run(args, bench_settings(args, settings))
    except OcrError as exc:
        raise ToolError(str(exc)) from exc
    print(summary(result))
    if not args.no_write:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = result_path(args.out_dir, result["date"][:10], result["device"], args.label)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["steady"]:
        from bench.steady import main as steady_main

        return steady_main(argv[1:])
    return run_cli(build_parser(), _main, argv, Settings)


if __name__ == "__main__":
    sys.exit(main())
