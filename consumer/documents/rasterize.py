"""Turning document bytes into RGB pages, synchronously.

This module runs inside the render worker processes (see `renderproc`), never on the event
loop: MuPDF holds the GIL for a whole page render and decoders parse hostile bytes, so both
stay out of the consumer's process. Nothing here knows about asyncio or IPC, which keeps the
limits easy to test directly.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from typing import Any, Final, NamedTuple, Protocol

import pymupdf as _pymupdf
from PIL import Image, ImageOps, UnidentifiedImageError

from consumer.documents.media import IMAGE_MEDIA_TYPES, JPEG, PDF, PNG, TIFF, WEBP
from consumer.errors import OcrError
from schemas.common import ErrorCode

# PyMuPDF's annotations are partial (Document(), load_page(), Matrix() are untyped); it is
# used as a dynamic module and the types are kept at this module's boundary instead.
pymupdf: Any = _pymupdf

# MuPDF reports failures as pymupdf.FileDataError (a RuntimeError) or, from its C++ layer,
# as pymupdf.mupdf.FzError* classes that derive from Exception directly.
_MUPDF_ERRORS: Final = (
    RuntimeError,
    ValueError,
    IndexError,
    MemoryError,
    getattr(getattr(pymupdf, "mupdf", None), "FzErrorBase", RuntimeError),
)

_PIL_FORMATS: Final = {PNG: "PNG", JPEG: "JPEG", TIFF: "TIFF", WEBP: "WEBP"}
# What Pillow raises on truncated or malformed data, depending on the codec.
_DECODE_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
)
_POINTS_PER_INCH: Final = 72.0
# The lowest dpi a request may ask for (OcrRequest.dpi; a unit test keeps them equal):
# advice to go below it could not be followed.
MIN_REQUEST_DPI: Final = 36


class RasterPage(NamedTuple):
    width: int
    height: int
    stride: int  # bytes per row of `rgb`; MuPDF may pad rows
    rgb: bytes
    dpi: int
    width_pt: float | None
    height_pt: float | None


class RasterDocument(Protocol):
    page_count: int

    def page_sizes(self) -> tuple[tuple[float, float], ...]:
        """Each page's size before rendering: points for a PDF, pixels for an image."""
        ...

    def render(self, page: int, dpi: int, max_pixels: int) -> RasterPage: ...

    def close(self) -> None: ...


def open_raster(data: bytes, media_type: str, max_pages: int) -> RasterDocument:
    """Open a fetched document; refuses corrupt, encrypted and over-long documents."""
    if media_type == PDF:
        return PdfRaster(data, max_pages)
    if media_type in IMAGE_MEDIA_TYPES:
        return ImageRaster(data, media_type, max_pages)
    raise OcrError(
        ErrorCode.DOCUMENT_UNSUPPORTED_TYPE,
        f"cannot render {media_type}; send a PDF, PNG, JPEG, TIFF or WebP document",
    )


def _too_many_pages(count: int | str, max_pages: int) -> OcrError:
    return OcrError(
        ErrorCode.DOCUMENT_TOO_MANY_PAGES,
        f"the document has {count} pages, more than OCR_MAX_PAGES={max_pages}; split it "
        "into smaller documents or raise the limit",
    )


def _too_many_pixels(
    page: int, width: int, height: int, max_pixels: int, *, how: str, advice: str
) -> OcrError:
    return OcrError(
        ErrorCode.PAGE_TOO_MANY_PIXELS,
        f"page {page} is {width} x {height} = {width * height} pixels {how}, more than "
        f"OCR_MAX_PAGE_PIXELS={max_pixels}; {advice}",
    )


def _oversized_page_advice(width_pt: float, height_pt: float, max_pixels: int) -> str:
    fitting_dpi = math.floor(_POINTS_PER_INCH * math.sqrt(max_pixels / (width_pt * height_pt)))
    if fitting_dpi >= MIN_REQUEST_DPI:
        return f"request at most {fitting_dpi} dpi or raise the limit"
    scale = MIN_REQUEST_DPI / _POINTS_PER_INCH
    needed = math.ceil(width_pt * scale) * math.ceil(height_pt * scale)
    return (
        f"the page ({width_pt / _POINTS_PER_INCH:.0f} x {height_pt / _POINTS_PER_INCH:.0f} "
        f"inches) is too large even at {MIN_REQUEST_DPI} dpi, the lowest a request may ask "
        f"for; crop or split the page, or raise the limit to at least {needed}"
    )


class PdfRaster:
    """A PDF opened with MuPDF; pages are loaded and rendered one at a time."""

    def __init__(self, data: bytes, max_pages: int) -> None:
        corrupt = "the PDF cannot be opened ({}); it is damaged or not a PDF: re-export it"
        try:
            document = pymupdf.open(stream=data, filetype="pdf")
        except _MUPDF_ERRORS as exc:
            raise OcrError(ErrorCode.DOCUMENT_CORRUPT, corrupt.format(exc)) from None
        try:
            if document.needs_pass:
                raise OcrError(
                    ErrorCode.DOCUMENT_ENCRYPTED,
                    "the PDF is password-protected; remove the password (or send an "
                    "unencrypted copy) and submit it again",
                )
            # The page count comes from the page tree without loading pages, so a
            # 10,000-page document is refused in milliseconds.
            count = document.page_count
        except _MUPDF_ERRORS as exc:
            document.close()
            raise OcrError(ErrorCode.DOCUMENT_CORRUPT, corrupt.format(exc)) from None
        except BaseException:
            document.close()
            raise
        if count > max_pages or count < 1:
            document.close()
            if count < 1:
                raise OcrError(
                    ErrorCode.DOCUMENT_CORRUPT,
                    "the PDF has no pages; it is damaged or empty: re-export it",
                )
            raise _too_many_pages(count, max_pages)
        self._document = document
        self.page_count: int = count

    def page_sizes(self) -> tuple[tuple[float, float], ...]:
        # From the page tree, without loading pages (2,000 pages: about 0.1 s). The crop
        # box ignores /Rotate, which swaps the sides but keeps the pixel count.
        try:
            return tuple(
                (float(box.width), float(box.height))
                for box in (self._document.page_cropbox(index) for index in range(self.page_count))
            )
        except _MUPDF_ERRORS:
            return ()  # a damaged page tree: sizes are a hint, the render decides

    def render(self, page: int, dpi: int, max_pixels: int) -> RasterPage:
        try:
            pdf_page = self._document.load_page(page - 1)
            rect = pdf_page.rect
            width_pt, height_pt = float(rect.width), float(rect.height)
        except _MUPDF_ERRORS as exc:
            raise OcrError(
                ErrorCode.PAGE_RENDER_FAILED,
                f"page {page} cannot be loaded ({exc}); the page is damaged: re-export the PDF",
            ) from None
        if (
            not (math.isfinite(width_pt) and math.isfinite(height_pt))
            or min(width_pt, height_pt) * dpi < _POINTS_PER_INCH / 2
        ):
            raise OcrError(
                ErrorCode.PAGE_RENDER_FAILED,
                f"page {page} has an unusable page box ({width_pt:g} x {height_pt:g} pt); "
                "fix the PDF's MediaBox/CropBox",
            )
        scale = dpi / _POINTS_PER_INCH
        width = math.ceil(width_pt * scale)
        height = math.ceil(height_pt * scale)
        # Decided from the page box before MuPDF allocates anything.
        if width * height > max_pixels:
            raise _too_many_pixels(
                page,
                width,
                height,
                max_pixels,
                how=f"at {dpi} dpi",
                advice=_oversized_page_advice(width_pt, height_pt, max_pixels),
            )
        try:
            pixmap = pdf_page.get_pixmap(
                matrix=pymupdf.Matrix(scale, scale), colorspace=pymupdf.csRGB, alpha=False
            )
            return RasterPage(
                width=pixmap.width,
                height=pixmap.height,
                stride=pixmap.stride,
                rgb=pixmap.samples,
                dpi=dpi,
                width_pt=width_pt,
                height_pt=height_pt,
            )
        except _MUPDF_ERRORS as exc:
            raise OcrError(
                ErrorCode.PAGE_RENDER_FAILED,
                f"page {page} failed to render at {dpi} dpi ({exc}); the page may be damaged: "
                "re-export the PDF or try a lower dpi",
            ) from None

    def close(self) -> None:
        self._document.close()


class ImageRaster:
    """An image document; TIFF frames are pages, other formats are one page.

    Every render opens the bytes afresh: Pillow images are lazy file readers, and a fresh
    reader per page keeps no decoded frame alive between pages.
    """

    def __init__(self, data: bytes, media_type: str, max_pages: int) -> None:
        self._data = data
        self._format = _PIL_FORMATS[media_type]
        self._sizes: list[tuple[float, float]] = []
        with self._open() as image:
            self.page_count: int = self._count_frames(image, max_pages)

    def page_sizes(self) -> tuple[tuple[float, float], ...]:
        return tuple(self._sizes)

    def _open(self) -> Image.Image:
        try:
            return Image.open(io.BytesIO(self._data), formats=[self._format])
        except Image.DecompressionBombError as exc:
            raise OcrError(
                ErrorCode.PAGE_TOO_MANY_PIXELS,
                f"the image is far larger than OCR_MAX_PAGE_PIXELS allows ({exc}); scale it "
                "down before submitting",
            ) from None
        except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
            raise OcrError(
                ErrorCode.DOCUMENT_CORRUPT,
                f"the {self._format} image cannot be read ({exc}); it is damaged: re-export "
                "or re-upload it",
            ) from None

    def _count_frames(self, image: Image.Image, max_pages: int) -> int:
        self._sizes.append((float(image.size[0]), float(image.size[1])))
        if self._format != "TIFF":
            return 1  # animated PNG/WebP frames are animation, not pages
        # Step frame by frame and stop past the limit: n_frames would walk every directory
        # of a hostile file (millions of frames) before we could refuse it.
        count = 1
        while True:
            try:
                image.seek(count)
                self._sizes.append((float(image.size[0]), float(image.size[1])))
            except EOFError:
                return count
            except _DECODE_ERRORS as exc:
                raise OcrError(
                    ErrorCode.DOCUMENT_CORRUPT,
                    f"the TIFF's frame list is damaged ({exc}); re-export the document",
                ) from None
            count += 1
            if count > max_pages:
                raise _too_many_pages(f"more than {max_pages}", max_pages)

    def render(self, page: int, dpi: int, max_pixels: int) -> RasterPage:
        del dpi  # an image has its own resolution; only PDFs are rasterised at a dpi
        with self._open() as image:
            try:
                if page > 1:
                    image.seek(page - 1)
            except _DECODE_ERRORS as exc:
                raise OcrError(
                    ErrorCode.DOCUMENT_CORRUPT,
                    f"frame {page} of the TIFF cannot be read ({exc}); re-export the document",
                ) from None
            width, height = image.size
            if width * height > max_pixels:
                raise _too_many_pixels(
                    page,
                    width,
                    height,
                    max_pixels,
                    how="in the image",
                    advice="scale the image down before submitting or raise the limit",
                )
            try:
                image.load()
                rgb = _to_rgb(ImageOps.exif_transpose(image))
            except Image.DecompressionBombError as exc:
                raise OcrError(
                    ErrorCode.PAGE_TOO_MANY_PIXELS,
                    f"page {page} is too large to decode ({exc}); scale it down",
                ) from None
            except _DECODE_ERRORS as exc:
                raise OcrError(
                    ErrorCode.DOCUMENT_CORRUPT,
                    f"page {page} of the {self._format} image is truncated or damaged ({exc}); "
                    "re-export or re-upload it",
                ) from None
            return RasterPage(
                width=rgb.width,
                height=rgb.height,
                stride=rgb.width * 3,
                rgb=rgb.tobytes(),
                dpi=_image_dpi(image),
                width_pt=None,
                height_pt=None,
            )

    def close(self) -> None:
        """Nothing to release: no reader outlives a render."""


def _image_dpi(image: Image.Image) -> int:
    declared = image.info.get("dpi")
    try:
        horizontal = float(declared[0]) if declared else 0.0
    except (TypeError, ValueError, IndexError):
        return 0
    if not math.isfinite(horizontal) or horizontal < 1:
        return 0
    return round(horizontal)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the engine; transparency becomes white paper, not black."""
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        paper = Image.new("RGB", rgba.size, "white")
        paper.paste(rgba, mask=rgba.getchannel("A"))
        return paper
    return image if image.mode == "RGB" else image.convert("RGB")


def configure_worker_limits(max_pixels: int) -> None:
    """Process-wide Pillow limits; only called inside a render worker process.

    In a worker these globals belong to us alone, so Pillow's own bomb check can follow the
    configured limit (it errors at twice MAX_IMAGE_PIXELS), and its warning is silenced
    because the explicit per-page check above reports the same thing with a code.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
