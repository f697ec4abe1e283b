"""Make the collected example: a two-page report with figures through the real pipeline.

    make up-stack            # Kafka + Redis (OCR_KAFKA_BOOTSTRAP, OCR_REDIS_URL)
    .venv/bin/pip install markdown-it-py     # the renderer; not a dependency of ocr-stream
    .venv/bin/python docs/examples/collected/make_example.py

What it does: draws a report PDF with charts (tests/support/documents.py), runs a real
consumer (App) on the running Kafka and Redis, with its own topics, group and Redis
prefix, storing figures in a folder store; the scripted engine stands in for DeepSeek-OCR
on vLLM and answers with the grounded output the model gives for such pages (image
blocks). ocr-collect then writes the task's folder and ZIP; the ZIP's members are listed in
files.txt, and its document.md, unpacked, is rendered to HTML (markdown-it-py) and to
document.png by headless Chromium. Everything else lives in a temporary folder, deleted
at the end, as are the topics and the Redis keys.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from consumer.config import Settings, artifact_store_uri  # noqa: E402
from consumer.state import redis_client  # noqa: E402
from producer_tools import EXIT_OK, collect  # noqa: E402
from producer_tools.topic_admin import delete_topics, ensure_topics  # noqa: E402
from schemas.request import OcrRequest, Source  # noqa: E402
from schemas.topics import TopicNames  # noqa: E402
from tests.support.apps import running_app  # noqa: E402
from tests.support.documents import make_report_pdf, report_grounded  # noqa: E402
from tests.support.engines import ScriptedEngine  # noqa: E402
from tests.support.kafka import TopicReader, produce_requests  # noqa: E402

TASK_ID = "quarterly-report"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]
PAGE_STYLE = """<style>
body { font-family: sans-serif; max-width: 760px; margin: 24px auto; color: #222; }
img { max-width: 100%; border: 1px solid #ccc; }
table { border-collapse: collapse; } td { border: 1px solid #999; padding: 2px 10px; }
</style>"""


async def run_pipeline(work: Path) -> Path:
    """The report through a real consumer and ocr-collect; the ZIP's path."""
    run = uuid.uuid4().hex[:8]
    settings = Settings().with_topic_names(TopicNames().with_prefix(f"example-{run}"))
    settings = settings.model_copy(update={
        "group_id": f"example-{run}", "redis_key_prefix": f"example-{run}:",
        "consumer_id": f"example-{run}", "file_roots": [work], "metrics_port": 0,
        "artifacts_uri": artifact_store_uri(str(work / "artifacts")),
    })
    (work / "artifacts").mkdir()
    specs = settings.topic_specs()
    await ensure_topics(settings, specs)
    try:
        pdf = make_report_pdf(work / "report.pdf")
        engine = ScriptedEngine(grounded=lambda page: report_grounded(page.page))
        request = OcrRequest(task_id=TASK_ID, source=Source(uri=pdf.as_uri()))
        async with (
            running_app(settings, engine),
            TopicReader(settings, settings.topic_progress) as reader,
        ):
            await produce_requests(settings, [request])
            await reader.wait_for(lambda r: bool(r.final(settings, TASK_ID)), timeout=120)
        code = await asyncio.to_thread(collect.main, [
            "--kafka-bootstrap", settings.kafka_bootstrap,
            "--topic-results", settings.topic_results,
            "--topic-progress", settings.topic_progress,
            "--artifacts-uri", str(settings.artifacts_uri), "--log-level", "WARNING",
            "--out", str(work / "collected"), "--group", f"example-{run}-collect",
            "--task", TASK_ID,
        ])
        if code != EXIT_OK:
            raise SystemExit(f"ocr-collect exited {code}")
        return work / "collected" / f"{TASK_ID}.zip"
    finally:
        await delete_topics(settings, [spec.name for spec in specs])
        client = redis_client(settings)
        keys = [key async for key in client.scan_iter(match=f"example-{run}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def file_list(archive: Path) -> str:
    with zipfile.ZipFile(archive) as opened:
        return "".join(f"{info.file_size:>8}  {info.filename}\n" for info in opened.infolist())


def render(archive: Path, work: Path, png: Path) -> None:
    """document.md of the unpacked ZIP, to HTML beside it (so images/ resolve), to PNG."""
    from markdown_it import MarkdownIt

    unpacked = work / "unpacked"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(unpacked)
    body = MarkdownIt("commonmark", {"html": True}).render(
        (unpacked / "document.md").read_text()
    )
    html = unpacked / "document.html"
    html.write_text(f"<!doctype html><meta charset=utf-8>{PAGE_STYLE}\n{body}")
    subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={work / 'chromium-profile'}",
         "--window-size=820,1900", f"--screenshot={png}", html.as_uri()],
        check=True, capture_output=True, timeout=120,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where files.txt and "
                        "document.png go (default: beside this script)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocr-example-") as folder:
        work = Path(folder)
        archive = asyncio.run(run_pipeline(work))
        (args.out / "files.txt").write_text(file_list(archive))
        render(archive, work, args.out / "document.png")
        shutil.copy(work / "unpacked" / "document.md", args.out / "document.md")
    print((args.out / "files.txt").read_text(), end="")


if __name__ == "__main__":
    main()
