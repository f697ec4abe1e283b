"""A task's files with its figures: downloaded from the store into images/, links rewritten
so document.md renders inside the unpacked ZIP; and the seed's layout (result.md, raw.json)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.artifacts.store import FolderStore, open_artifact_store
from consumer.config import Settings
from producer_tools.submit import write_outputs
from producer_tools.submit_requests import RequestOptions, build_submissions
from producer_tools.task_files import (
    LatestPages,
    Layout,
    fetch_figures,
    figure_refs,
    task_files,
    task_zip,
    write_task_files,
)
from schemas.progress import ProgressEvent, TaskStatus
from schemas.result import (
    Artifact,
    Block,
    EngineIdentity,
    FinishReason,
    PageImageInfo,
    PageResult,
    PageStatus,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels"
LINK = re.compile(r"!\[[^\]\n]*\]\(([^)\s]+)\)")


def store_at(root: Path) -> FolderStore:
    store = open_artifact_store(Settings(artifacts_uri=str(root)))
    assert isinstance(store, FolderStore)
    return store


def artifact(uri: str) -> Artifact:
    return Artifact(uri=uri, media_type="image/png", bytes=len(PNG), width_px=4, height_px=3)


def page(number: int, uris: list[str], *, task_id: str = "t-1", text: str = "Body") -> PageResult:
    links = "\n\n".join(f"![figure {n}]({uri})" for n, uri in enumerate(uris, start=1))
    blocks = [Block(label="text", text=text, bbox_px=[0, 0, 10, 10])] + [
        Block(label="image", bbox_px=[0, 10, 10, 20], artifact=artifact(uri)) for uri in uris
    ]
    return PageResult(
        task_id=task_id, page=number, page_count=9, status=PageStatus.OK,
        markdown=f"# Page {number}\n\n{text}" + (f"\n\n{links}" if links else ""), text=text,
        raw_text=f"<|ref|>title<|/ref|><|det|>[[0, 0, 9, 9]]<|/det|>\n# Page {number}",
        blocks=blocks, finish_reason=FinishReason.STOP,
        engine=EngineIdentity(name="scripted", model="none"),
        image=PageImageInfo(width_px=10, height_px=10, dpi=72), produced_at=NOW,
    )


def final(done: int) -> ProgressEvent:
    return ProgressEvent(task_id="t-1", status=TaskStatus.COMPLETED, pages_done=done,
                         pages_total=done, emitted_at=NOW)


async def stored_figures(store: FolderStore, *keys: str) -> list[str]:
    return [(await store.put(key, PNG, "image/png")).uri for key in keys]


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


async def test_figures_are_downloaded_into_the_zip_and_the_links_point_at_them(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path / "store")
    one, two = await stored_figures(store, "t-1/page-1-fig-1.png", "t-1/page-2-fig-1.png")
    gone = store.uri_of("t-1/page-2-fig-2.png")  # never written (or expired)
    results = [page(1, [one]), page(2, [two, gone])]
    figures = await fetch_figures(results, store)
    assert figures[one] == PNG and figures[two] == PNG
    assert isinstance(figures[gone], str) and figures[gone].startswith("ARTIFACT_NOT_FOUND")
    files = unzip(task_zip(results, final(2), figures))
    assert list(files) == [
        "document.md", "pages.json", "status.json", "page-0001.md", "page-0002.md",
        "images/page-1-fig-1.png", "images/page-2-fig-1.png",
    ]
    document = files["document.md"].decode()
    assert "![figure 1](images/page-1-fig-1.png)" in document
    assert "![figure 1](images/page-2-fig-1.png)" in document
    assert "*[figure 2 of page 2 not included: ARTIFACT_NOT_FOUND: " in document
    assert LINK.findall(document) == ["images/page-1-fig-1.png", "images/page-2-fig-1.png"]
    assert files["images/page-2-fig-1.png"] == PNG
    assert files["page-0002.md"].decode().count("images/page-2-fig-1.png") == 1
    # pages.json is the results as published: their store URIs stay.
    published = json.loads(files["pages.json"])
    assert published[0]["blocks"][1]["artifact"]["uri"] == one


async def test_without_a_store_or_outside_it_figures_become_placeholders(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path / "store")
    secret = tmp_path / "secret.png"
    await asyncio.to_thread(secret.write_bytes, b"not yours")
    results = [page(1, [secret.as_uri(), "s3://bucket/t-1/page-1-fig-2.png"])]
    refused = await fetch_figures(results, store)
    assert all(str(why).startswith("ARTIFACT_URI_NOT_ALLOWED") for why in refused.values())
    unset = await fetch_figures(results, None)
    assert all("OCR_ARTIFACTS_URI is not set for this tool" in str(w) for w in unset.values())
    for figures in (refused, unset, None):
        files = unzip(task_zip(results, final(1), figures))
        assert not [name for name in files if name.startswith("images/")]
        document = files["document.md"].decode()
        assert LINK.findall(document) == []  # nothing that dangles
        assert document.count("not included") == 2


async def test_seed_layout_files(tmp_path: Path) -> None:
    store = store_at(tmp_path / "store")
    (uri,) = await stored_figures(store, "t-1/page-2-fig-1.png")
    results = [page(2, [uri], text="Second"), page(1, [], text="First")]
    figures = await fetch_figures(results, store)
    files = dict(task_files(results, final(2), figures, Layout.SEED))
    assert list(files) == ["result.md", "raw.json", "images/page-2-img-1.png"]
    assert files["result.md"].decode() == (
        "<!-- page:1 -->\n# Page 1\n\nFirst\n\n---\n\n"
        "<!-- page:2 -->\n# Page 2\n\nSecond\n\n![figure 1](images/page-2-img-1.png)\n"
    )
    raw = json.loads(files["raw.json"])
    assert [(entry["index"], entry["page_number"]) for entry in raw] == [(0, 1), (1, 2)]
    assert set(raw[1]) == {"index", "page_number", "raw_text", "markdown", "boxes",
                           "image_assets"}
    assert raw[1]["raw_text"].startswith("<|ref|>title<|/ref|><|det|>")
    assert raw[1]["image_assets"] == ["images/page-2-img-1.png"]
    assert raw[1]["markdown"].endswith("![figure 1](images/page-2-img-1.png)")
    assert raw[1]["boxes"][1] == {
        "label": "image", "text": "", "bbox_px": [0.0, 10.0, 10.0, 20.0], "bbox_pdf": None,
        "image": "images/page-2-img-1.png",
    }
    assert raw[0]["image_assets"] == []


async def test_writing_either_layout_to_disk(tmp_path: Path) -> None:
    store = store_at(tmp_path / "store")
    (uri,) = await stored_figures(store, "t-1/page-1-fig-1.png")
    pages = LatestPages()
    pages.offer(page(1, [uri]), 1)
    figures = await fetch_figures(pages.results(), store)
    out = tmp_path / "out"
    task_dir = write_task_files(out, "t-1", pages, final(1), figures=figures)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "t-1.zip", "t-1/document.md", "t-1/images/page-1-fig-1.png", "t-1/pages.json",
        "t-1/status.json",
    ]
    assert "](images/page-1-fig-1.png)" in (task_dir / "document.md").read_text()
    seed = tmp_path / "seed"
    seed_dir = write_task_files(seed, "t-1", pages, final(1), figures=figures,
                                layout=Layout.SEED)
    assert sorted(p.name for p in seed_dir.rglob("*") if p.is_file()) == [
        "page-1-img-1.png", "pages.json", "raw.json", "result.md", "result.zip",
    ]
    assert list(unzip((seed_dir / "result.zip").read_bytes())) == [
        "result.md", "raw.json", "images/page-1-img-1.png",
    ]
    # A re-write whose page lost its figure drops the stale image file.
    again = LatestPages()
    again.offer(page(1, [], text="no figure now").model_copy(update={"attempt": 1}), 2)
    write_task_files(out, "t-1", again, final(1), figures={})
    assert not (task_dir / "images" / "page-1-fig-1.png").exists()


async def test_submit_out_writes_figures_beside_the_markdown(tmp_path: Path) -> None:
    store = store_at(tmp_path / "store")
    (uri,) = await stored_figures(store, "t-1/page-1-fig-1.png")
    [submission] = build_submissions(["https://h/x/scan.pdf"], RequestOptions(), tmp_path)
    results = {submission.task_id: [page(1, [uri], task_id=submission.task_id)]}
    figures = await fetch_figures(results[submission.task_id], store)
    paths = write_outputs(tmp_path / "out", [submission], results, figures)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in paths] == [
        "scan.md", "scan.json", "scan-images/page-1-fig-1.png",
    ]
    assert "![figure 1](scan-images/page-1-fig-1.png)" in (tmp_path / "out" / "scan.md").read_text()


# --- property: every figure link of document.md resolves inside the ZIP ---------------------

FIGURES_PER_PAGE = st.lists(st.sampled_from(["stored", "missing", "outside"]), max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.lists(FIGURES_PER_PAGE, min_size=1, max_size=5), st.sampled_from(list(Layout)))
def test_every_link_resolves_inside_the_zip(pages: list[list[str]], layout: Layout) -> None:
    results = []
    figures: dict[str, bytes | str] = {}
    for number, kinds in enumerate(pages, start=1):
        uris = []
        for index, kind in enumerate(kinds, start=1):
            uri = f"s3://store/t-1/page-{number}-fig-{index}.png"
            if kind == "stored":
                figures[uri] = PNG + bytes([number, index])
            elif kind == "missing":
                figures[uri] = "ARTIFACT_NOT_FOUND: gone"
            else:
                uri = "file:///etc/passwd"
                figures[uri] = "ARTIFACT_URI_NOT_ALLOWED: outside"
            uris.append(uri)
        results.append(page(number, uris))
    files = unzip(task_zip(results, final(len(pages)), figures, layout))
    document = files["result.md" if layout is Layout.SEED else "document.md"].decode()
    targets = LINK.findall(document)
    assert all(target in files for target in targets)
    assert len(targets) == sum(kinds.count("stored") for kinds in pages)
    assert not [target for target in targets if "://" in target]
    images = [name for name in files if name.startswith("images/")]
    assert sorted(images) == sorted(targets)
    assert len({ref.name for ref in figure_refs(results, layout)}) == len(figure_refs(results))
