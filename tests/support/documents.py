"""Documents drawn for tests: real PDFs and images with known text."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw, ImageFont

from schemas.request import OcrRequest, Source

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


def stroked_pdf(pages: int, lines: int, *, seed: int = 1) -> bytes:
    """A small PDF that is slow to render: each page strokes `lines` random thin lines
    (MuPDF spends about 1 ms a line at 144 dpi on a 2-CPU VM: 20,000 lines, half a minute
    a page). One content stream a page, written raw so that the file stays small."""
    document = pymupdf.open()
    rng = random.Random(seed)
    for _ in range(pages):
        page = document.new_page(width=612, height=792)
        ops = ["0.1 w"]
        for _ in range(lines):
            x1, y1 = rng.uniform(0, 612), rng.uniform(0, 792)
            x2, y2 = rng.uniform(0, 612), rng.uniform(0, 792)
            ops.append(f"{x1:.1f} {y1:.1f} m {x2:.1f} {y2:.1f} l S")
        stream = document.get_new_xref()
        document.update_object(stream, "<< >>")
        document.update_stream(stream, "\n".join(ops).encode())
        document.xref_set_key(page.xref, "Contents", f"{stream} 0 R")
    data: bytes = document.tobytes(garbage=3, deflate=True)
    document.close()
    return data


def text_image(text: str) -> Image.Image:
    """One line of large black text on white, legible to the CPU engine."""
    image = Image.new("RGB", (900, 300), "white")
    draw = ImageDraw.Draw(image)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=40)
    except TypeError:
        font = ImageFont.load_default()
    draw.text((40, 120), text, fill="black", font=font)
    return image


def make_image(path: Path, text: str, image_format: str) -> Path:
    """`text` as a PNG, JPEG, WEBP (or any format Pillow writes) file."""
    buffer = io.BytesIO()
    text_image(text).save(buffer, format=image_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def make_png(path: Path, text: str = "Receipt total 42 paid") -> Path:
    return make_image(path, text, "PNG")


def make_tiff(path: Path, texts: list[str]) -> Path:
    """A multi-page TIFF: one frame per text."""
    first, *rest = [text_image(text) for text in texts]
    buffer = io.BytesIO()
    first.save(buffer, format="TIFF", save_all=True, append_images=rest, compression="tiff_deflate")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


# -- documents that must be refused (shared by the render unit tests and the poison suite)


def many_pages_pdf(count: int) -> bytes:
    """A valid PDF of `count` empty pages, written directly: PyMuPDF needs seconds for this."""
    kids = " ".join(f"{number} 0 R" for number in range(3, count + 3))
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
    ]
    bodies += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"] * count
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(bodies, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(bodies) + 1,
        xref,
    )
    return bytes(out)


def encrypted_pdf(*, user_password: str = "hunter2") -> bytes:
    """AES-256; with an empty user password it opens without one (owner-only protection)."""
    document = pymupdf.open()
    document.new_page().insert_text((72, 72), "secret")
    data: bytes = document.tobytes(
        encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner", user_pw=user_password
    )
    return data


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its (tiny) data does not have: a bomb header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --- a report with figures, and DeepSeek-OCR's grounded answer for it ------------------------

A4_PT = (595.0, 842.0)
# Per page: title, one paragraph, figures (box in points, kind), their captions, a table.
REPORT_FIGURES: dict[int, list[tuple[tuple[float, float, float, float], str]]] = {
    1: [((72, 190, 523, 430), "bars")],
    2: [((72, 190, 290, 400), "line"), ((305, 190, 523, 400), "pie")],
}
_CAPTIONS = {"bars": "revenue by quarter", "line": "orders by month", "pie": "sales by region"}
_BAR_COLOURS = [(0.16, 0.38, 0.67), (0.90, 0.49, 0.13), (0.20, 0.63, 0.17), (0.84, 0.15, 0.16)]


def _draw_figure(page: pymupdf.Page, box: tuple[float, float, float, float], kind: str) -> None:
    x1, y1, x2, y2 = box
    page.draw_rect(pymupdf.Rect(x1, y1, x2, y2), color=(0.6, 0.6, 0.6), width=1)
    left, bottom = x1 + 30, y2 - 25
    page.draw_line((left, y1 + 15), (left, bottom), color=(0, 0, 0), width=1.5)
    page.draw_line((left, bottom), (x2 - 15, bottom), color=(0, 0, 0), width=1.5)
    if kind == "bars":
        heights = [0.45, 0.6, 0.72, 0.9]
        slot = (x2 - 15 - left) / len(heights)
        for i, (share, colour) in enumerate(zip(heights, _BAR_COLOURS, strict=True)):
            top = bottom - share * (bottom - y1 - 20)
            rect = pymupdf.Rect(left + i * slot + 12, top, left + (i + 1) * slot - 12, bottom)
            page.draw_rect(rect, color=colour, fill=colour)
            page.insert_text((rect.x0 + 8, bottom + 16), f"Q{i + 1}", fontsize=10)
    elif kind == "line":
        values = [0.2, 0.5, 0.35, 0.7, 0.6, 0.9]
        step = (x2 - 15 - left) / (len(values) - 1)
        points = [
            (left + i * step, bottom - v * (bottom - y1 - 25)) for i, v in enumerate(values)
        ]
        page.draw_polyline(points, color=_BAR_COLOURS[0], width=2.5)
        for point in points:
            page.draw_circle(point, 3.5, color=_BAR_COLOURS[1], fill=_BAR_COLOURS[1])
    else:  # a pie of three slices
        centre = pymupdf.Point((x1 + x2) / 2, (y1 + y2) / 2 - 5)
        radius = min(x2 - x1, y2 - y1) / 2 - 30
        start = pymupdf.Point(centre.x + radius, centre.y)
        for degrees, colour in zip((150, 120, 90), _BAR_COLOURS, strict=False):
            start = page.draw_sector(centre, start, degrees, color=colour, fill=colour)


def report_page_text(page: int) -> tuple[str, str, list[str]]:
    """Title, paragraph and figure captions of the report's page."""
    title = f"Quarterly report, part {page}"
    paragraph = (
        f"Part {page} of the report: revenue rose in every quarter, led by the northern "
        "region; costs stayed flat."
    )
    captions = [f"Figure {n}: {_CAPTIONS[kind]}"
                for n, (_, kind) in enumerate(REPORT_FIGURES[page], start=1)]
    return title, paragraph, captions


def make_report_pdf(path: Path) -> Path:
    """Two A4 pages with a title, a paragraph, drawn charts (the figures) and a table."""
    document = pymupdf.open()
    for number, figures in REPORT_FIGURES.items():
        page = document.new_page(width=A4_PT[0], height=A4_PT[1])
        title, paragraph, captions = report_page_text(number)
        page.insert_text((72, 90), title, fontsize=22, fontname="hebo")
        page.insert_textbox(pymupdf.Rect(72, 110, 523, 170), paragraph, fontsize=12)
        for (box, kind), caption in zip(figures, captions, strict=True):
            _draw_figure(page, box, kind)
            page.insert_text((box[0], box[3] + 18), caption, fontsize=10, fontname="heit")
        y = 480
        for row in (("Quarter", "Revenue"), ("Q1", "4.2"), ("Q4", "8.4")):
            page.insert_text((72, y), row[0], fontsize=12)
            page.insert_text((250, y), row[1], fontsize=12)
            y += 20
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(path)
    document.close()
    return path


def _det(box: tuple[float, float, float, float]) -> str:
    """A box in points as DeepSeek-OCR writes it: 0-999 of the page's width and height."""
    x1, y1, x2, y2 = box
    width, height = A4_PT
    return (f"[[{round(x1 / width * 999)}, {round(y1 / height * 999)}, "
            f"{round(x2 / width * 999)}, {round(y2 / height * 999)}]]")


def report_grounded(page: int) -> str:
    """What DeepSeek-OCR answers (grounding prompt) for page `page` of make_report_pdf."""
    title, paragraph, captions = report_page_text(page)
    parts = [
        f"<|ref|>title<|/ref|><|det|>{_det((72, 68, 523, 96))}<|/det|>\n# {title}",
        f"<|ref|>text<|/ref|><|det|>{_det((72, 110, 523, 170))}<|/det|>\n{paragraph}",
    ]
    for (box, _), caption in zip(REPORT_FIGURES[page], captions, strict=True):
        parts.append(f"<|ref|>image<|/ref|><|det|>{_det(box)}<|/det|>")
        caption_box = (box[0], box[3] + 6, box[2], box[3] + 22)
        parts.append(f"<|ref|>image_caption<|/ref|><|det|>{_det(caption_box)}<|/det|>\n"
                     f"<center>{caption}</center>")
    parts.append(
        f"<|ref|>table<|/ref|><|det|>{_det((72, 466, 400, 526))}<|/det|>\n"
        "<table><tr><td>Quarter</td><td>Revenue</td></tr><tr><td>Q1</td><td>4.2</td></tr>"
        "<tr><td>Q4</td><td>8.4</td></tr></table>"
    )
    return "\n\n".join(parts) + "\n"


def file_request(task_id: str, path: Path, **extra: object) -> OcrRequest:
    """A request for the document at `path` (a file:// claim check), with `extra` fields."""
    return OcrRequest.model_validate(
        {"task_id": task_id, "source": Source(uri=path.resolve().as_uri()), **extra},
        strict=False,
    )
