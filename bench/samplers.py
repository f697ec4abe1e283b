"""What the engine and the GPU do while a benchmark window is open.

`Sampler` reads the engine's own numbers (batch, queue, KV cache use, generated tokens
and stat records from vLLM's stat logger) and NVML's GPU utilisation every half second, keeping
each row's time, so that a window's figures come from the rows inside it alone. It also
reads the CPU time of this process, of its vLLM engine core and of its other children
(render workers), and the host's load: the engine core's Python is the step's critical
path, so a window where it got less CPU is one where the host was crowded, not the GPU
slower (2026-12-07: the pipeline's engine generated 3.7% fewer tokens/s than the same
engine alone).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumer.engines.base import Engine

SAMPLE_INTERVAL_S = 0.5
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat: str) -> float:
    """User plus system CPU seconds from a /proc/<pid>/stat line (proc(5): fields 14 and 15,
    counted after the parenthesised command name, which may hold spaces)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def children_cpu(parent: int, proc: Path = Path("/proc")) -> dict[str, float]:
    """CPU seconds of `parent`'s children, split into vLLM engine cores and the others."""
    totals = {"engine_core": 0.0, "other_children": 0.0}
    for entry in proc.glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                continue
            core = b"EngineCore" in (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        totals["engine_core" if core else "other_children"] += cpu_seconds(stat)
    return totals


def cpu_row() -> dict[str, float]:
    """This process's, its children's CPU seconds and the host's 1-minute load, now."""
    row = children_cpu(os.getpid())
    row["frontend"] = cpu_seconds(Path("/proc/self/stat").read_text())
    row["load"] = float(Path("/proc/loadavg").read_text().split()[0])
    return row


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
            row.update({f"cpu_{k}": v for k, v in (await asyncio.to_thread(cpu_row)).items()})
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
        if span > 0:
            # Share of one CPU each process used (1.0: one core all the time).
            for name in ("frontend", "engine_core", "other_children"):
                used = rows[-1].get(f"cpu_{name}", 0.0) - rows[0].get(f"cpu_{name}", 0.0)
                figures[f"cpu_{name}"] = round(used / span, 3)
            load = mean("cpu_load")
            if load is not None:
                figures["host_load_1m_mean"] = round(load, 2)
                figures["host_cpus"] = os.cpu_count()
        return figures
