"""The uint8 pixel path's pure parts: its arithmetic and its model-class switch.

The GPU side (the same arithmetic on real pages, through the processors) is in
tests/gpu/test_deepseek_pixels_gpu.py.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consumer.engines import deepseek_modes, deepseek_pixels


def bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float32: what torch stores."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


LEVELS = np.arange(256, dtype=np.float32)
# vLLM's path: torchvision's to_tensor (x / 255) and normalize ((t - 0.5) / 0.5) in float32,
# then the cast to the model's bf16.
VLLM_BF16 = bf16((LEVELS / np.float32(255) - np.float32(0.5)) / np.float32(0.5))


def test_offset_and_scale_of_deepseek_ocr() -> None:
    assert deepseek_pixels.offset_and_scale() == (127.5, 127.5)


@pytest.mark.parametrize(
    ("mean", "std"),
    [
        ((0.48, 0.46, 0.41), (0.27, 0.26, 0.28)),  # CLIP's: one value per channel
        ((0.3,) * 3, (0.5,) * 3),  # x - 76.5 reaches 178.5: 9 significant bits
        ((0.5,) * 3, (0.0,) * 3),
    ],
)
def test_statistics_the_gpu_cannot_apply_exactly_are_refused(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    with pytest.raises(ValueError):
        deepseek_pixels.offset_and_scale(mean, std)


def test_two_bf16_ops_give_vllms_values_for_every_level() -> None:
    offset, scale = (np.float32(v) for v in deepseek_pixels.offset_and_scale())
    # The bf16 copy of x is exact; so is x - offset (the claim offset_and_scale relies on).
    shifted = bf16(LEVELS - offset)
    assert np.array_equal(shifted, LEVELS - offset)
    # Each torch op on bf16 computes in float32 and rounds once: true division (CPU) ...
    assert np.array_equal(bf16(shifted / scale), VLLM_BF16)
    # ... and CUDA's division by a scalar, a multiplication by its float32 reciprocal.
    assert np.array_equal(bf16(shifted * (np.float32(1) / scale)), VLLM_BF16)


def test_a_single_multiply_add_would_not_match() -> None:
    # Why two ops and not x * (2/255) - 1: rounding twice moves half the levels.
    two_roundings = bf16(bf16(LEVELS * np.float32(2 / 255)) - np.float32(1))
    assert not np.array_equal(two_roundings, VLLM_BF16)


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("1", True), ("true", True), (" ON ", True), ("0", False), ("false", False), ("", False)],
)
def test_switch_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool
) -> None:
    monkeypatch.setenv(deepseek_pixels.ENV, value)
    assert deepseek_pixels.enabled_in_env() is enabled


class FakeRegistry:
    def __init__(self) -> None:
        self.registered: list[tuple[str, str]] = []

    def register_model(self, architecture: str, model_class: str) -> None:
        self.registered.append((architecture, model_class))


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    models = types.ModuleType("vllm.model_executor.models")
    models.ModelRegistry = registry  # type: ignore[attr-defined]
    for name in ("vllm", "vllm.model_executor"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.model_executor.models", models)
    monkeypatch.setattr(deepseek_pixels, "_registered", None)
    yield registry


def test_off_leaves_vllms_registry_alone(
    fake_registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(deepseek_pixels.ENV, "0")
    deepseek_pixels.apply_from_env()
    assert fake_registry.registered == []


def test_on_registers_our_class_once_and_off_restores_vllms(
    fake_registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(deepseek_pixels.ENV, "1")
    deepseek_pixels.apply_from_env()
    deepseek_pixels.apply_from_env()  # vLLM loads plugins more than once
    monkeypatch.setenv(deepseek_pixels.ENV, "0")
    deepseek_pixels.apply_from_env()
    arch = deepseek_pixels.ARCHITECTURE
    assert fake_registry.registered == [
        (arch, deepseek_pixels.OUR_CLASS),
        (arch, deepseek_pixels.VLLM_CLASS),
    ]


def test_the_vllm_plugin_hook_registers_from_the_environment(
    fake_registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(deepseek_modes.ENV_MODE, raising=False)
    monkeypatch.setenv(deepseek_pixels.ENV, "1")
    deepseek_modes.vllm_general_plugin()
    assert fake_registry.registered == [(deepseek_pixels.ARCHITECTURE, deepseek_pixels.OUR_CLASS)]


def test_our_class_path_names_the_module_and_class() -> None:
    # vLLM imports OUR_CLASS by name in the engine core; keep it in step with the module.
    module, name = deepseek_pixels.OUR_CLASS.split(":")
    repo = Path(__file__).resolve().parents[2]
    source = (repo / (module.replace(".", "/") + ".py")).read_text()
    assert f"class {name}(" in source
