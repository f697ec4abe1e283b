"""A rendered page: what documents/ produces and engines/ and postprocess/ read.

It lives on the ground floor, beside no one, so that post-processing (which places boxes in
PDF coordinates) needs nothing from the engines above it.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True, slots=True)
class PageImage:
    """A rendered page (or an input image) ready for the engine."""

    task_id: str
    page: int  # 1-based page number in the source document
    image: Image.Image  # RGB
    dpi: int
    width_pt: float | None = None  # PDF page size in points; None for image inputs
    height_pt: float | None = None
