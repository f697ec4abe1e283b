"""vLLM's DeepSeek-OCR model with the vision encoder batched across the pages of a step.

Experimental (`OCR_VISION_BATCH` > 0; not yet measured on a GPU). vLLM imports this class
by name inside its processes once `register` has put it in vLLM's model registry under
DeepSeek-OCR's architecture; it changes nothing but how image features are computed (see
consumer/engines/deepseek_vision.py), the weights, processor and prompt layout are vLLM's.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.models.deepseek_ocr import DeepseekOCRForCausalLM

from consumer.engines.deepseek_modes import vision_batch
from consumer.engines.deepseek_vision import encode_in_chunks, page_embeddings


class BatchedVisionDeepseekOCR(DeepseekOCRForCausalLM):  # type: ignore[misc]
    """DeepSeek-OCR whose SAM + CLIP + projector run once per step, not once per page."""

    def _encode_views(self, images: Any) -> Any:
        sam = self.sam_model(images)
        clip = self.vision_model(images, sam)
        features = torch.cat((clip[:, 1:], sam.flatten(2).permute(0, 2, 1)), dim=-1)
        return self.projector(features)

    def _pixel_values_to_embedding(
        self, pixel_values: Any, images_crop: Any, images_spatial_crop: Any
    ) -> list[Any]:
        chunk = max(1, vision_batch())
        # One sync for the grid sizes of the whole step, instead of several per page.
        tiles = [(int(w), int(h)) for w, h in images_spatial_crop.tolist()]
        global_features = encode_in_chunks(self._encode_views, pixel_values, chunk)
        tiled = any(w > 1 or h > 1 for w, h in tiles)
        tile_features = (
            encode_in_chunks(self._encode_views, images_crop, chunk)
            if tiled and images_crop is not None and images_crop.shape[0] > 0
            else None
        )
        return page_embeddings(
            global_features, tile_features, tiles, self.image_newline, self.view_seperator
        )
