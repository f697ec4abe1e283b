"""`ocr-bench decoding`: where a vLLM engine's decode time goes, measured on one engine.

The n-gram rule's implementation and where detokenization happens are per-request choices
(`VllmEngine.set_decoding`), so one started engine runs the same pages under each of them
in turn and the passes differ in nothing else. Each pass reports the engine benchmark's
figures plus the engine's own step rate (steps/s, tokens per step) from vLLM's stat
logger, and a one-second timeline of it; a first pass times the image preprocessing alone.
Outputs are compared by page between passes: greedy decoding under the same rule should
give the same text, whichever implementation ran it.

A pass name may end in `@N` to decode N tokens a page in that pass instead of the run's
`max_tokens`: `batched+final@64` next to `batched+final` separates what the admission of
pages costs (preprocessing, vision encoder, prefill) from what decoding them costs.

With `--profile-dir` and a py-spy binary (`--pyspy`), the engine core process is sampled
for a few seconds in the middle of every pass (collapsed stacks, plus the top frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_engine import compare_digests, engine_core_pids, run_engine_bench
from consumer.engines.base import PageImage, PageRequest
from consumer.engines.vllm import VllmEngine
from consumer.settings import Detokenize, NgramProcessor

# name -> (n-gram processor or None for off, detokenization)
PASSES: dict[str, tuple[NgramProcessor | None, Detokenize]] = {
    "per-request+incremental": (NgramProcessor.PER_REQUEST, Detokenize.INCREMENTAL),
    "batched+incremental": (NgramProcessor.BATCHED, Detokenize.INCREMENTAL),
    "batched+final": (NgramProcessor.BATCHED, Detokenize.FINAL),
    "off+final": (None, Detokenize.FINAL),
}
DEFAULT_PASSES = ",".join(PASSES)
TIMELINE_INTERVAL_S = 1.0
PROFILE_DELAY_S = 15.0
PROFILE_SECONDS = 8


@dataclass(frozen=True)
class Pass:
    """One pass: the decoding options it runs with, and its own output length if any."""

    name: str
    ngram: NgramProcessor | None
    detokenize: Detokenize
    max_tokens: int | None = None

    def tokens(self, default: int) -> int:
        return self.max_tokens if self.max_tokens is not None else default


def pass_spec(name: str) -> Pass:
    """`batched+final` or `batched+final@64`; ValueError naming the choices otherwise."""
    base, at, length = name.partition("@")
    if base not in PASSES or (at and not re.fullmatch(r"[1-9][0-9]*", length)):
        raise ValueError(
            f"unknown decoding pass {name!r}; choose from {list(PASSES)}, each optionally "
            "with @N for N output tokens a page"
        )
    ngram, detokenize = PASSES[base]
    return Pass(name, ngram, detokenize, int(length) if at else None)


def parse_passes(text: str) -> list[Pass]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no decoding passes given; choose from {list(PASSES)}")
    passes = [pass_spec(name) for name in names]
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        raise ValueError(f"decoding passes {repeated} given twice")
    return passes


async def preprocess_rate(
    engine: VllmEngine, pages: Sequence[PageImage], concurrency: int
) -> dict[str, Any]:
    """Pages/s of the image preprocessing alone: the most pages/s the engine can be fed."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(index: int, page: PageImage) -> None:
        async with gate:
            await engine.preprocess(PageRequest(f"bench-pre/{index}/0", page))

    began = time.perf_counter()
    await asyncio.gather(*(one(index, page) for index, page in enumerate(pages)))
    seconds = time.perf_counter() - began
    return {
        "preprocess_pages": len(pages),
        "preprocess_concurrency": concurrency,
        "preprocess_pages_per_s": round(len(pages) / seconds, 2) if seconds > 0 else 0.0,
    }


async def _timeline(engine: VllmEngine, rows: list[list[float]]) -> None:
    began = time.perf_counter()
    while True:
        stats = engine.stats()
        rows.append(
            [
                round(time.perf_counter() - began, 2),
                stats.extra.get("steps_total", 0.0),
                stats.extra.get("generation_tokens_total", 0.0),
                float(stats.running),
                float(stats.waiting),
            ]
        )
        await asyncio.sleep(TIMELINE_INTERVAL_S)


def step_figures(rows: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Steps/s and tokens/step over the pass, and over its busiest stretch (the seconds in
    which the batch held at least 90% of its largest size): the steady decode rate."""
    if len(rows) < 2:
        return {}
    seconds = rows[-1][0] - rows[0][0]
    steps = rows[-1][1] - rows[0][1]
    tokens = rows[-1][2] - rows[0][2]
    figures: dict[str, Any] = {
        "steps_per_s": round(steps / seconds, 2) if seconds > 0 else 0.0,
        "tokens_per_step": round(tokens / steps, 1) if steps else 0.0,
    }
    peak = max(row[3] for row in rows)
    full = [index for index, row in enumerate(rows) if peak > 0 and row[3] >= 0.9 * peak]
    if len(full) >= 2:
        first, last = rows[full[0]], rows[full[-1]]
        span, span_steps = last[0] - first[0], last[1] - first[1]
        if span > 0 and span_steps > 0:
            figures["steady_seconds"] = round(span, 1)
            figures["steady_steps_per_s"] = round(span_steps / span, 2)
            figures["steady_step_ms"] = round(1000 * span / span_steps, 1)
            figures["steady_tokens_per_step"] = round((last[2] - first[2]) / span_steps, 1)
    return figures


def top_frames(collapsed: str, limit: int = 25) -> list[tuple[str, float]]:
    """The leaf frames that held most samples in py-spy's collapsed output, as shares."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaves[stack.rsplit(";", 1)[-1]] += int(count)
        total += int(count)
    return [(frame, round(n / total, 3)) for frame, n in leaves.most_common(limit)] if total else []


async def profile_engine_core(pyspy: Path, out_file: Path, delay_s: float) -> dict[str, Any]:
    """py-spy samples of the engine core for a few seconds, after `delay_s`."""
    await asyncio.sleep(delay_s)
    pids = engine_core_pids()
    if not pids:
        return {"error": "no engine core process found"}
    process = await asyncio.create_subprocess_exec(
        str(pyspy), "record", "--pid", str(pids[0]), "--duration", str(PROFILE_SECONDS),
        "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(out_file),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await process.communicate()
    collapsed = await asyncio.to_thread(_read_if_present, out_file)
    if process.returncode != 0 or collapsed is None:
        return {"error": stderr.decode(errors="replace")[-500:]}
    return {"file": out_file.name, "top": top_frames(collapsed)}


def _read_if_present(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


async def run_decoding_bench(
    engine: VllmEngine,
    pages: Sequence[PageImage],
    passes: Sequence[Pass],
    *,
    warmup: int,
    max_tokens: int,
    preprocess_concurrency: int,
    pyspy: Path | None = None,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = await preprocess_rate(engine, pages, preprocess_concurrency)
    results: dict[str, dict[str, Any]] = {}
    for spec in passes:
        name = spec.name
        engine.set_decoding(
            ngram_processor=spec.ngram,
            detokenize=spec.detokenize,
            max_tokens=spec.tokens(max_tokens),
        )
        rows: list[list[float]] = []
        timeline = asyncio.create_task(_timeline(engine, rows))
        profile: asyncio.Task[dict[str, Any]] | None = None
        if pyspy is not None and profile_dir is not None:
            out_file = profile_dir / f"pyspy-core-{re.sub(r'[^a-z0-9-]', '_', name)}.txt"
            profile = asyncio.create_task(profile_engine_core(pyspy, out_file, PROFILE_DELAY_S))
        try:
            figures = await run_engine_bench(
                engine,
                pages,
                warmup=warmup,
                max_tokens=spec.tokens(max_tokens),
            )
        except BaseException:
            if profile is not None:
                profile.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await profile
            raise
        finally:
            timeline.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timeline
        figures.update(step_figures(rows))
        figures["timeline"] = rows
        if profile is not None:
            figures["profile"] = await profile
        results[name] = figures
        print(
            f"pass {name}: {figures['engine_pages_per_s']} pages/s, "
            f"{figures.get('steady_step_ms')} ms/step",
            flush=True,
        )
    # Outputs compare only between passes of one output length: each with the first such.
    firsts: dict[int, str] = {}
    for spec in passes:
        first = firsts.setdefault(spec.tokens(max_tokens), spec.name)
        if first == spec.name:
            continue
        agreed = compare_digests(
            results[first]["output_digests"], results[spec.name]["output_digests"]
        )
        share = agreed["share_same"]
        results[spec.name][f"same_output_as_{first}"] = None if share is None else round(share, 3)
    result["passes"] = results
    return result
