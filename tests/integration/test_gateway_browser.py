"""The gateway's web page in a real browser: Debian's chromium, driven by Playwright in its
system-browser mode (no browser is downloaded). The demo PDF is uploaded through the page
and worked by the CPU engine; the page must show each page image with its blocks' boxes
beside the rendered Markdown, and offer the ZIP.

OCR_UPDATE_SCREENSHOT=1 also writes docs/gateway-page.png (the committed screenshot).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from consumer.config import Settings
from consumer.engines.rapidocr import RapidOcrEngine
from tests.support.apps import running_app
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO / "docs" / "gateway-page.png"
# What works in containers and CI machines without a display, sandbox support or network.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def demo_pdf(path: Path) -> Path:
    sys.path.insert(0, str(REPO / "deploy" / "local"))
    try:
        import sample_document
    finally:
        sys.path.pop(0)
    return Path(sample_document.draw(path))


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail("chromium is missing: run `make test-deps` (apt-get install chromium)")
    return CHROMIUM


async def test_upload_progress_boxes_and_markdown(
    stack_settings: Settings, tmp_path: Path, run_id: str, chromium: Path
) -> None:
    from playwright.async_api import async_playwright

    blobs = tmp_path / "blobs"
    blobs.mkdir()
    settings = stack_settings.model_copy(update={"blob_root": blobs, "file_roots": [blobs]})
    pdf = demo_pdf(tmp_path / "report.pdf")
    async with (
        running_app(settings, RapidOcrEngine(), health_port=0),
        running_gateway(settings, view_group=f"gw-{run_id}") as gw,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(gw.url + "/")
            await page.set_input_files("#file", str(pdf))
            await page.click("#submit")
            await page.wait_for_selector("body[data-final]", timeout=120_000)
            assert await page.get_attribute("body", "data-final") == "completed"
            assert await page.locator("#progress").evaluate("p => p.value") == 100

            sections = page.locator("section.page")
            assert await sections.count() == 2
            first = sections.nth(0)
            # Boxes over the page image, labelled with their block's text on hover.
            boxes = first.locator(".image-wrap .box")
            assert await boxes.count() >= 5
            labels = [await boxes.nth(i).get_attribute("title") for i in range(await boxes.count())]
            assert any("Quarterly Shipping Report" in (label or "") for label in labels)
            image = first.locator(".image-wrap img")
            await page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=await image.element_handle()
            )
            assert await image.evaluate("img => img.naturalWidth") == 1190  # A4 (595 pt) at 144 dpi
            # The Markdown rendered as HTML beside it.
            markdown = first.locator(".markdown")
            assert "Quarterly Shipping Report" in await markdown.inner_text()
            assert await markdown.locator("p").count() >= 1
            assert "Outlook for the Fourth Quarter" in await sections.nth(1).inner_text()
            download = page.locator("#download")
            assert await download.is_visible()
            assert (await download.get_attribute("download") or "").endswith(".zip")
            assert errors == []

            # Drawn over the image, where the text is: inside it, and not a dot.
            title_box = await boxes.nth(0).bounding_box()
            image_box = await image.bounding_box()
            assert title_box is not None and image_box is not None
            assert title_box["width"] > 100 and title_box["height"] > 5
            assert image_box["x"] <= title_box["x"] < image_box["x"] + image_box["width"] / 2
            await boxes.nth(0).hover()
            shot = tmp_path / "gateway-page.png"
            await page.screenshot(path=str(shot), full_page=False)
            if os.environ.get("OCR_UPDATE_SCREENSHOT") == "1":
                shutil.copyfile(shot, SCREENSHOT)
        finally:
            await browser.close()
