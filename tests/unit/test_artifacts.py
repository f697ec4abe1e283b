"""The artifact store on a real folder, and the runner's figure storing with a fake store
(the S3 store runs against a real S3 server in tests/integration/test_artifacts_s3.py)."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from consumer.artifacts.figures import store_page_artifacts
from consumer.artifacts.store import (
    ArtifactError,
    FolderStore,
    StoredFile,
    check_key,
    open_artifact_store,
)
from consumer.config import Settings
from consumer.engines.base import EngineOutput, PageImage
from consumer.postprocess.page import deepseek_page_text
from schemas.common import ErrorCode
from schemas.result import FinishReason

RAW = (
    "<|ref|>title<|/ref|><|det|>[[50, 20, 950, 80]]<|/det|>\n# Sales\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 100, 500, 400]]<|/det|>\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 410, 500, 440]]<|/det|>\nFigure 1: a chart\n\n"
    "<|ref|>image<|/ref|><|det|>[[550, 100, 900, 400]]<|/det|>\n"
)


def settings(root: Path | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {"fetch_timeout_s": 5.0, **overrides}
    if root is not None:
        values["artifacts_uri"] = str(root)
    return Settings(**values)  # type: ignore[arg-type]


def folder(root: Path) -> FolderStore:
    store = open_artifact_store(settings(root))
    assert isinstance(store, FolderStore)
    return store


def page() -> PageImage:
    image = Image.new("RGB", (1000, 1000), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((150, 150, 450, 350), fill="red")
    return PageImage(task_id="doc:1", page=3, image=image, dpi=144)


def engine_output(crop: bool = True) -> EngineOutput:
    text = deepseek_page_text(RAW, page(), crop_figures=crop)
    return EngineOutput(
        markdown=text.markdown, text=text.text, blocks=text.blocks,
        finish_reason=FinishReason.STOP, raw_text=RAW, figures=text.figures,
    )


# --- the folder store --------------------------------------------------------------------------


async def test_folder_store_writes_whole_files_and_reads_them_back(tmp_path: Path) -> None:
    store = folder(tmp_path / "artifacts")
    stored = await store.put("doc:1/page-3-fig-1.png", b"png bytes", "image/png")
    path = tmp_path / "artifacts" / "doc:1" / "page-3-fig-1.png"
    assert stored == StoredFile(path.as_uri(), 9)
    assert stored.uri.endswith("/doc%3A1/page-3-fig-1.png")  # a URI, percent-encoded
    assert await asyncio.to_thread(path.read_bytes) == b"png bytes"
    assert sorted(os.listdir(path.parent)) == ["page-3-fig-1.png"]  # no partial file left
    assert store.owns(stored.uri)
    assert await store.read(stored.uri) == b"png bytes"
    # Overwriting is how a re-run replaces its figures.
    await store.put("doc:1/page-3-fig-1.png", b"newer", "image/png")
    assert await store.read(stored.uri) == b"newer"


async def test_folder_store_reads_nothing_outside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    store = folder(root)
    await store.check()
    secret = tmp_path / "secret.txt"
    await asyncio.to_thread(secret.write_text, "no")
    outside = [
        secret.as_uri(),
        f"{root.as_uri()}/../secret.txt",
        root.as_uri(),
        "s3://bucket/key",
        f"file://elsewhere{secret}",
        str(secret),
    ]
    for uri in outside:
        assert not store.owns(uri), uri
        with pytest.raises(ArtifactError) as refused:
            await store.read(uri)
        assert refused.value.code is ErrorCode.ARTIFACT_URI_NOT_ALLOWED
        assert "outside the artifact store" in refused.value.message
    # A symlink inside the root that points out of it is refused when read.
    await asyncio.to_thread(os.symlink, secret, root / "link.png")
    with pytest.raises(ArtifactError) as escaped:
        await store.read((root / "link.png").as_uri())
    assert escaped.value.code is ErrorCode.ARTIFACT_URI_NOT_ALLOWED


async def test_folder_store_errors_carry_codes_and_advice(tmp_path: Path) -> None:
    store = folder(tmp_path / "artifacts")
    with pytest.raises(ArtifactError) as missing:
        await store.read((tmp_path / "artifacts" / "gone.png").as_uri())
    assert missing.value.code is ErrorCode.ARTIFACT_NOT_FOUND
    blocked = tmp_path / "file-not-folder"
    await asyncio.to_thread(blocked.write_text, "x")
    with pytest.raises(ArtifactError) as unwritable:
        await folder(blocked).check()
    assert unwritable.value.code is ErrorCode.ARTIFACT_STORE_FAILED
    assert "check that the folder of OCR_ARTIFACTS_URI exists, is writable" in (
        unwritable.value.message
    )


def test_keys_never_leave_the_root() -> None:
    for key in ("", "/abs", "a/../b", "a//b", "./a", "a/.", "a\0b"):
        with pytest.raises(ValueError, match="not a plain relative path"):
            check_key(key)
    assert check_key("doc-1/page-1-fig-1.png") == "doc-1/page-1-fig-1.png"


def test_no_store_when_none_is_configured() -> None:
    assert open_artifact_store(settings()) is None


# --- storing a page's figures ------------------------------------------------------------------


async def test_stored_figures_are_linked_and_their_blocks_carry_them(tmp_path: Path) -> None:
    store = folder(tmp_path / "artifacts")
    output = engine_output()
    assert len(output.figures) == 2
    stored = await store_page_artifacts(store, output, page(), page_image=True)
    assert stored.failures == []
    linked = stored.output
    assert linked.figures == []
    uris = [store.uri_of(f"doc:1/page-3-fig-{n}.png") for n in (1, 2)]
    assert f"![figure 1]({uris[0]})" in linked.markdown
    assert f"![figure 2]({uris[1]})" in linked.markdown
    assert "not stored" not in linked.markdown
    assert linked.text == output.text  # figures have no text, linked or not
    figures = [block for block in linked.blocks if block.label == "image"]
    assert [block.artifact.uri if block.artifact else None for block in figures] == uris
    first = figures[0].artifact
    assert first is not None and (first.media_type, first.width_px, first.height_px) == (
        "image/png", 401, 301,
    )
    crop = await store.read(first.uri)
    assert first.bytes == len(crop)
    with Image.open(io.BytesIO(crop)) as image:
        assert image.size == (401, 301)
        assert image.getpixel((200, 150)) == (255, 0, 0)  # the page's pixels, not a blank
    assert stored.page_image is not None
    assert stored.page_image.uri == store.uri_of("doc:1/page-3.png")
    assert (stored.page_image.width_px, stored.page_image.height_px) == (1000, 1000)


async def test_without_a_store_the_markdown_says_why_and_links_nothing() -> None:
    for output in (engine_output(crop=False), engine_output(crop=True)):
        stored = await store_page_artifacts(None, output, page(), page_image=True)
        assert stored.page_image is None and stored.failures == []
        markdown = stored.output.markdown
        assert markdown.count("not stored: no artifact store is configured") == 2
        assert "](" not in markdown
        assert all(block.artifact is None for block in stored.output.blocks)


@dataclass
class BrokenStore:
    """Fails the writes of the keys listed, stores the rest in memory."""

    failing: set[str]
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return "s3://fake"

    def uri_of(self, key: str) -> str:
        return f"s3://fake/{key}"

    def owns(self, uri: str) -> bool:
        return uri.startswith("s3://fake/")

    async def put(self, key: str, data: bytes, media_type: str) -> StoredFile:
        if key in self.failing:
            raise ArtifactError(
                ErrorCode.ARTIFACT_STORE_FAILED, "S3 refused to write it; grant s3:PutObject"
            )
        self.files[key] = data
        return StoredFile(self.uri_of(key), len(data))

    async def read(self, uri: str) -> bytes:
        return self.files[uri.removeprefix("s3://fake/")]

    async def check(self) -> None:
        return None


async def test_a_figure_the_store_refused_keeps_a_placeholder_with_the_error() -> None:
    store = BrokenStore(failing={"doc:1/page-3-fig-1.png", "doc:1/page-3.png"})
    stored = await store_page_artifacts(store, engine_output(), page(), page_image=True)
    assert [error.code for error in stored.failures] == [ErrorCode.ARTIFACT_STORE_FAILED] * 2
    markdown = stored.output.markdown
    assert (
        "*[figure 1 of page 3 not stored: ARTIFACT_STORE_FAILED: S3 refused to write it; "
        "grant s3:PutObject]*" in markdown
    )
    assert "![figure 2](s3://fake/doc:1/page-3-fig-2.png)" in markdown
    figures = [block for block in stored.output.blocks if block.label == "image"]
    assert figures[0].artifact is None and figures[1].artifact is not None
    assert stored.page_image is None


async def test_folder_io_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = folder(tmp_path / "artifacts")
    threads: list[str] = []
    for name in ("_write", "_read"):
        original = getattr(FolderStore, name)

        def spy(self: FolderStore, *args: object, _original: Any = original) -> Any:
            threads.append(threading.current_thread().name)
            return _original(self, *args)

        monkeypatch.setattr(FolderStore, name, spy)
    stored = await store.put("t/f.png", b"x", "image/png")
    await store.read(stored.uri)
    assert len(threads) == 2
    assert all(name.startswith("artifacts") for name in threads), threads


async def test_the_scripted_engine_hands_over_figures_as_the_vllm_engine_does() -> None:
    from consumer.engines.base import PageRequest
    from tests.support.engines import ScriptedEngine

    engine = ScriptedEngine(grounded=lambda _: RAW)
    out = await engine.infer(PageRequest("doc:1/3/0", page()))
    assert out.raw_text == RAW
    assert [figure.index for figure in out.figures] == [1, 2]
    assert [block.label for block in out.blocks] == ["title", "image", "image_caption", "image"]
