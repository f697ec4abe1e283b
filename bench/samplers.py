"""What the engine and the GPU do while a benchmark window is open.

`Sampler` reads the engine's own numbers (batch, queue, KV cache use, generated tokens
and stat records from vLLM's stat logger) and NVML's GPU utilisation every half second, keeping
each row's time, so that a window's figures come from the rows inside it alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from consumer.engines.base import Engine

SAMPLE_INTERVAL_S = 0.5


def _nvml() -> Any | None:
    """NVML (nvidia-ml-py, in the GPU image), initialised, or None where there is none."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def nvml_utilization() -> Callable[[], float | None] | None:
    """The GPU's busy share (NVML: share of time some kernel ran), or None without NVML."""
    nvml = _nvml()
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(0) if nvml is not None else None
    except Exception:
        handle = None
    if nvml is None or handle is None:
        return None

    def read() -> float | None:
        try:
            return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100
        except Exception:
            return None

    return read


def nvml_device_name() -> str | None:
    nvml = _nvml()
    try:
        name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(0)) if nvml else None
    except Exception:
        return None
    if name is None:
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


class Sampler:
    """The engine's numbers every SAMPLE_INTERVAL_S, kept with their time."""

    def __init__(self, engine: Engine, gpu: Callable[[], float | None] | None) -> None:
        self._engine = engine
        self._gpu = gpu
        self.rows: list[dict[str, float]] = []

    async def run(self) -> None:
        while True:
            stats = self._engine.stats()
            row = {
                "t": time.perf_counter(),
                "running": float(stats.running),
                "waiting": float(stats.waiting),
                "kv": stats.kv_cache_usage,
                "steps": stats.extra.get("steps_total", 0.0),
                "generated": stats.extra.get("generation_tokens_total", 0.0),
            }
            busy = self._gpu() if self._gpu is not None else None
            if busy is not None:
                row["gpu"] = busy
            self.rows.append(row)
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def window(self, start: float | None, end: float | None) -> dict[str, Any]:
        if start is None or end is None:
            return {}
        rows = [row for row in self.rows if start <= row["t"] <= end]
        if len(rows) < 2:
            return {}

        def mean(key: str) -> float | None:
            values = [row[key] for row in rows if key in row]
            return sum(values) / len(values) if values else None

        span = rows[-1]["t"] - rows[0]["t"]
        steps = rows[-1]["steps"] - rows[0]["steps"]
        generated = rows[-1]["generated"] - rows[0]["generated"]
        figures: dict[str, Any] = {
            "running_mean": round(mean("running") or 0.0, 1),
            "waiting_mean": round(mean("waiting") or 0.0, 1),
            "kv_cache_usage_mean": round(mean("kv") or 0.0, 4),
            "kv_cache_usage_max": round(max(row["kv"] for row in rows), 4),
        }
        gpu = mean("gpu")
        if gpu is not None:
            figures["gpu_busy_nvml_mean"] = round(gpu, 4)
        if steps > 0 and span > 0:
            # One record per batch of outputs the frontend handles, which is not one per
            # engine step once prompts and encoder work interleave (2026-12-07: 81 tokens a
            # record with 199 pages decoding): the per-token decode time of the pages
            # (engine_phase's decode_ms_per_token) is the step time to quote.
            figures["stat_records_per_s"] = round(steps / span, 2)
            figures["generation_tokens_per_s"] = round(generated / span, 1)
        return figures
