"""Fused-MoE kernel configs for DeepSeek-OCR's shapes, tuned on the GPU at hand (issue 21).

vLLM runs the decoder's MoE layers with one Triton kernel whose tiles (BLOCK_SIZE_M/N/K,
GROUP_SIZE_M, num_warps, num_stages) come from a JSON table per experts count E,
intermediate size N and GPU, keyed by the batch's token count M. It ships none for E=64,
N=896 and logs "Using default MoE config": every MoE layer of every step runs on a
heuristic. This searches a pruned space for the token counts the engine runs, in order of
how much they matter (decode batches first, then prefill chunks), and writes:

- `<out>/moe/E=64,N=896,device_name=<GPU>.json`, the table as vLLM reads it (file name
  from vLLM's own `get_config_file_name`); committed under consumer/engines/moe_configs/,
  the engine points `VLLM_TUNED_CONFIG_FOLDER` there (consumer/engines/vllm.py);
- `<out>/tune-moe.json`: per M the time of vLLM's default config and of the one kept
  (both graph-replayed, the way decode steps run): the fastest candidate, or the heuristic
  when none beats it by 3%; how many configs were tried or failed to compile, and which
  planned sizes the deadline left untuned (the table keeps vLLM's heuristic for those
  sizes; vLLM takes the nearest size's config for any batch in between).

The space is pruned, not exhaustive: a tile taller than twice the tokens an expert gets
only computes padding; GROUP_SIZE_M > 1 only matters with several M tiles per expert; a
config needing more shared memory than an SM has would not compile. Kernels compile first
in `--compile-workers` processes (Triton's disk cache then serves the timing process), as
compiling, not timing, is what costs minutes. Results are written after each M, so a run
cut at `--deadline-s` keeps what it finished.

    python -m bench.tune_moe --out /tmp/ocr-out --deadline-s 540        # on the GPU host
    python -m bench.tune_moe --dry-run                                  # the plan, anywhere

(deploy/gpu/run.sh tune-moe runs it in the GPU host's environment.)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MoeConfig = dict[str, int]

# DeepSeek-OCR's decoder (deploy/gpu/make_model.py mirrors the real config.json).
DEEPSEEK_OCR = {"experts": 64, "hidden": 1280, "intermediate": 896, "topk": 6}
# Token counts a step's MoE layers see, most important first: decode batches padded to
# vLLM's CUDA-graph sizes around max_num_seqs 256-384, then smaller decode batches (a
# stream's tail), then prefill chunks up to max_num_batched_tokens.
BATCH_SIZES = (256, 384, 128, 192, 320, 512, 64, 32, 16, 8, 4, 2, 1,
               1024, 2048, 4096, 8192, 16384)
SPACES: dict[str, dict[str, tuple[int, ...]]] = {
    "pruned": {
        "BLOCK_SIZE_M": (16, 32, 64, 128),
        "BLOCK_SIZE_N": (64, 128, 256),
        "BLOCK_SIZE_K": (64, 128, 256),
        "GROUP_SIZE_M": (1, 16, 32),
        "num_warps": (4, 8),
        "num_stages": (2, 3, 4, 5),
    },
    "wide": {
        "BLOCK_SIZE_M": (16, 32, 64, 128, 256),
        "BLOCK_SIZE_N": (32, 64, 128, 256),
        "BLOCK_SIZE_K": (32, 64, 128, 256),
        "GROUP_SIZE_M": (1, 16, 32, 64),
        "num_warps": (4, 8),
        "num_stages": (2, 3, 4, 5),
    },
}
# Dynamic shared memory one thread block may use on an H100 or H200 (227 KiB).
SHARED_MEMORY_BYTES = 227 * 1024
BF16_BYTES = 2
GRAPH_CALLS = 10  # kernel pairs captured in one graph: launch cost spread as in decode
TIMED_REPLAYS = 5
# A candidate replaces vLLM's heuristic only when this much faster: closer is noise.
MIN_GAIN = 0.03
# L2 cache of an H100 (50 MiB) or H200 (60 MiB): weights that fit stay warm across the
# graph's calls, unlike in the engine, where 11 other layers' weights pass in between.
L2_BYTES = 60 * 1024 * 1024
MAX_WEIGHT_COPIES = 6  # 2.6 GiB of weights at most


@dataclass(frozen=True)
class MoeShape:
    experts: int
    hidden: int  # K of the first GEMM
    intermediate: int  # N as vLLM names its tables: w2 is [E, hidden, intermediate]
    topk: int

    @classmethod
    def from_model(cls, config_json: Path | None) -> MoeShape:
        if config_json is None or not config_json.exists():
            return cls(**DEEPSEEK_OCR)
        config = json.loads(config_json.read_text())
        text = config.get("language_config", config)  # DeepSeek-OCR nests the decoder's
        return cls(
            experts=int(text["n_routed_experts"]),
            hidden=int(text["hidden_size"]),
            intermediate=int(text["moe_intermediate_size"]),
            topk=int(text["num_experts_per_tok"]),
        )

    def tokens_per_expert(self, batch: int) -> int:
        return math.ceil(batch * self.topk / self.experts)

    def active_weight_bytes(self, batch: int) -> int:
        """The bf16 expert weights one call reads: at most `batch * topk` experts'."""
        experts = min(self.experts, batch * self.topk)
        return experts * 3 * self.intermediate * self.hidden * BF16_BYTES  # w1: 2N x K, w2: K x N

    def naive_assignment(self, batch: int) -> bool:
        """vLLM skips sorting tokens by expert for tiny batches: another kernel variant."""
        return batch * self.topk * 4 <= self.experts


def shared_memory_bytes(config: MoeConfig) -> int:
    """What the kernel's software pipeline keeps in shared memory: an A and a B tile per
    stage (bf16)."""
    tile_a = config["BLOCK_SIZE_M"] * config["BLOCK_SIZE_K"]
    tile_b = config["BLOCK_SIZE_K"] * config["BLOCK_SIZE_N"]
    return config["num_stages"] * (tile_a + tile_b) * BF16_BYTES


def candidates(batch: int, shape: MoeShape, space: dict[str, tuple[int, ...]]) -> list[MoeConfig]:
    """The configs worth timing for `batch` tokens, in a stable order."""
    per_expert = shape.tokens_per_expert(batch)
    tallest = max(16, 2 ** math.ceil(math.log2(max(per_expert, 1))) * 2)
    block_m = [m for m in space["BLOCK_SIZE_M"] if m <= tallest] or [min(space["BLOCK_SIZE_M"])]
    found: list[MoeConfig] = []
    for m, n, k, group, warps, stages in itertools.product(
        block_m, space["BLOCK_SIZE_N"], space["BLOCK_SIZE_K"], space["GROUP_SIZE_M"],
        space["num_warps"], space["num_stages"],
    ):
        if group > 1 and per_expert <= m:
            continue  # one M tile per expert: grouping tiles changes nothing
        if k > shape.hidden or n > 2 * shape.intermediate:
            continue
        config = {"BLOCK_SIZE_M": m, "BLOCK_SIZE_N": n, "BLOCK_SIZE_K": k,
                  "GROUP_SIZE_M": group, "num_warps": warps, "num_stages": stages}
        if shared_memory_bytes(config) <= SHARED_MEMORY_BYTES:
            found.append(config)
    return found


def weight_copies(batch: int, shape: MoeShape) -> int:
    """How many weight sets the timed calls rotate through, so that twice the L2 cache lies
    between two reads of one set: tiny batches would otherwise time a warm L2."""
    active = shape.active_weight_bytes(batch)
    if active >= 2 * L2_BYTES:
        return 1
    return min(MAX_WEIGHT_COPIES, math.ceil(2 * L2_BYTES / active) + 1)


def config_key(config: MoeConfig) -> tuple[int, ...]:
    return tuple(config[name] for name in sorted(config))


def kernel_variant(batch: int, shape: MoeShape) -> tuple[int, int]:
    """What else Triton compiles a kernel for, beyond the config: vLLM's unsorted path for
    tiny batches, and whether the token-expert pairs divide by 16 (Triton specialises
    integer arguments on it)."""
    return int(shape.naive_assignment(batch)), int(batch * shape.topk % 16 == 0)


@dataclass
class Plan:
    batches: list[int]
    per_batch: dict[int, list[MoeConfig]]

    @property
    def distinct_configs(self) -> int:
        return len({config_key(c) for configs in self.per_batch.values() for c in configs})

    @property
    def timings(self) -> int:
        return sum(len(configs) for configs in self.per_batch.values())


def plan(batches: Sequence[int], shape: MoeShape, space: str) -> Plan:
    return Plan(list(batches), {b: candidates(b, shape, SPACES[space]) for b in batches})


def pick(default: MoeConfig, default_us: float, timed: list[tuple[float, MoeConfig]]
         ) -> tuple[float, MoeConfig]:
    """The fastest config, unless it beats vLLM's heuristic by less than MIN_GAIN."""
    fastest = min(timed, key=lambda t: t[0], default=(default_us, default))
    if fastest[0] > default_us * (1 - MIN_GAIN):
        return default_us, default
    return fastest


def vllm_table(
    best: dict[int, MoeConfig], untuned: dict[int, MoeConfig], triton_version: str | None
) -> dict[str, Any]:
    """The JSON vLLM's `get_moe_configs` reads: batch size (a string) -> config. vLLM runs
    the nearest size's config for any batch, so the planned sizes not tuned (a run cut at
    its deadline) keep vLLM's heuristic explicitly instead of inheriting a neighbour's."""
    merged = {**untuned, **best}
    table: dict[str, Any] = {str(b): merged[b] for b in sorted(merged)}
    if triton_version:
        table["triton_version"] = triton_version
    return table


@dataclass
class BatchResult:
    batch: int
    default_us: float | None
    best_us: float | None
    best: MoeConfig | None
    tried: int  # candidates timed, vLLM's heuristic not counted
    failed: int
    seconds: float

    @property
    def speedup(self) -> float | None:
        if self.default_us is None or self.best_us is None or self.best_us <= 0:
            return None
        return round(self.default_us / self.best_us, 3)


# -- on the GPU ----------------------------------------------------------------------------


class MoeBench:
    """Inputs for `batch` tokens and a timer of vLLM's fused_experts under a config."""

    def __init__(self, shape: MoeShape, batch: int, seed: int = 0, copies: int = 1) -> None:
        """`copies`: weight sets the timed calls rotate through (see `weight_copies`)."""
        import torch

        generator = torch.Generator(device="cuda").manual_seed(seed)
        dtype, device = torch.bfloat16, "cuda"
        e, k, n = shape.experts, shape.hidden, shape.intermediate
        self.hidden = torch.randn(batch, k, dtype=dtype, device=device, generator=generator)
        self.weights = [
            (torch.randn(e, 2 * n, k, dtype=dtype, device=device, generator=generator) / 32,
             torch.randn(e, k, n, dtype=dtype, device=device, generator=generator) / 32)
            for _ in range(copies)
        ]
        router = torch.randn(batch, e, device=device, generator=generator)
        weights, ids = torch.topk(torch.softmax(router, dim=-1), shape.topk, dim=-1)
        self.topk_weights, self.topk_ids = weights.to(torch.float32), ids.to(torch.int32)

    def _call(self, copy: int = 0) -> Any:
        from vllm.model_executor.layers.fused_moe import fused_experts

        w1, w2 = self.weights[copy % len(self.weights)]
        return fused_experts(self.hidden, w1, w2, self.topk_weights, self.topk_ids)

    def run_once(self, config: MoeConfig) -> None:
        """Compiles the config's kernels (raises when they do not compile or launch)."""
        import torch

        with _override(config):
            self._call()
        torch.cuda.synchronize()

    def time_us(self, config: MoeConfig) -> float:
        """Microseconds a call, from CUDA graphs of GRAPH_CALLS calls (median of replays)."""
        import torch

        with _override(config):
            self._call()  # compile, and allocate outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                for call in range(GRAPH_CALLS):
                    self._call(call)
        torch.cuda.synchronize()
        graph.replay()  # warm
        times = []
        for _ in range(TIMED_REPLAYS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000 / GRAPH_CALLS)
        del graph
        return float(statistics.median(times))


@contextlib.contextmanager
def _override(config: MoeConfig) -> Iterator[None]:
    from vllm.model_executor.layers.fused_moe import override_config

    with override_config(dict(config)):
        yield


def vllm_default(batch: int, shape: MoeShape) -> MoeConfig:
    """What vLLM runs without a table: its heuristic (explicit, so that a table already in
    VLLM_TUNED_CONFIG_FOLDER cannot stand in for the baseline)."""
    from vllm.model_executor.layers.fused_moe.fused_moe import get_default_config

    config: MoeConfig = get_default_config(
        batch, shape.experts, shape.intermediate, shape.hidden, shape.topk, None
    )
    return config


def _compile_worker(job: tuple[MoeShape, list[tuple[int, MoeConfig]], float]) -> int:
    """Runs each (batch, config) once so Triton's disk cache holds its kernels."""
    shape, work, deadline = job
    benches: dict[int, MoeBench] = {}
    compiled = 0
    for batch, config in work:
        if time.time() > deadline:
            break
        if batch not in benches:
            benches[batch] = MoeBench(shape, batch)
        bench = benches[batch]
        try:
            bench.run_once(config)
            compiled += 1
        except Exception:  # the timing process skips it too (counted there)
            pass
    return compiled


def compile_all(tuning: Plan, shape: MoeShape, workers: int, deadline: float) -> int:
    """Compile every planned kernel in `workers` spawned processes; returns how many ran."""
    if workers <= 0:
        return 0
    work = [(b, c) for b in tuning.batches for c in tuning.per_batch[b]]
    # Distinct configs first, each once, so that the pool compiles in parallel what the
    # timing process would otherwise compile one after another.
    seen: set[tuple[int, ...]] = set()
    ordered: list[tuple[int, MoeConfig]] = []
    for batch, config in work:
        key = (*kernel_variant(batch, shape), *config_key(config))
        if key not in seen:
            seen.add(key)
            ordered.append((batch, config))
    shares = [ordered[i::workers] for i in range(workers)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        return sum(pool.map(_compile_worker, [(shape, share, deadline) for share in shares]))


def tune(args: argparse.Namespace, shape: MoeShape, tuning: Plan) -> dict[str, Any]:
    import torch
    import triton
    import vllm
    from vllm.model_executor.layers.fused_moe.fused_moe import get_config_file_name

    began = time.time()
    deadline = began + args.deadline_s
    # Fail in seconds, not after the compile pool, if vLLM's kernel cannot run here.
    MoeBench(shape, 16).time_us(vllm_default(16, shape))
    compiled = compile_all(tuning, shape, args.compile_workers, deadline - 60)
    print(f"compiled {compiled} kernels in {time.time() - began:.0f} s", flush=True)
    table_dir = args.out / "moe"
    table_dir.mkdir(parents=True, exist_ok=True)
    table_path = table_dir / get_config_file_name(shape.experts, shape.intermediate, None)
    best: dict[int, MoeConfig] = {}
    results: list[BatchResult] = []
    report: dict[str, Any] = {
        "what": "fused-MoE configs tuned for DeepSeek-OCR's shapes (bench/tune_moe.py)",
        "device": torch.cuda.get_device_name(0),
        "vllm": vllm.__version__, "triton": triton.__version__, "torch": torch.__version__,
        "shape": asdict(shape), "space": args.space, "table": table_path.name,
        "compile_workers": args.compile_workers, "kernels_compiled_first": compiled,
        "batches": [],
    }
    untuned = {b: vllm_default(b, shape) for b in tuning.batches}
    # Written before the first size too: a run cut before it still leaves a whole table.
    report["untuned_batches"] = sorted(untuned)
    _write_json(table_path, vllm_table(best, untuned, triton.__version__))
    _write_json(args.out / "tune-moe.json", report)
    for batch in tuning.batches:
        if time.time() > deadline - 20:
            print(f"deadline: stopping before M={batch}", flush=True)
            break
        started = time.time()
        bench = MoeBench(shape, batch, copies=weight_copies(batch, shape))
        default = vllm_default(batch, shape)
        default_us = bench.time_us(default)
        timed: list[tuple[float, MoeConfig]] = []
        failed = 0
        for config in tuning.per_batch[batch]:
            if time.time() > deadline:
                break
            try:
                timed.append((bench.time_us(config), config))
            except Exception:  # does not compile or launch on this GPU
                failed += 1
        del bench
        torch.cuda.empty_cache()
        winner = pick(default, default_us, timed)  # the table is never slower than vLLM
        result = BatchResult(batch, round(default_us, 2), round(winner[0], 2), winner[1],
                             len(timed), failed, round(time.time() - started, 1))
        results.append(result)
        best[batch] = winner[1]
        print(f"M={batch}: default {result.default_us} us, best {result.best_us} us "
              f"({result.speedup}x) of {result.tried} ({failed} failed) in {result.seconds} s",
              flush=True)
        report["batches"] = [{**asdict(r), "speedup": r.speedup} for r in results]
        report["seconds"] = round(time.time() - began, 1)
        untuned.pop(batch, None)
        report["untuned_batches"] = sorted(untuned)
        _write_json(table_path, vllm_table(best, untuned, triton.__version__))
        _write_json(args.out / "tune-moe.json", report)
    return report


def _write_json(path: Path, value: Any) -> None:
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(value, indent=2) + "\n")
    staging.replace(path)  # a run killed mid-write keeps the previous whole file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tune_moe", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/ocr-out")))
    parser.add_argument("--model-config", type=Path,
                        default=Path(os.environ.get("OCR_MODEL", "/tmp/ocr-model")) / "config.json",
                        help="the model's config.json (default: DeepSeek-OCR's shapes)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)),
                        help="token counts to tune, most important first")
    parser.add_argument("--space", choices=sorted(SPACES), default="pruned")
    parser.add_argument("--deadline-s", type=float, default=540.0)
    parser.add_argument("--compile-workers", type=int,
                        default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    shape = MoeShape.from_model(args.model_config)
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    tuning = plan(batches, shape, args.space)
    print(json.dumps({"shape": asdict(shape), "space": args.space,
                      "configs_per_batch": {b: len(c) for b, c in tuning.per_batch.items()},
                      "distinct_configs": tuning.distinct_configs,
                      "timings": tuning.timings}), flush=True)
    if args.dry_run:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    tune(args, shape, tuning)
    return 0


if __name__ == "__main__":
    sys.exit(main())
