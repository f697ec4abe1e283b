"""uint8 pixels normalised on the GPU are the bf16 pixels vLLM's own path gives (issue 21).

Greedy text cannot tell the two paths apart with dummy weights, so this compares what the
encoder receives: vLLM's DeepseekOCRProcessor (float32, cast to bf16 as vLLM's processing
context does) against our uint8 processor normalised on the GPU, both ways the model does
it (`normalised` before the eager encoder, `normalise_into` in a graph's input copy), for
one page of each synthetic kind of the steady-state benchmark, drawn with PIL at 150 dpi.
No engine: the processors and the tensors alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

PROMPT = "<image>\nFree OCR."


@pytest.fixture(scope="module")
def processors(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer
    from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

    from consumer.engines.deepseek_pixels_vllm import Uint8DeepseekOCRProcessor

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    sizes = {"image_size": 640, "base_size": 1024}  # gundam, vLLM's default
    return DeepseekOCRProcessor(tokenizer, **sizes), Uint8DeepseekOCRProcessor(tokenizer, **sizes)


def _kinds() -> list[Any]:
    from bench.mixed_pages import mixed_images

    return mixed_images(distinct=5)  # report, dense, table, figure, slide


@pytest.mark.parametrize("index", range(5))
def test_gpu_normalised_uint8_views_equal_vllms_bf16(
    processors: tuple[Any, Any], index: int
) -> None:
    import torch

    from consumer.engines.deepseek_pixels_vllm import normalise_into, normalised

    page = _kinds()[index]
    theirs, ours = processors
    expected = theirs(prompt=PROMPT, images=[page.image], crop_mode=True)
    got = ours(prompt=PROMPT, images=[page.image], crop_mode=True)
    # Same prompt tokens and tiling: only the pixels' type differs.
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["images_spatial_crop"], expected["images_spatial_crop"])
    for key in ("pixel_values", "images_crop"):
        assert got[key].dtype == torch.uint8, key
        reference = expected[key].to(torch.bfloat16).cuda()  # vLLM's cast, then its H2D copy
        pixels = got[key].cuda()
        eager = normalised(pixels, torch.bfloat16)
        # A graph buffer with room for two more views, poisoned: every element is written.
        buffer = torch.full(
            (pixels.shape[0] + 2, *pixels.shape[1:]), 7.0, dtype=torch.bfloat16, device="cuda"
        )
        normalise_into(buffer, pixels)
        torch.cuda.synchronize()
        for name, tensor in (("eager", eager), ("graph copy", buffer[: pixels.shape[0]])):
            differ = int((tensor != reference).sum())
            print(f"{page.kind} {key} {name}: {reference.numel()} values, {differ} differ")
            torch.testing.assert_close(tensor, reference, rtol=2**-7, atol=2**-8)
            assert differ == 0, f"{page.kind} {key} {name}: {differ} values off by rounding"
        assert not buffer[pixels.shape[0] :].any(), "padding views must be zero"


def test_gpu_every_level_is_bit_identical() -> None:
    import torch
    import torchvision.transforms as T

    from consumer.engines.deepseek_pixels_vllm import normalised

    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16)
    reference = T.Normalize((0.5,) * 3, (0.5,) * 3)(levels.float() / 255).to(torch.bfloat16)
    got = normalised(levels.contiguous().cuda(), torch.bfloat16).cpu()
    assert torch.equal(got, reference)


def test_a_page_without_tiles_keeps_uint8_views(processors: tuple[Any, Any]) -> None:
    import torch
    from PIL import Image

    _, ours = processors
    small = Image.new("RGB", (600, 400), "white")  # <= 640 a side: a global view, no tiles
    got = ours(prompt=PROMPT, images=[small], crop_mode=True)
    assert got["images_crop"].shape[0] == 0
    # Concatenated with a tiled page's views, an empty float tensor would promote them.
    assert got["images_crop"].dtype == got["pixel_values"].dtype == torch.uint8


def test_vllm_builds_our_processor_from_the_registry(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frontend half as vLLM builds it: the registry resolves the architecture to our
    class, whose processor (made by transformers' from_pretrained, as vLLM makes it) gives
    uint8 views and keeps images_spatial_crop on the CPU."""
    import torch
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from consumer.engines import deepseek_pixels
    from consumer.engines.deepseek_pixels_vllm import (
        DeepseekOCRUint8ForCausalLM,
        Uint8DeepseekOCRProcessor,
    )

    monkeypatch.setenv(deepseek_pixels.ENV, "1")
    deepseek_pixels.apply_from_env()
    try:
        config = ModelConfig(model=str(model_dir), dtype="bfloat16", max_model_len=8192)
        assert MULTIMODAL_REGISTRY._get_model_cls(config) is DeepseekOCRUint8ForCausalLM
        processor = MULTIMODAL_REGISTRY.create_processor(config)
        hf = processor.info.get_hf_processor()
        assert isinstance(hf, Uint8DeepseekOCRProcessor)
        assert (hf.image_size, hf.base_size) == (640, 1024)
        page = _kinds()[0].image
        outputs = processor._call_hf_processor(PROMPT, {"images": [page]}, {}, {})
        assert outputs["pixel_values"].dtype == torch.uint8
        fields = processor._get_mm_fields_config(outputs, {})
        assert fields["images_spatial_crop"].field.keep_on_cpu
        assert not fields["pixel_values"].field.keep_on_cpu
    finally:
        monkeypatch.setenv(deepseek_pixels.ENV, "0")
        deepseek_pixels.apply_from_env()
