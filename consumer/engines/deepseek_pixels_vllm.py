"""vLLM 0.26's DeepSeek-OCR with uint8 pixels: the classes behind `deepseek_pixels`.

Subclasses, registered under vLLM's own architecture name by `deepseek_pixels.apply_from_env`;
everything not overridden here is vLLM's. The view geometry (sizes, tiling, placeholder
counts) stays in vLLM's modules, so `deepseek_modes` still sets the resolution mode.

Frontend (renderer threads): `Uint8DeepseekOCRProcessor` returns each view as uint8 CHW
instead of float32 normalised (which vLLM would then cast to bf16).
Engine core: `DeepseekOCRUint8ForCausalLM` normalises on the GPU, before any encoder runs:
- encoder CUDA graphs: in the copy into a graph's input buffer (`normalise_into`, the
  manager's per-buffer copy hook), so the captured graphs and their bf16 buffers are vLLM's;
- eager encoder (graphs off, batches no graph fits, vLLM's memory profiling):
  `normalised` before vLLM's code, which also tests pixel sums against 0 (a black uint8
  page would sum to 0 where its normalised form does not).
`images_spatial_crop` is kept on the CPU (`keep_on_cpu`): vLLM's encoder bookkeeping reads
it with `int()` / `.item()` / Python comparisons, each a GPU sync when it lives there.

Imports torch and vLLM: load it only where vLLM runs (vLLM imports it by name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from vllm.model_executor.models import deepseek_ocr as vllm_ocr
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

from consumer.engines.deepseek_pixels import offset_and_scale

OFFSET, SCALE = offset_and_scale()
PIXEL_KEYS = ("pixel_values", "images_crop")  # the two views' tensors, [n, 3, side, side]


def normalised(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 views as the model's normalised `dtype` (a new tensor on the same device);
    other tensors as they are (vLLM's own bf16 path, or an empty view list)."""
    if pixels.dtype != torch.uint8:
        return pixels
    return pixels.to(dtype).sub_(OFFSET).div_(SCALE)


def normalise_into(buffer: torch.Tensor, pixels: torch.Tensor) -> None:
    """An encoder graph's input copy: `buffer[:n]` = the n views normalised, the rest 0 (as
    vLLM's default copy leaves padding). The uint8 -> bf16 copy is exact (bf16 holds
    0..255), then two in-place passes over the n views on the GPU; no temporary."""
    n = pixels.shape[0]
    head = buffer[:n]
    head.copy_(pixels)
    if pixels.dtype == torch.uint8:
        head.sub_(OFFSET).div_(SCALE)
    buffer[n:].zero_()


def uint8_chw(image: Image.Image) -> torch.Tensor:
    """A view as [3, H, W] uint8: the layout of torchvision's to_tensor without the float
    conversion. One copy out of PIL, one to make the channel-first tensor contiguous."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    hwc = torch.from_numpy(np.array(image))  # writable: torch warns on a read-only array
    return hwc.permute(2, 0, 1).contiguous()


class Uint8ImageTransform:
    """Stands in for vLLM's `ImageTransform`: the processor reads `.mean` (the global view's
    padding colour, int(0.5 * 255) = 127 either way) and calls it on each view."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = mean, std  # what the GPU applies (OFFSET, SCALE), for readers

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return uint8_chw(image)


class Uint8DeepseekOCRProcessor(DeepseekOCRProcessor):  # type: ignore[misc]
    """vLLM's processor with uint8 views. Its tokens, tiling and padding are vLLM's.

    No `__init__` of its own: transformers builds processors from the parameters it reads
    off `__init__`'s code, which a `*args, **kwargs` override would hide."""

    @property
    def image_transform(self) -> Uint8ImageTransform:
        return self._uint8_transform

    @image_transform.setter
    def image_transform(self, transform: Any) -> None:
        # vLLM's __init__ assigns its float transform here; keep its statistics, refusing
        # any the GPU side (OFFSET, SCALE) would not reproduce.
        if not transform.normalize or offset_and_scale(transform.mean, transform.std) != (
            OFFSET,
            SCALE,
        ):
            raise ValueError("the GPU normalises with DeepSeek-OCR's mean and std only")
        self._uint8_transform = Uint8ImageTransform(transform.mean, transform.std)

    def tokenize_with_images(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        out = list(super().tokenize_with_images(*args, **kwargs))
        # A page without tiles gets vLLM's empty float32 tile tensor, which vLLM would cast
        # to bf16; concatenated with other pages' uint8 tiles it would promote them to
        # un-normalised bf16. Keep every view tensor uint8.
        for index in (1, 2):  # pixel_values, images_crop
            if out[index].numel() == 0:
                out[index] = out[index].to(torch.uint8)
        return tuple(out)


class Uint8DeepseekOCRProcessingInfo(vllm_ocr.DeepseekOCRProcessingInfo):  # type: ignore[misc]
    def get_hf_processor(self, **kwargs: object) -> Uint8DeepseekOCRProcessor:
        # vLLM's method with our class; the sizes are read from vLLM's module at call time,
        # where deepseek_modes may have set another resolution mode.
        config = dict(
            image_size=vllm_ocr.IMAGE_SIZE,
            base_size=vllm_ocr.BASE_SIZE,
            crop_mode=vllm_ocr.CROP_MODE,
            strategy="v1",
        )
        processor: Uint8DeepseekOCRProcessor = self.ctx.get_hf_processor(
            Uint8DeepseekOCRProcessor, **{**config, **kwargs}
        )
        return processor


class Uint8DeepseekOCRMultiModalProcessor(vllm_ocr.DeepseekOCRMultiModalProcessor):  # type: ignore[misc]
    def _get_mm_fields_config(
        self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        # Two ints a page, read on the CPU by every bookkeeping step of the encoder.
        fields["images_spatial_crop"] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields


@MULTIMODAL_REGISTRY.register_processor(
    Uint8DeepseekOCRMultiModalProcessor,
    info=Uint8DeepseekOCRProcessingInfo,
    dummy_inputs=vllm_ocr.DeepseekOCRDummyInputsBuilder,
)
class DeepseekOCRUint8ForCausalLM(vllm_ocr.DeepseekOCRForCausalLM):  # type: ignore[misc]
    """vLLM's DeepSeek-OCR model, fed uint8 views (see the module's docstring)."""

    def _normalised_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        dtype = self.model_config.dtype
        return {
            key: normalised(value, dtype)
            if key in PIXEL_KEYS and isinstance(value, torch.Tensor)
            else value
            for key, value in kwargs.items()
        }

    def get_encoder_cudagraph_config(self) -> Any:
        config = super().get_encoder_cudagraph_config()
        # The manager copies each batch into a graph's bf16 input buffers through these
        # hooks (its default: zero, then copy): normalising there keeps the graphs as vLLM
        # captures them and needs no bf16 temporary.
        config.padding_logics = {
            **config.padding_logics,
            **{key: normalise_into for key in PIXEL_KEYS},
        }
        return config

    def embed_multimodal(self, **kwargs: object) -> Any:
        return super().embed_multimodal(**self._normalised_kwargs(kwargs))

    def encoder_eager_forward(self, mm_kwargs: dict[str, Any], path: str = "default") -> Any:
        return super().encoder_eager_forward(self._normalised_kwargs(mm_kwargs), path)
