"""DeepSeek-OCR's vision encoder over many pages at once: the tensor arithmetic.

vLLM 0.26 encodes the images of an engine step one page at a time: SAM, then CLIP, then the
projector, once for the page's global view and once for its tiles, with GPU syncs in
between. Each call is a few thousand small kernels launched from Python, so the engine core
spends ~100 ms of CPU a Gundam page and the GPU waits (the py-spy profiles of 2026-12-03,
bench/README.md). Here the global views of all the step's pages go through the encoder
together, and so do all their tiles, `chunk` images per call; each page's embedding is then
cut out and laid out exactly as vLLM lays it out: the tile grid with a newline column, the
global grid with a newline column, the view separator.

The vLLM model class that uses this is consumer/engines/deepseek_vision_model.py, switched
on by `OCR_VISION_BATCH` (experimental: not yet measured on a GPU). This module needs only
torch, so its arithmetic is tested against vLLM's page-at-a-time layout wherever torch is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Tensor = Any  # torch.Tensor; torch ships no stubs that mypy --strict is given here
Encoder = Callable[[Tensor], Tensor]  # images [n, 3, s, s] -> projected features [n, hw, dim]


def encode_in_chunks(encode: Encoder, images: Tensor, chunk: int) -> Tensor:
    """`encode` over `images`, at most `chunk` images a call (bounds activation memory)."""
    if images.shape[0] == 0:
        raise ValueError("no images to encode")
    if images.shape[0] <= chunk:
        return encode(images)
    return torch.cat([encode(part) for part in images.split(chunk)], dim=0)


def grid_with_newlines(features: Tensor, width: int, height: int, newline: Tensor) -> Tensor:
    """Tiles' features [width * height, side * side, dim], row-major over the tile grid, as
    one [(height * side) * (width * side + 1), dim] sequence: image rows left to right
    across the tiles, each row ended by the newline embedding."""
    count, hw, dim = features.shape
    side = int(hw**0.5)
    if count != width * height or side * side != hw:
        raise ValueError(f"{count} tiles of {hw} features do not make a {width}x{height} grid")
    rows = (
        features.view(height, width, side, side, dim)
        .permute(0, 2, 1, 3, 4)
        .reshape(height * side, width * side, dim)
    )
    ends = newline[None, None, :].expand(height * side, 1, dim)
    return torch.cat([rows, ends], dim=1).view(-1, dim)


def page_embeddings(
    global_features: Tensor,
    tile_features: Tensor | None,
    tiles: Sequence[tuple[int, int]],
    newline: Tensor,
    separator: Tensor,
) -> list[Tensor]:
    """Each page's image embedding from the batch's features.

    `global_features` [pages, hw, dim]: one global view per page, in page order;
    `tile_features` [tiles, hw', dim]: the tiles of the tiled pages, page after page;
    `tiles[j]` = (width, height) of page j's tile grid, (1, 1) when it has no tiles.
    """
    if global_features.shape[0] != len(tiles):
        raise ValueError(f"{global_features.shape[0]} global views for {len(tiles)} pages")
    pages: list[Tensor] = []
    offset = 0
    for index, (width, height) in enumerate(tiles):
        parts = []
        if width > 1 or height > 1:
            if tile_features is None or offset + width * height > tile_features.shape[0]:
                raise ValueError(f"page {index} has a {width}x{height} grid but no tiles left")
            local = tile_features[offset : offset + width * height]
            offset += width * height
            parts.append(grid_with_newlines(local, width, height, newline))
        parts.append(grid_with_newlines(global_features[index : index + 1], 1, 1, newline))
        parts.append(separator[None, :])
        pages.append(torch.cat(parts, dim=0))
    if tile_features is not None and offset != tile_features.shape[0]:
        raise ValueError(f"{tile_features.shape[0] - offset} tiles belong to no page")
    return pages
