"""What the runner does with a page's figures: store them, then link them.

`store_page_artifacts` is called by the task runner once per computed page, after the
engine and before the page result is built. It stores the engine's figure crops (and, when
asked, the rendered page image) and returns the page's output with each figure's block
carrying its `Artifact` and its Markdown placeholder replaced by a link to the artifact's
URI. A figure that could not be stored keeps a placeholder saying why (no store is
configured, or the store's error code and message): the page itself never fails for a
figure, whose text it does not hold; the caller sees the errors in `StoredPage.failures`
to log and count them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from consumer.artifacts.store import ArtifactError, ArtifactStore
from consumer.engines.base import EngineOutput, PageImage
from consumer.postprocess.figures import (
    FIGURE_MEDIA_TYPE,
    NO_STORE,
    FigureCrop,
    encode_png,
    figure_key,
    page_image_key,
)
from schemas.figures import figure_link, figure_placeholder
from schemas.result import Artifact


@dataclass(slots=True)
class StoredPage:
    output: EngineOutput  # figures linked (or explained), `figures` emptied
    page_image: Artifact | None = None  # for PageImageInfo.artifact
    failures: list[ArtifactError] = field(default_factory=list)


async def _store_figure(
    store: ArtifactStore, task_id: str, page: int, figure: FigureCrop
) -> Artifact | ArtifactError:
    try:
        stored = await store.put(
            figure_key(task_id, page, figure.index), figure.png, FIGURE_MEDIA_TYPE
        )
    except ArtifactError as exc:
        return exc
    return Artifact(
        uri=stored.uri, media_type=FIGURE_MEDIA_TYPE, bytes=stored.bytes,
        width_px=figure.width_px, height_px=figure.height_px,
    )


async def _store_page_image(store: ArtifactStore, page: PageImage) -> Artifact | ArtifactError:
    # PNG encoding of a whole page is CPU work of 100 ms or more: off the loop.
    png = await asyncio.get_running_loop().run_in_executor(None, encode_png, page.image)
    try:
        stored = await store.put(page_image_key(page.task_id, page.page), png, "image/png")
    except ArtifactError as exc:
        return exc
    return Artifact(
        uri=stored.uri, media_type="image/png", bytes=stored.bytes,
        width_px=page.image.width, height_px=page.image.height,
    )


async def store_page_artifacts(
    store: ArtifactStore | None, output: EngineOutput, page: PageImage, *,
    page_image: bool = False,
) -> StoredPage:
    """Store the page's figures (and its image when `page_image`) and link them.

    Figures are stored concurrently; each one's fate is its own. Cancelling the call leaves
    at most files nobody links to (the writes in flight finish in their threads).
    """
    markdown = output.markdown
    blocks = list(output.blocks)
    failures: list[ArtifactError] = []
    image_artifact: Artifact | None = None
    if store is None:
        outcomes: list[Artifact | ArtifactError | None] = [None] * len(output.figures)
    else:
        stores = [_store_figure(store, page.task_id, page.page, f) for f in output.figures]
        if page_image:
            stores.append(_store_page_image(store, page))
        outcomes = list(await asyncio.gather(*stores))
        if page_image:
            last = outcomes.pop()
            if isinstance(last, ArtifactError):
                failures.append(last)
            else:
                image_artifact = last
    for figure, outcome in zip(output.figures, outcomes, strict=True):
        if isinstance(outcome, Artifact):
            link = figure_link(figure.index, outcome.uri)
            markdown = markdown.replace(figure.placeholder, link, 1)
            if figure.block is not None and figure.block < len(blocks):
                blocks[figure.block] = blocks[figure.block].model_copy(
                    update={"artifact": outcome}
                )
            continue
        if outcome is None:
            reason = NO_STORE
        else:
            failures.append(outcome)
            reason = f"{outcome.code.value}: {outcome.message}"
        markdown = markdown.replace(
            figure.placeholder, figure_placeholder(page.page, figure.index, reason), 1
        )
    linked = dataclasses.replace(output, markdown=markdown, blocks=blocks, figures=[])
    return StoredPage(output=linked, page_image=image_artifact, failures=failures)
