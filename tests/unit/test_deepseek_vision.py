"""The batched vision encoder's layout against vLLM 0.26's page-at-a-time one.

Needs torch (skipped where it is missing, as in CI): the encoders are small stand-ins with
no cross-image arithmetic, so batching may change only the last bits of a float64 (the
matrix kernels block a batch differently), never the layout.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from consumer.engines.deepseek_vision import (  # noqa: E402
    encode_in_chunks,
    grid_with_newlines,
    page_embeddings,
)

DIM = 5
generator = torch.Generator().manual_seed(7)
MIX = torch.randn(3, 4, generator=generator, dtype=torch.float64)
CLIP = torch.randn(4, 3, generator=generator, dtype=torch.float64)
PROJECT = torch.randn(7, DIM, generator=generator, dtype=torch.float64)
NEWLINE = torch.randn(DIM, generator=generator, dtype=torch.float64)
SEPARATOR = torch.randn(DIM, generator=generator, dtype=torch.float64)


def sam(images: Any) -> Any:  # [n, 3, s, s] -> [n, 4, s/16, s/16], as SAM's neck shapes it
    pooled = torch.nn.functional.avg_pool2d(images, 16)
    return torch.einsum("nchw,cd->ndhw", pooled, MIX)


def clip(images: Any, sam_features: Any) -> Any:  # -> [n, 1 + hw, 3]: a class token first
    tokens = sam_features.flatten(2).permute(0, 2, 1) @ CLIP
    return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


def encode(images: Any) -> Any:
    first = sam(images)
    second = clip(images, first)
    return torch.cat((second[:, 1:], first.flatten(2).permute(0, 2, 1)), dim=-1) @ PROJECT


def vllm_pages(pixel_values: Any, images_crop: Any, spatial: Any) -> list[Any]:
    """vLLM 0.26's DeepseekOCRForCausalLM._pixel_values_to_embedding, restated: each page's
    global view and tiles encoded on their own, the tiles first in the output."""
    is_tiled = (spatial[:, 0] > 1) | (spatial[:, 1] > 1)
    per_page = torch.where(is_tiled, spatial.prod(dim=-1), 0)
    crops = images_crop.split(per_page.tolist())
    pages = []
    for index in range(spatial.size(0)):
        features = encode(pixel_values[[index]])
        _, hw, dim = features.shape
        side = int(hw**0.5)
        grid = features.view(side, side, dim)
        glob = torch.cat([grid, NEWLINE[None, None, :].expand(side, 1, dim)], dim=1).view(-1, dim)
        parts = [glob, SEPARATOR[None, :]]
        patches = crops[index]
        if torch.sum(patches).item() != 0:
            local = encode(patches)
            width, height = int(spatial[index][0]), int(spatial[index][1])
            p = int(local.shape[1] ** 0.5)
            rows = (
                local.view(height, width, p, p, dim)
                .permute(0, 2, 1, 3, 4)
                .reshape(height * p, width * p, dim)
            )
            ends = NEWLINE[None, None, :].expand(height * p, 1, dim)
            parts.insert(0, torch.cat([rows, ends], dim=1).view(-1, dim))
        pages.append(torch.cat(parts, dim=0))
    return pages


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_batched_pages_equal_vllms_pages(chunk: int) -> None:
    grids = [(2, 3), (1, 1), (3, 2), (1, 2), (1, 1), (2, 2)]  # (width, height) per page
    spatial = torch.tensor(grids, dtype=torch.long)
    pixel_values = torch.randn(len(grids), 3, 64, 64, generator=generator, dtype=torch.float64)
    tiles = sum(w * h for w, h in grids if w > 1 or h > 1)
    images_crop = torch.randn(tiles, 3, 32, 32, generator=generator, dtype=torch.float64)

    ours = page_embeddings(
        encode_in_chunks(encode, pixel_values, chunk),
        encode_in_chunks(encode, images_crop, chunk),
        grids,
        NEWLINE,
        SEPARATOR,
    )
    expected = vllm_pages(pixel_values, images_crop, spatial)
    assert [page.shape for page in ours] == [page.shape for page in expected]
    for mine, theirs in zip(ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    # A page's length is the placeholder count the processor gave it: 2x3 tiles of 2x2
    # features with newlines, the 4x4 global view with newlines, the separator.
    assert ours[0].shape[0] == (3 * 2) * (2 * 2 + 1) + 4 * (4 + 1) + 1


def test_untiled_batch_and_mismatches() -> None:
    views = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    pages = page_embeddings(encode(views), None, [(1, 1), (1, 1)], NEWLINE, SEPARATOR)
    assert [page.shape[0] for page in pages] == [4 * 5 + 1, 4 * 5 + 1]
    with pytest.raises(ValueError, match="global views for 3 pages"):
        page_embeddings(encode(views), None, [(1, 1)] * 3, NEWLINE, SEPARATOR)
    with pytest.raises(ValueError, match="no tiles left"):
        page_embeddings(encode(views), None, [(2, 1), (1, 1)], NEWLINE, SEPARATOR)
    tiles = encode(torch.randn(3, 3, 32, 32, generator=generator, dtype=torch.float64))
    with pytest.raises(ValueError, match="1 tiles belong to no page"):
        page_embeddings(encode(views), tiles, [(2, 1), (1, 1)], NEWLINE, SEPARATOR)
    with pytest.raises(ValueError, match="do not make a 2x2 grid"):
        grid_with_newlines(tiles, 2, 2, NEWLINE)
    with pytest.raises(ValueError, match="no images"):
        encode_in_chunks(encode, views[:0], 4)
