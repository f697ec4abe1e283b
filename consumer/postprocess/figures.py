"""Figures of a page: cut from the page image, encoded, and referenced from the Markdown.

An engine that finds figures (DeepSeek-OCR's `image` spans) crops each one here while it
post-processes the page (off the event loop) and hands the crops to the runner in
`EngineOutput.figures`; the runner stores them (consumer/artifacts/figures.py) and only
then does a figure get its link. Until then, and for good when nothing stores it, the
Markdown carries a placeholder that says why the figure is missing: never a link to
nowhere.

Pure functions apart from PNG encoding (CPU: call from an executor).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

FIGURE_MEDIA_TYPE = "image/png"

# Why a figure has no link, as the Markdown placeholder says it.
NO_STORE = "no artifact store is configured (OCR_ARTIFACTS_URI)"
NOT_HANDED_OVER = "the consumer did not hand it to the artifact store"
EMPTY_BOX = "its box on the page is empty"

@dataclass(frozen=True, slots=True)
class FigureCrop:
    """One figure cut from a page, encoded as PNG, waiting to be stored.

    `placeholder` is the exact text standing for the figure in the page's Markdown; the
    runner replaces it with a link once the crop is stored. `block` is the index of the
    figure's block in `EngineOutput.blocks` (None when the block list was already full).
    """

    index: int  # 1-based among the page's figures, in reading order
    block: int | None
    png: bytes
    width_px: int
    height_px: int
    placeholder: str


def figure_key(task_id: str, page: int, index: int) -> str:
    """Where figure `index` of a page lives in the artifact store, below its root."""
    return f"{task_id}/page-{page}-fig-{index}.png"


def page_image_key(task_id: str, page: int) -> str:
    return f"{task_id}/page-{page}.png"


def pixel_bounds(box_px: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The whole pixels a box covers, inside the image."""
    left = min(max(math.floor(box_px[0]), 0), width)
    top = min(max(math.floor(box_px[1]), 0), height)
    right = min(max(math.ceil(box_px[2]), left), width)
    bottom = min(max(math.ceil(box_px[3]), top), height)
    return left, top, right, bottom


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def crop_png(image: Image.Image, box_px: list[float]) -> tuple[bytes, int, int] | None:
    """The box's pixels as PNG with their size, or None for a box with no area."""
    left, top, right, bottom = pixel_bounds(box_px, image.width, image.height)
    if right - left < 1 or bottom - top < 1:
        return None
    return encode_png(image.crop((left, top, right, bottom))), right - left, bottom - top
