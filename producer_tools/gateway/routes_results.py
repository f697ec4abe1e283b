"""Results of a final task as ocr-collect writes them, and pages for the web page.

The files are task_files.task_files' entries, the very function ocr-collect writes with:
document.md (figures linked under images/), pages.json, status.json, one file a page and
the figures fetched from the artifact store (OCR_ARTIFACTS_URI; a figure that cannot be
read becomes the placeholder saying why, as in ocr-collect's files).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from consumer.artifacts.store import ArtifactError
from consumer.log import get_logger
from producer_tools.gateway.answers import PageView, page_view
from producer_tools.gateway.errors import GatewayCode, GatewayError, not_found
from producer_tools.gateway.routes_tasks import ERRORS, caller, checked_task_id, gateway
from producer_tools.gateway.service import Gateway
from producer_tools.gateway.view_model import api_status
from producer_tools.task_files import fetch_figures, task_files, zip_files
from schemas.progress import ProgressEvent
from schemas.result import PageResult

log = get_logger(__name__)
router = APIRouter(prefix="/v1/tasks/{task_id}", tags=["results"])


async def final_pages(gw: Gateway, task_id: str) -> tuple[list[PageResult], ProgressEvent]:
    snapshot = await gw.store.snapshot(checked_task_id(task_id))
    if not snapshot.known:
        raise not_found(task_id)
    status = api_status(snapshot.progress, snapshot.pages_stored)
    if snapshot.progress is None or not status.is_final:
        raise GatewayError(
            409, GatewayCode.TASK_NOT_FINISHED,
            f"task {task_id} is {status.value}; its files are served once it is final "
            "(follow its status or events)",
        )
    return await gw.store.pages(task_id), snapshot.progress.event


async def final_files(gw: Gateway, task_id: str) -> dict[str, bytes]:
    """The task's files by their name in ocr-collect's folder and ZIP, in ZIP order."""
    pages, final = await final_pages(gw, task_id)
    figures = await fetch_figures(pages, gw.artifacts)
    return dict(await asyncio.to_thread(task_files, pages, final, figures))


def _download(body: bytes, media_type: str, name: str) -> Response:
    return Response(
        body, media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/result.md", responses=ERRORS, summary="document.md as ocr-collect writes it")
async def result_md(task_id: str, request: Request, _: str = Depends(caller)) -> Response:
    files = await final_files(gateway(request), task_id)
    return Response(files["document.md"], media_type="text/markdown; charset=utf-8")


@router.get("/result.json", responses=ERRORS, summary="pages.json as ocr-collect writes it")
async def result_json(task_id: str, request: Request, _: str = Depends(caller)) -> Response:
    files = await final_files(gateway(request), task_id)
    return Response(files["pages.json"], media_type="application/json")


@router.get("/result.zip", responses=ERRORS, summary="<task_id>.zip as ocr-collect writes it")
async def result_zip(task_id: str, request: Request, _: str = Depends(caller)) -> Response:
    files = await final_files(gateway(request), task_id)
    archive = await asyncio.to_thread(zip_files, list(files.items()))
    return _download(archive, "application/zip", f"{task_id}.zip")


@router.get(
    "/pages/{page}", response_model=PageView, responses=ERRORS,
    summary="One page: Markdown, the same as safe HTML, blocks with boxes, image size",
)
async def page(task_id: str, page: int, request: Request, _: str = Depends(caller)) -> PageView:
    gw = gateway(request)
    result = await gw.store.page(checked_task_id(task_id), page)
    if result is None:
        raise GatewayError(
            404, GatewayCode.PAGE_NOT_FOUND, f"task {task_id} has no result for page {page} (yet)"
        )
    snapshot = await gw.store.snapshot(task_id)
    has_image = bool(snapshot.submission.get("blob")) or result.image.artifact is not None
    return await asyncio.to_thread(page_view, task_id, result, has_image)


@router.get(
    "/pages/{page}/image.png", responses=ERRORS,
    response_class=Response,
    summary="The page as the engine saw it: its blocks' bbox_px fit it",
)
async def page_image(
    task_id: str, page: int, request: Request, _: str = Depends(caller)
) -> Response:
    gw = gateway(request)
    snapshot = await gw.store.snapshot(checked_task_id(task_id))
    result = await gw.store.page(task_id, page)
    stored = await _stored_image(gw, result)
    if stored is not None:
        return stored
    blob, media_type = snapshot.submission.get("blob"), snapshot.submission.get("media_type")
    path = Path(blob) if blob else None
    root = gw.config.core.blob_root.resolve()
    if path is None or media_type is None or root not in path.resolve().parents:
        raise GatewayError(
            404, GatewayCode.PAGE_IMAGE_UNAVAILABLE,
            f"task {task_id} has no stored page image and was not uploaded through this "
            "gateway, so it has no page images",
        )
    # The result's dpi is what the consumer rendered at; before it exists, the request's.
    dpi = result.image.dpi if result is not None and result.image.dpi else int(
        snapshot.submission.get("dpi", "144")
    )
    if not await asyncio.to_thread(path.is_file):
        raise GatewayError(
            404, GatewayCode.PAGE_IMAGE_UNAVAILABLE,
            f"the upload of task {task_id} is no longer in the hand-over folder",
        )
    png = await gw.workers.page_png(path, media_type, page, dpi)
    return Response(
        png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
    )


async def _stored_image(gw: Gateway, result: PageResult | None) -> Response | None:
    """The page image the consumer stored as an artifact, when there is one and the store
    gives it; None to draw it from the upload instead."""
    artifact = result.image.artifact if result is not None else None
    if artifact is None or gw.artifacts is None:
        return None
    try:
        data = await gw.artifacts.read(artifact.uri)
    except ArtifactError as exc:
        log.warning("page_image_not_read", uri=artifact.uri[:200], code=exc.code.value)
        return None
    return Response(
        data, media_type=artifact.media_type or "image/png",
        headers={"Cache-Control": "private, max-age=3600"},
    )
