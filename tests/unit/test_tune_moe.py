"""The fused-MoE tuner's plan (bench/tune_moe.py) without a GPU: which configs it times for
a batch size, and the table it writes in the form vLLM reads."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import tune_moe
from bench.tune_moe import SPACES, MoeShape, candidates, shared_memory_bytes, vllm_table

REPO = Path(__file__).resolve().parents[2]
SHAPE = MoeShape(**tune_moe.DEEPSEEK_OCR)


def test_the_shapes_are_read_from_the_model_folder_deploy_gpu_writes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_model", REPO / "deploy/gpu/make_model.py")
    assert spec is not None and spec.loader is not None
    make_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_model)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(make_model.model_config(12)))
    assert MoeShape.from_model(config) == SHAPE == MoeShape(64, 1280, 896, 6)
    assert MoeShape.from_model(tmp_path / "missing.json") == SHAPE


@given(batch=st.integers(1, 20_000), space=st.sampled_from(sorted(SPACES)))
def test_every_candidate_fits_and_none_is_pointless(batch: int, space: str) -> None:
    found = candidates(batch, SHAPE, SPACES[space])
    assert found, "every batch size gets something to time"
    per_expert = SHAPE.tokens_per_expert(batch)
    tallest = max(16, 2 ** math.ceil(math.log2(per_expert)) * 2)
    for config in found:
        assert shared_memory_bytes(config) <= tune_moe.SHARED_MEMORY_BYTES
        assert config["BLOCK_SIZE_M"] <= tallest, "a tile of mostly padding"
        if config["GROUP_SIZE_M"] > 1:
            assert per_expert > config["BLOCK_SIZE_M"], "grouping one tile per expert"
    assert len({tune_moe.config_key(c) for c in found}) == len(found)


def test_decode_batches_get_short_tiles_and_prefill_tall_ones() -> None:
    decode = candidates(256, SHAPE, SPACES["pruned"])  # 24 tokens an expert
    assert {c["BLOCK_SIZE_M"] for c in decode} == {16, 32, 64}
    prefill = candidates(8192, SHAPE, SPACES["pruned"])
    assert max(c["BLOCK_SIZE_M"] for c in prefill) == 128
    assert {c["GROUP_SIZE_M"] for c in prefill} == {1, 16, 32}


def test_the_table_is_what_vllm_reads() -> None:
    best = {256: {"BLOCK_SIZE_M": 32}, 16: {"BLOCK_SIZE_M": 16}}
    untuned = {8192: {"BLOCK_SIZE_M": 128}}  # cut at the deadline: vLLM's heuristic kept
    table = json.loads(json.dumps(vllm_table(best, untuned, "3.5.0")))
    assert list(table) == ["16", "256", "8192", "triton_version"]
    # vLLM's get_moe_configs: drop triton_version, int keys, nearest batch size wins.
    table.pop("triton_version")
    configs = {int(k): v for k, v in table.items()}
    assert configs[min(configs, key=lambda m: abs(m - 300))] == {"BLOCK_SIZE_M": 32}
    # A prefill chunk gets the heuristic, not the nearest tuned decode config.
    assert configs[min(configs, key=lambda m: abs(m - 6000))] == {"BLOCK_SIZE_M": 128}


def test_a_candidate_must_beat_the_heuristic_clearly() -> None:
    default = {"BLOCK_SIZE_M": 64}
    near, far = {"BLOCK_SIZE_M": 16}, {"BLOCK_SIZE_M": 32}
    assert tune_moe.pick(default, 100.0, [(98.0, near)]) == (100.0, default)  # noise
    assert tune_moe.pick(default, 100.0, [(98.0, near), (90.0, far)]) == (90.0, far)
    assert tune_moe.pick(default, 100.0, []) == (100.0, default)  # none compiled


def test_kernels_are_compiled_once_per_variant_triton_makes() -> None:
    assert tune_moe.kernel_variant(2, SHAPE) == (1, 0)  # 12 pairs: unsorted, not /16
    assert tune_moe.kernel_variant(4, SHAPE) == (0, 0)  # 24 pairs
    assert tune_moe.kernel_variant(256, SHAPE) == (0, 1)


def test_dry_run_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert tune_moe.main(["--dry-run", "--model-config", "/nonexistent",
                          "--batch-sizes", "256,8192"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["configs_per_batch"] == {
        "256": len(candidates(256, SHAPE, SPACES["pruned"])),
        "8192": len(candidates(8192, SHAPE, SPACES["pruned"])),
    }


def test_tiny_batches_rotate_weights_past_the_l2_cache() -> None:
    # One token reads 6 experts' weights (41 MB): it would stay in L2 across the timed calls.
    assert SHAPE.active_weight_bytes(1) == 6 * 3 * 896 * 1280 * 2
    copies = tune_moe.weight_copies(1, SHAPE)
    assert (copies - 1) * SHAPE.active_weight_bytes(1) >= 2 * tune_moe.L2_BYTES
    assert copies <= tune_moe.MAX_WEIGHT_COPIES
    assert tune_moe.weight_copies(256, SHAPE) == 1  # all 64 experts: 440 MB
