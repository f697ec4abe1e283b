"""DeepSeek-OCR's pixels as uint8 from the frontend, normalised on the GPU (issue 21, lever 1).

vLLM 0.26's DeepSeek-OCR processor turns every view of a page (the 1024x1024 global view and
up to six 640x640 tiles in gundam mode) into float32 CHW tensors normalised on the CPU, which
vLLM then casts to bf16: about 21 MB a page that the frontend serialises through ZMQ, the
engine core deserialises, stacks into new pinned buffers and copies to the GPU, all on
single Python threads (bench/README.md, "Steady state on the H100"). With this switch on:

- the frontend keeps each view as uint8 (half the bytes of bf16, and none of the float
  passes: to_tensor, normalise, cast), and
- the model normalises on the GPU: inside the copy into the encoder graphs' input buffers,
  or before the eager encoder, bit-identical to vLLM's bf16 values (`offset_and_scale`);
- `images_spatial_crop` (two ints a page) stays on the CPU, so the encoder's bookkeeping
  (tiles per page, output sizes) no longer waits on the GPU with `int()` / `.item()`.

Where the classes live: `deepseek_pixels_vllm` (imports torch and vLLM). This module imports
only the standard library at import time, since vLLM loads it through the plugin hook
(`deepseek_modes.vllm_general_plugin`) in each of its processes.

The setting is `OCR_VISION_UINT8` (`Settings.vision_uint8`): `VllmEngine` exports it as `ENV`
before it starts vLLM, `RealVllm` registers the model class it asks for in this process, and
the plugin hook does the same in the engine core vLLM starts. The architecture name stays
vLLM's (`ARCHITECTURE`), so the model's config.json and weights are unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

ENV = "OCR_VISION_UINT8"
ARCHITECTURE = "DeepseekOCRForCausalLM"
VLLM_CLASS = "vllm.model_executor.models.deepseek_ocr:DeepseekOCRForCausalLM"
OUR_CLASS = "consumer.engines.deepseek_pixels_vllm:DeepseekOCRUint8ForCausalLM"

# DeepSeek-OCR's normalisation (vLLM's DeepseekOCRProcessor defaults, the model's training):
# (x / 255 - mean) / std with one mean and std for all three channels.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5

_registered: str | None = None  # the class this process registered, if any


def offset_and_scale(
    mean: Sequence[float] = (PIXEL_MEAN,) * 3, std: Sequence[float] = (PIXEL_STD,) * 3
) -> tuple[float, float]:
    """(offset, scale) such that (x - offset) / scale == (x / 255 - mean) / std for uint8 x.

    The GPU computes it as two in-place ops on the bf16 copy of x. Exactness: x - offset is
    exact in bf16 (8 significant bits) when the offset is an integer in 0..255 or 127.5
    (then |x - offset| is a half-integer below 128), so only the division rounds, once; for
    DeepSeek-OCR's (127.5, 127.5) the result is bit-identical to vLLM's bf16 for all 256
    levels (tests/unit/test_deepseek_pixels.py). Raises ValueError for per-channel
    statistics or an offset the bf16 copy could not subtract exactly.
    """
    if len(set(mean)) != 1 or len(set(std)) != 1:
        raise ValueError(f"uint8 pixels need one mean and std for all channels: {mean}, {std}")
    offset, scale = 255.0 * mean[0], 255.0 * std[0]
    exact = offset == 127.5 or (offset.is_integer() and 0 <= offset <= 255)
    if not exact or scale <= 0:
        raise ValueError(f"mean {mean[0]} and std {std[0]} cannot be applied exactly in bf16")
    return offset, scale


def enabled_in_env() -> bool:
    """The switch as this process's environment says (unset: off; the engine sets it)."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def apply_from_env() -> None:
    """Register the model class `ENV` asks for with vLLM's model registry. With the switch
    off, vLLM's registry is left as it ships unless this process registered ours before."""
    global _registered
    wanted = OUR_CLASS if enabled_in_env() else VLLM_CLASS
    if wanted == (_registered or VLLM_CLASS):
        return
    from vllm.model_executor.models import ModelRegistry

    ModelRegistry.register_model(ARCHITECTURE, wanted)
    _registered = wanted
    # vLLM caches the class it resolved for a model config per process; a second engine
    # in this process must resolve again (private: absent in other vLLM versions).
    try:
        from vllm.model_executor.model_loader import utils as loader_utils

        loader_utils._MODEL_ARCH_BY_HASH.clear()
    except (ImportError, AttributeError):
        pass
