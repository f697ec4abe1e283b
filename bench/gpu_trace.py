"""Where the engine core's GPU time goes, from a torch profiler trace (Chrome JSON).

Each GPU event (kernel, copy, memset) is filed under the stage whose CPU scope launched it:
the launch is the runtime call with the same `correlation` id (a CUDA graph's kernels carry
the id of their graph launch), and the scope is the innermost named range around the
launch's start on the CPU side:

    vision encoder     `ocr: vision encoder`, `ocr: mm embeddings` (bench/gpu_scopes.py)
    n-gram rule        `ocr: n-gram apply`, `ocr: n-gram update`
    decoder forward    `gpu_model_runner: forward` (vLLM, VLLM_CUSTOM_SCOPES_FOR_PROFILING=1)
    sampling           `gpu_model_runner: sample`
    other in step      inside a step (`execute_context_...`) but none of the above
    outside steps      no step around it

The decoder forward is split into prefill and decode with vLLM's step annotations
(`execute_context_C(T)_generation_G(U)`: C requests with T prompt tokens, G decoding): a
step with no prompt tokens is pure decoding, and in a mixed step what its forward takes
beyond the median pure-decode forward is filed as prefill.

Busy time is the union of GPU intervals over the traced span (first step's start to last
step's end), so `gpu_busy` is the share of that span in which any GPU work ran. Pure, no
torch needed: the benchmark runs it on the host after the trace is written.
"""

from __future__ import annotations

import bisect
import gzip
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
SCOPE_STAGES = {
    "ocr: vision encoder": "vision encoder",
    "ocr: mm embeddings": "vision encoder",
    "ocr: n-gram apply": "n-gram rule",
    "ocr: n-gram update": "n-gram rule",
    "gpu_model_runner: forward": "decoder forward",
    "gpu_model_runner: sample": "sampling",
}
# Ours first: the n-gram scope sits inside vLLM's sample scope.
SCOPE_PRIORITY = (
    "ocr: vision encoder",
    "ocr: mm embeddings",
    "ocr: n-gram apply",
    "ocr: n-gram update",
    "gpu_model_runner: sample",
    "gpu_model_runner: forward",
)
STEP = re.compile(r"^execute_context_(\d+)\((\d+)\)_generation_(\d+)\((\d+)\)$")
STAGES = (
    "vision encoder",
    "prefill",
    "decode",
    "n-gram rule",
    "sampling",
    "other in step",
    "outside steps",
)


class Spans:
    """Non-overlapping [start, end) intervals of one name; which holds a point."""

    def __init__(self, spans: Iterable[tuple[float, float, Any]]) -> None:
        ordered = sorted(spans, key=lambda span: span[0])
        self.starts = [span[0] for span in ordered]
        self.spans = ordered

    def find(self, point: float) -> tuple[float, float, Any] | None:
        index = bisect.bisect_right(self.starts, point) - 1
        if index >= 0 and self.spans[index][1] >= point:
            return self.spans[index]
        return None


def load_trace(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        data = json.load(handle)
    events = data.get("traceEvents", data) if isinstance(data, dict) else data
    return [event for event in events if isinstance(event, dict)]


def union_length(intervals: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def summarise(events: Sequence[dict[str, Any]], pages_per_s: float | None = None) -> dict[str, Any]:
    """The stage table of one trace (see the module docstring). Times in ms; with the
    run's steady `pages_per_s`, also GPU ms per page of each stage."""
    launches: dict[Any, float] = {}
    scopes: dict[str, list[tuple[float, float, Any]]] = defaultdict(list)
    steps: list[tuple[float, float, Any]] = []
    gpu: list[dict[str, Any]] = []
    for event in events:
        if event.get("ph") != "X":
            continue
        category = event.get("cat", "")
        start = float(event.get("ts", 0.0))
        end = start + float(event.get("dur", 0.0))
        name = str(event.get("name", ""))
        if category in GPU_CATEGORIES:
            gpu.append(event)
        elif category in ("cuda_runtime", "cuda_driver"):
            correlation = (event.get("args") or {}).get("correlation")
            if correlation is not None:
                launches[correlation] = start
        elif category == "user_annotation":
            match = STEP.match(name)
            if match:
                steps.append((start, end, tuple(int(group) for group in match.groups())))
            elif name in SCOPE_STAGES:
                scopes[name].append((start, end, None))
    step_spans = Spans(steps)
    scope_spans = {name: Spans(spans) for name, spans in scopes.items()}
    stage_ms: dict[str, float] = defaultdict(float)
    forward_by_step: dict[float, float] = defaultdict(float)
    unlaunched = 0
    intervals = []
    for event in gpu:
        start = float(event.get("ts", 0.0))
        duration = float(event.get("dur", 0.0))
        intervals.append((start, start + duration))
        launch = launches.get((event.get("args") or {}).get("correlation"))
        if launch is None:
            unlaunched += 1
            stage_ms["outside steps"] += duration / 1000
            continue
        step = step_spans.find(launch)
        stage = "outside steps" if step is None else "other in step"
        for name in SCOPE_PRIORITY:
            spans = scope_spans.get(name)
            if spans is not None and spans.find(launch) is not None:
                stage = SCOPE_STAGES[name]
                break
        if stage == "decoder forward" and step is not None:
            forward_by_step[step[0]] += duration / 1000
        elif stage != "decoder forward":
            stage_ms[stage] += duration / 1000
        else:
            stage_ms["decode"] += duration / 1000  # a forward outside any step annotation
    prefill_ms, decode_ms, pure, mixed = split_forward(steps, forward_by_step)
    stage_ms["prefill"] += prefill_ms
    stage_ms["decode"] += decode_ms
    span_ms = busy_ms = 0.0
    if steps:
        first, last = min(step[0] for step in steps), max(step[1] for step in steps)
        span_ms = (last - first) / 1000
        inside = [(max(a, first), min(b, last)) for a, b in intervals if b > first and a < last]
        busy_ms = union_length(inside) / 1000
    prompt_tokens = sum(step[2][1] for step in steps)
    generated = sum(step[2][3] for step in steps)
    summary: dict[str, Any] = {
        "span_ms": round(span_ms, 2),
        "steps": len(steps),
        "pure_decode_steps": pure,
        "mixed_steps": mixed,
        "prompt_tokens": prompt_tokens,
        "generation_tokens": generated,
        "step_ms_mean": round(span_ms / len(steps), 3) if steps else 0.0,
        "gpu_busy_ms": round(busy_ms, 2),
        "gpu_busy": round(busy_ms / span_ms, 4) if span_ms > 0 else None,
        "gpu_events": len(gpu),
        "gpu_events_without_launch": unlaunched,
        "stages_ms": {stage: round(stage_ms.get(stage, 0.0), 2) for stage in STAGES},
    }
    gpu_total = sum(stage_ms.values())
    summary["stages_share_of_span"] = {
        stage: round(stage_ms.get(stage, 0.0) / span_ms, 4) if span_ms > 0 else None
        for stage in STAGES
    }
    summary["gpu_idle_share_of_span"] = round(1 - busy_ms / span_ms, 4) if span_ms > 0 else None
    summary["gpu_stage_total_ms"] = round(gpu_total, 2)
    if pages_per_s and span_ms > 0:
        pages = pages_per_s * span_ms / 1000
        summary["pages_in_span"] = round(pages, 2)
        summary["stages_ms_per_page"] = {
            stage: round(stage_ms.get(stage, 0.0) / pages, 3) for stage in STAGES
        }
        summary["gpu_idle_ms_per_page"] = round((span_ms - busy_ms) / pages, 3)
        summary["wall_ms_per_page"] = round(span_ms / pages, 3)
    return summary


def split_forward(
    steps: Sequence[tuple[float, float, Any]], forward_by_step: dict[float, float]
) -> tuple[float, float, int, int]:
    """(prefill ms, decode ms, pure-decode steps, mixed steps) of the decoder forward."""
    pure = [forward_by_step.get(step[0], 0.0) for step in steps if step[2][1] == 0]
    baseline = statistics.median(pure) if pure else 0.0
    prefill = decode = 0.0
    mixed = 0
    for step in steps:
        forward = forward_by_step.get(step[0], 0.0)
        if step[2][1] == 0:
            decode += forward
            continue
        mixed += 1
        if step[2][3] == 0:  # only prompt tokens in this step
            prefill += forward
            continue
        extra = max(0.0, forward - baseline)
        prefill += extra
        decode += forward - extra
    return prefill, decode, len(pure), mixed


def top_kernels(events: Sequence[dict[str, Any]], limit: int = 25) -> list[tuple[str, float]]:
    """GPU ms by kernel name, largest first (names cut to 120 characters)."""
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("ph") == "X" and event.get("cat") in GPU_CATEGORIES:
            totals[str(event.get("name", ""))[:120]] += float(event.get("dur", 0.0)) / 1000
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:limit]
    return [(name, round(ms, 3)) for name, ms in ranked]


def summarise_file(path: Path, pages_per_s: float | None = None) -> dict[str, Any]:
    events = load_trace(path)
    summary = summarise(events, pages_per_s)
    summary["file"] = path.name
    summary["top_kernels_ms"] = top_kernels(events)
    return summary


def newest_trace(directory: Path) -> Path | None:
    traces = sorted(directory.glob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
    return traces[-1] if traces else None
