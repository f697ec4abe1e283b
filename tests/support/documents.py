"""Documents drawn for tests: real PDFs and images with known text."""

from __future__ import annotations

import io
import struct
import zlib
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
