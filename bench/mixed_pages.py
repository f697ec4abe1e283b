"""Mixed synthetic pages for the steady-state benchmark: what a document stream holds.

Five kinds, each drawn from a seeded generator so every run sees the same pixels:

- `report`: title, paragraphs and a ruled table on A4 portrait (ocr-bench's usual page);
- `dense`: two columns of small text on US Letter, the most text a page carries;
- `table`: a wide ruled table of figures on A4 landscape;
- `figure`: a bar chart and a line chart with captions and a little text, A4 portrait;
- `slide`: a 16:9 slide with a title, bullets and a chart.

Page sizes differ on purpose: DeepSeek-OCR's Gundam mode tiles a page by its aspect
ratio, so the kinds give prompts of different lengths, as a real stream does.
`document_sizes` gives the page counts of a stream of documents (1 to 16 pages).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from bench.bench_pages import _WORDS, _font, synthetic_page
from consumer.page_image import PageImage

PAGE_DPI = 150
KINDS = ("report", "dense", "table", "figure", "slide")
# Pixel sizes at 150 dpi: A4 portrait, US Letter, A4 landscape, A4 portrait, 16:9.
SIZES: dict[str, tuple[int, int]] = {
    "report": (1240, 1754),
    "dense": (1275, 1650),
    "table": (1754, 1240),
    "figure": (1240, 1754),
    "slide": (1600, 900),
}
# Page counts of the documents in the pipeline stream, cycled (mean 6.75).
DOCUMENT_SIZES = (8, 1, 4, 16, 2, 8, 12, 3)


@dataclass(frozen=True, slots=True)
class MixedPage:
    kind: str
    image: Image.Image


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def dense_page(seed: int) -> Image.Image:
    rng = random.Random(seed)
    width, height = SIZES["dense"]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((80, 60), f"Section {seed}: {_sentence(rng, 3, 5)}", font=_font(30), fill="black")
    body = _font(17)
    column_width = (width - 80 * 2 - 40) // 2
    for column in range(2):
        x, y = 80 + column * (column_width + 40), 120
        while y < height - 90:
            # About 11 px a character at this size: fill the column's width.
            line = _sentence(rng, 8, 11)[: column_width // 9]
            draw.text((x, y), line, font=body, fill="black")
            y += 24
    draw.text((80, height - 60), f"- {seed} -", font=_font(16), fill="black")
    return image


def table_page(seed: int) -> Image.Image:
    rng = random.Random(seed)
    width, height = SIZES["table"]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((70, 50), f"Table {seed}. {_sentence(rng, 4, 7)}", font=_font(28), fill="black")
    columns = 8
    left, top, right = 70, 120, width - 70
    step = (right - left) // columns
    small = _font(16)
    for row in range(rng.randint(18, 24)):
        y = top + row * 42
        for column in range(columns):
            x = left + column * step
            draw.rectangle((x, y, x + step, y + 42), outline="black", width=1)
            if row == 0:
                cell = rng.choice(_WORDS).title()
            elif column == 0:
                cell = f"{rng.choice(_WORDS)} {rng.randint(1, 999)}"
            else:
                cell = f"{rng.uniform(-9999, 99999):,.2f}"
            draw.text((x + 8, y + 11), cell, font=small, fill="black")
    return image


def _bar_chart(
    draw: ImageDraw.ImageDraw, rng: random.Random, box: tuple[int, int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    draw.line((x0, y1, x1, y1), fill="black", width=3)
    draw.line((x0, y0, x0, y1), fill="black", width=3)
    bars = rng.randint(5, 9)
    step = (x1 - x0) // (bars + 1)
    for bar in range(bars):
        top = y1 - int(rng.uniform(0.1, 0.95) * (y1 - y0))
        x = x0 + step // 2 + bar * step
        shade = rng.choice(("#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f"))
        draw.rectangle((x, top, x + int(step * 0.7), y1), fill=shade, outline="black")
        draw.text((x, y1 + 8), f"Q{bar + 1}", font=_font(16), fill="black")


def _line_chart(
    draw: ImageDraw.ImageDraw, rng: random.Random, box: tuple[int, int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline="black", width=2)
    for _series in range(2):
        points = []
        value = rng.uniform(0.3, 0.7)
        for step in range(12):
            value = min(0.95, max(0.05, value + rng.uniform(-0.15, 0.15)))
            points.append((x0 + (x1 - x0) * step // 11, y1 - int(value * (y1 - y0))))
        draw.line(points, fill=rng.choice(("#d62728", "#9467bd", "#17becf")), width=4)


def figure_page(seed: int) -> Image.Image:
    rng = random.Random(seed)
    width, height = SIZES["figure"]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    body = _font(22)
    draw.text((90, 70), f"Figure {seed}: {_sentence(rng, 3, 6)}", font=_font(36), fill="black")
    y = 140
    for _ in range(4):
        draw.text((90, y), _sentence(rng, 9, 12), font=body, fill="black")
        y += 34
    _bar_chart(draw, rng, (110, y + 40, width - 110, y + 560))
    draw.text((90, y + 600), f"Figure {seed}a. {_sentence(rng, 6, 9)}", font=body, fill="black")
    _line_chart(draw, rng, (110, y + 680, width - 110, y + 1150))
    draw.text((90, y + 1180), f"Figure {seed}b. {_sentence(rng, 6, 9)}", font=body, fill="black")
    return image


def slide_page(seed: int) -> Image.Image:
    rng = random.Random(seed)
    width, height = SIZES["slide"]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 110), fill="#1f3b73")
    draw.text((60, 30), _sentence(rng, 3, 5).title(), font=_font(44), fill="white")
    y = 160
    for _ in range(rng.randint(4, 6)):
        draw.text((70, y), "\u2022 " + _sentence(rng, 5, 8), font=_font(26), fill="black")
        y += 56
    _bar_chart(draw, rng, (900, 170, width - 60, height - 90))
    return image


def mixed_page(kind: str, seed: int) -> Image.Image:
    if kind == "report":
        return synthetic_page(seed)
    drawers = {"dense": dense_page, "table": table_page, "figure": figure_page, "slide": slide_page}
    return drawers[kind](seed)


def mixed_images(distinct: int = 20) -> list[MixedPage]:
    """`distinct` pages, the kinds in turn (drawing more would take longer than it tells)."""
    kinds = itertools.cycle(KINDS)
    return [
        MixedPage(kind, mixed_page(kind, seed))
        for seed, kind in zip(range(1, distinct + 1), kinds, strict=False)
    ]


def mixed_stream(count: int, distinct: int = 20) -> list[PageImage]:
    """`count` pages for the engine, cycling through the distinct mixed pages."""
    images = mixed_images(min(count, distinct))
    return [
        PageImage(
            task_id="steady",
            page=index + 1,
            image=images[index % len(images)].image,
            dpi=PAGE_DPI,
            width_pt=images[index % len(images)].image.width * 72 / PAGE_DPI,
            height_pt=images[index % len(images)].image.height * 72 / PAGE_DPI,
        )
        for index in range(count)
    ]


def document_sizes(count: int) -> list[int]:
    """Page counts of `count` documents (DOCUMENT_SIZES cycled)."""
    return [DOCUMENT_SIZES[index % len(DOCUMENT_SIZES)] for index in range(count)]
