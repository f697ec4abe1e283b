"""The RapidOCR engine on a drawn A4 page (real models, CPU; loaded once per module)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import numpy as np
import pymupdf
import pytest
import pytest_asyncio
from PIL import Image

from consumer.engines.base import EngineHealth, PageImage, PageRequest
from consumer.engines.rapidocr import RapidOcrEngine, _to_bgr
from consumer.errors import EngineError
from schemas.common import ErrorCode
from schemas.request import PromptKind
from schemas.result import FinishReason

A4_PT = (595.0, 842.0)
DPI = 144
# Ten lines in three paragraphs (None: a blank line).
LINES = [
    "Quarterly report for the northern region",
    "Revenue grew by twelve percent this year",
    "Operating costs remained stable overall",
    None,
    "The board approved a new warehouse plan",
    "Shipping volumes doubled in the spring",
    "Customer complaints fell to a record low",
    None,
    "Next steps include hiring two engineers",
    "Invoice 4471 total amount 1250 EUR",
    "Payment is due within thirty days",
    "Contact the finance office for details",
]


def draw_page() -> PageImage:
    document = pymupdf.open()  # type: ignore[no-untyped-call]  # pymupdf has no hints
    pdf_page = document.new_page(width=A4_PT[0], height=A4_PT[1])
    y = 90.0
    for line in LINES:
        if line is not None:
            pdf_page.insert_text((72, y), line, fontsize=13, fontname="helv")
        y += 24
    pixmap = pdf_page.get_pixmap(dpi=DPI)
    image = Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)
    document.close()  # type: ignore[no-untyped-call]
    return PageImage("rapid-1", 1, image, DPI, width_pt=A4_PT[0], height_pt=A4_PT[1])


PAGE = draw_page()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def recall(expected: list[str], got: str) -> float:
    pool = words(got)
    hits = 0
    for word in expected:
        if word in pool:
            pool.remove(word)
            hits += 1
    return hits / len(expected)


@pytest_asyncio.fixture(scope="module")
async def engine() -> AsyncIterator[RapidOcrEngine]:
    ocr = RapidOcrEngine()
    await ocr.start()
    yield ocr
    await ocr.close()


def request(prompt: PromptKind = PromptKind.MARKDOWN, locate: str | None = None) -> PageRequest:
    return PageRequest("rapid-1/1/0", PAGE, prompt=prompt, locate_text=locate)


def test_to_bgr_swaps_channels() -> None:
    image = Image.new("RGB", (2, 1), (255, 0, 0))
    assert _to_bgr(image)[0, 0].tolist() == [0, 0, 255]
    grey = _to_bgr(Image.new("L", (2, 2), 7))
    assert grey.shape == (2, 2, 3) and grey.flags["C_CONTIGUOUS"] and grey.dtype == np.uint8


async def test_reads_the_page(engine: RapidOcrEngine) -> None:
    started = time.perf_counter()
    out = await engine.infer(request())
    seconds = time.perf_counter() - started
    expected = words(" ".join(line for line in LINES if line))
    score = recall(expected, out.text)
    print(f"\nrapidocr: {seconds:.2f} s/page, word recall {score:.3f}")
    assert score >= 0.8
    assert out.finish_reason is FinishReason.STOP and not out.truncated
    # Paragraphs survive as blank lines; lines come in reading order.
    assert out.markdown.count("\n\n") == 2
    assert out.text.splitlines()[0].lower().startswith("quarterly")
    width, height = PAGE.image.size
    assert 9 <= len(out.blocks) <= 12  # one block per printed line, give or take a split
    tops = [block.bbox_px[1] for block in out.blocks]
    assert tops == sorted(tops)
    for block in out.blocks:
        x1, y1, x2, y2 = block.bbox_px
        assert block.label == "text" and block.text
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert 10 < y2 - y1 < 80  # a 13-pt line at 144 DPI is ~26 px tall
        assert x1 == pytest.approx(144, abs=20)  # the 72-pt margin is 144 px
        assert block.bbox_pdf is not None
        assert block.bbox_pdf[0] == pytest.approx(x1 * A4_PT[0] / width)
        assert block.confidence is not None and 0.5 <= block.confidence <= 1
    stats = engine.stats()
    assert stats.pages_total >= 1 and stats.running == 0
    # Post-processing (ten lines to blocks) is timed on its own and is a small part of
    # the engine's time, which the models' hundreds of milliseconds dominate.
    assert 0 < out.postprocess_ms < seconds * 1000 / 2


async def test_locate_returns_matching_line_boxes(engine: RapidOcrEngine) -> None:
    out = await engine.infer(request(PromptKind.LOCATE, "WAREHOUSE plan"))
    assert [block.label for block in out.blocks] == ["WAREHOUSE plan"]
    assert "warehouse" in out.blocks[0].text.lower()
    assert out.markdown == out.blocks[0].text
    missing = await engine.infer(request(PromptKind.LOCATE, "zebra crossing"))
    assert missing.blocks == [] and missing.markdown == ""


@pytest.mark.parametrize("prompt", [PromptKind.FIGURE, PromptKind.DESCRIBE])
async def test_vision_prompts_are_unsupported(engine: RapidOcrEngine, prompt: PromptKind) -> None:
    with pytest.raises(EngineError) as caught:
        await engine.infer(request(prompt))
    assert caught.value.code is ErrorCode.PROMPT_UNSUPPORTED
    assert "rapidocr" in caught.value.message and prompt.value in caught.value.message


async def test_cancelled_pages_keep_their_slot_until_the_model_returns(
    engine: RapidOcrEngine,
) -> None:
    assert engine.suggested_inflight_pages == 2
    first = asyncio.create_task(engine.infer(request()))
    queued = [asyncio.create_task(engine.infer(request())) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert engine.stats().running == 1  # one worker: one page in the pool, the rest wait
    assert engine.stats().waiting == 3
    for task in [first, *queued]:
        task.cancel()
    await asyncio.gather(first, *queued, return_exceptions=True)
    # The onnxruntime call cannot be stopped: its slot stays taken until it returns...
    assert engine.stats().running == 1
    assert engine.stats().waiting == 0
    for _ in range(600):  # up to 30 s on a loaded machine
        if not engine.stats().running:
            break
        await asyncio.sleep(0.05)
    # ...and then the engine is free again; nothing else was left queued in the pool.
    assert engine.stats().running == 0
    pages_before = engine.stats().pages_total
    out = await engine.infer(request(PromptKind.FREE_OCR))
    assert out.text and engine.stats().pages_total == pages_before + 1


async def test_infer_before_start_and_after_close() -> None:
    ocr = RapidOcrEngine(warm_up=False)
    assert ocr.health() == EngineHealth(alive=True, reason="not started")
    with pytest.raises(EngineError):
        await ocr.infer(request())
    await ocr.close()  # closing an engine that never started is fine
    assert ocr.health() == EngineHealth(alive=False, reason="rapidocr engine closed")


async def test_a_started_engine_is_alive(engine: RapidOcrEngine) -> None:
    assert engine.health() == EngineHealth(alive=True, reason="ok")
