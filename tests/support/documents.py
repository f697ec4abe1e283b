"""Documents drawn for tests: real PDFs and images with known text."""

from __future__ import annotations

import io
from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw, ImageFont

WORDS = [
    "invoice", "total", "amount", "paid", "customer", "order", "delivery", "address",
    "payment", "reference", "number", "account", "balance", "summary", "quantity", "price",
]


def page_lines(page: int, lines: int = 6) -> list[str]:
    out = []
    for line in range(lines):
        words = [WORDS[(page * 7 + line * 3 + k) % len(WORDS)] for k in range(5)]
        out.append(f"Page {page} line {line + 1} " + " ".join(words))
    return out


def make_pdf(path: Path, pages: int, lines: int = 6) -> Path:
    """A text PDF (A4) whose page N says `page_lines(N)` in 14-point Helvetica."""
    document = pymupdf.open()
    for number in range(1, pages + 1):
        page = document.new_page(width=595, height=842)
        y = 72.0
        for text in page_lines(number, lines):
            page.insert_text((72, y), text, fontsize=14, fontname="helv")
            y += 28
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(path)
    document.close()
    return path


def make_png(path: Path, text: str = "Receipt total 42 paid") -> Path:
    image = Image.new("RGB", (900, 300), "white")
    draw = ImageDraw.Draw(image)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=40)
    except TypeError:
        font = ImageFont.load_default()
    draw.text((40, 120), text, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path
