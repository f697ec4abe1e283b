"""Engine output -> the page's Markdown, plain text and located blocks.

Two shapes of engine output exist: DeepSeek-OCR's grounded text (`deepseek_page_text`)
and line-level OCR with pixel boxes (`lines_page_text`, RapidOCR). Both end in the same
`PageText`, so every engine fills the result schema the same way.

These functions are CPU work (regexes, and PNG encoding of figure crops): call them from
an executor, not on the event loop, for long pages.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from consumer.page_image import PageImage
from consumer.postprocess.figures import (
    EMPTY_BOX,
    NO_STORE,
    NOT_HANDED_OVER,
    FigureCrop,
    crop_png,
)
from consumer.postprocess.grounding import BOX_MAX, Box4, parse_grounded
from consumer.postprocess.markdown import clean_markdown, markdown_to_text
from schemas.figures import figure_placeholder
from schemas.result import Block

# Limits of the result schema (PageResult.blocks, Block.label): stay inside them here
# rather than fail validation when the page is published.
MAX_BLOCKS = 4096
MAX_LABEL = 64
# DeepSeek-OCR labels figures `image`; `figure` is accepted too, it means the same.
FIGURE_LABELS = frozenset({"image", "figure"})
# A blank line's worth of gap: lines of one paragraph sit closer than 0.6 line heights
# (detector boxes include some padding, so their gaps are small or even negative).
PARAGRAPH_GAP = 0.6

PixelBox = tuple[float, float, float, float]
Line = tuple[str, PixelBox, float]  # text, pixel box (x1, y1, x2, y2), confidence

# A line starting like a Markdown block ("# ", "> ", "- ", "1. ") would change structure.
_MARKDOWN_START = re.compile(r"^(#|>|[-+*](?=\s)|\d+[.)](?=\s))")


@dataclass(slots=True)
class PageText:
    markdown: str
    text: str
    blocks: list[Block]
    figures: list[FigureCrop] = field(default_factory=list)


def _scale(value: int, size: float) -> float:
    # Multiply first: value * size / 999 never exceeds size for value <= 999, while
    # value * (size / 999) can by one ulp; two decimals are finer than any consumer needs.
    return min(round(value * size / BOX_MAX, 2), size)


def _scale_box(box: Box4, width: float, height: float) -> list[float]:
    x1, y1, x2, y2 = box
    return [_scale(x1, width), _scale(y1, height), _scale(x2, width), _scale(y2, height)]


def _pdf_box(box: Box4, page: PageImage) -> list[float] | None:
    if page.width_pt is None or page.height_pt is None:
        return None
    return _scale_box(box, page.width_pt, page.height_pt)


def deepseek_page_text(raw: str, page: PageImage, *, crop_figures: bool = False) -> PageText:
    """Markdown, text and blocks from DeepSeek-OCR output (grounded or plain).

    Each box of a span becomes a block (a span with several boxes yields several blocks;
    the span's text rides on the first, so concatenating block texts does not repeat it).
    Each box of a figure (label `image`) is a figure: with `crop_figures` its pixels are
    cut and encoded for the artifact store (`PageText.figures`), and the Markdown holds its
    placeholder until the runner stores it; without, the placeholder says that no store is
    configured.
    """
    width, height = page.image.size
    pieces: list[str] = []
    blocks: list[Block] = []
    figures: list[FigureCrop] = []
    placeholders: list[str] = []
    for span in parse_grounded(raw):
        label = span.label[:MAX_LABEL] or "text"
        body = clean_markdown(span.text)
        is_figure = span.label.lower() in FIGURE_LABELS
        plain = "" if is_figure else markdown_to_text(body)
        for number, box in enumerate(span.boxes):
            bbox_px = _scale_box(box, width, height)
            block = len(blocks) if len(blocks) < MAX_BLOCKS else None
            if is_figure:
                index = len(placeholders) + 1
                crop = crop_png(page.image, bbox_px) if crop_figures else None
                reason = NOT_HANDED_OVER if crop else (EMPTY_BOX if crop_figures else NO_STORE)
                placeholder = figure_placeholder(page.page, index, reason)
                placeholders.append(placeholder)
                pieces.append(placeholder)
                if crop is not None:
                    png, crop_width, crop_height = crop
                    figures.append(
                        FigureCrop(index, block, png, crop_width, crop_height, placeholder)
                    )
            if block is not None:
                blocks.append(
                    Block(
                        label=label,
                        text=plain if number == 0 else "",
                        bbox_px=bbox_px,
                        bbox_pdf=_pdf_box(box, page),
                    )
                )
        if body:
            pieces.append(body)
    markdown = clean_markdown("\n\n".join(pieces))
    # A figure has no text of its own: neither does its placeholder.
    text_source = markdown
    for placeholder in placeholders:
        text_source = text_source.replace(placeholder, "", 1)
    return PageText(
        markdown=markdown, text=markdown_to_text(text_source), blocks=blocks, figures=figures
    )


def _clamp_box(box: PixelBox, width: int, height: int) -> PixelBox:
    x1, y1, x2, y2 = (value if math.isfinite(value) else 0.0 for value in box)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return (x1, y1, x2, y2)


def reading_rows(lines: Sequence[Line]) -> list[list[Line]]:
    """Group lines into visual rows (top to bottom), each row left to right.

    Lines share a row when they overlap vertically by at least half the smaller height;
    that keeps side-by-side cells on one row without merging consecutive text lines,
    whose boxes overlap a little at most. Columns of a multi-column page interleave row
    by row: a line-level engine has no layout model.
    """
    ordered = sorted(lines, key=lambda line: (line[1][1], line[1][0]))
    rows: list[list[Line]] = []
    band = (0.0, 0.0)
    for line in ordered:
        _, (_, top, _, bottom), _ = line
        if rows:
            overlap = min(bottom, band[1]) - max(top, band[0])
            smaller = min(bottom - top, min(b[1][3] - b[1][1] for b in rows[-1]))
            if overlap > 0 and overlap >= 0.5 * smaller:
                rows[-1].append(line)
                band = (min(band[0], top), max(band[1], bottom))
                continue
        rows.append([line])
        band = (top, bottom)
    for row in rows:
        row.sort(key=lambda line: line[1][0])
    return rows


def _escape_markdown(line: str) -> str:
    return _MARKDOWN_START.sub(r"\\\1", line)


def lines_page_text(lines: list[Line], page: PageImage) -> PageText:
    """Markdown, text and blocks from OCR lines (text, pixel box, confidence).

    Lines are put in reading order (`reading_rows`); a row's lines join with a space; a
    vertical gap of more than PARAGRAPH_GAP line heights starts a new paragraph.
    """
    width, height = page.image.size
    cleaned: list[Line] = []
    for text, box, confidence in lines:
        text = " ".join(text.split())
        if text:
            score = min(max(confidence, 0.0), 1.0) if math.isfinite(confidence) else 0.0
            cleaned.append((text, _clamp_box(box, width, height), score))
    rows = reading_rows(cleaned)
    wpt, hpt = page.width_pt, page.height_pt
    blocks: list[Block] = []
    for row in rows:
        for text, (x1, y1, x2, y2), confidence in row:
            if len(blocks) >= MAX_BLOCKS:
                break
            pdf = None
            if wpt is not None and hpt is not None and width and height:
                # Multiply first, so that a box at the image's edge lands on the page's edge.
                pdf = [x1 * wpt / width, y1 * hpt / height, x2 * wpt / width, y2 * hpt / height]
            blocks.append(
                Block(
                    label="text",
                    text=text,
                    bbox_px=[x1, y1, x2, y2],
                    bbox_pdf=pdf,
                    confidence=confidence,
                )
            )
    markdown_lines: list[str] = []
    text_lines: list[str] = []
    heights = [line[1][3] - line[1][1] for line in cleaned]
    line_height = statistics.median(heights) if heights else 0.0
    previous_bottom: float | None = None
    for row in rows:
        top = min(line[1][1] for line in row)
        if previous_bottom is not None and top - previous_bottom > PARAGRAPH_GAP * line_height:
            markdown_lines.append("")
            text_lines.append("")
        row_text = " ".join(line[0] for line in row)
        markdown_lines.append(_escape_markdown(row_text))
        text_lines.append(row_text)
        previous_bottom = max(line[1][3] for line in row)
    return PageText(markdown="\n".join(markdown_lines), text="\n".join(text_lines), blocks=blocks)
