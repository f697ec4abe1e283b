"""/v1/tasks and /v1/ocr: submit, follow, cancel, and the synchronous call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile

from consumer.log import get_logger
from producer_tools.gateway.access import presented_key
from producer_tools.gateway.answers import (
    ErrorBody,
    SyncAnswer,
    TaskAccepted,
    TaskAnswer,
    task_answer,
    task_url,
)
from producer_tools.gateway.errors import GatewayCode, GatewayError, invalid, not_found
from producer_tools.gateway.intake import parse_options, save_upload, source_uri
from producer_tools.gateway.service import Gateway
from producer_tools.gateway.submission import prepare
from producer_tools.submit_requests import Submission
from producer_tools.task_files import assemble_markdown
from schemas.common import TASK_ID_PATTERN

log = get_logger(__name__)

router = APIRouter(prefix="/v1", tags=["tasks"])
KEEPALIVE_S = 15.0
SYNC_DEFAULT_S = 60.0

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 404, 409, 413, 415, 422, 429, 503)
}
_FORM = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "PDF or image"},
        "prompt": {"type": "string", "enum": ["markdown", "ocr", "free_ocr", "figure",
                                              "describe", "locate"]},
        "locate_text": {"type": "string"},
        "pages": {"type": "string", "example": "1-3,5"},
        "dpi": {"type": "integer", "minimum": 36, "maximum": 600, "default": 144},
        "metadata": {"type": "string", "description": "a JSON object, echoed on events"},
    },
}
_JSON = {
    "type": "object",
    "required": ["source"],
    "properties": {
        "source": {"type": "string", "example": "s3://bucket/report.pdf"},
        "prompt": {"type": "string"}, "pages": {"type": "string"},
        "dpi": {"type": "integer"}, "metadata": {"type": "object"},
    },
}
SUBMISSION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _FORM},
            "application/json": {"schema": _JSON},
        },
    }
}


def gateway(request: Request) -> Gateway:
    found: Gateway = request.app.state.gateway
    return found


def caller(request: Request) -> str:
    """The key id of the caller (401 when keys are required and none or a wrong one came)."""
    owner = gateway(request).keys.identify(presented_key(request.headers))
    request.state.owner = owner
    return owner


def checked_task_id(task_id: str) -> str:
    if not re.match(TASK_ID_PATTERN, task_id):
        raise invalid("a task id is 1-128 of [A-Za-z0-9._:@+=-], starting with a letter or digit")
    return task_id


# --- submitting --------------------------------------------------------------------------------


async def _submission(request: Request, gw: Gateway) -> tuple[Submission, str | None]:
    """The request for this HTTP body (upload handed over, or URI), and the media type."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise invalid("the body is not JSON") from None
        if not isinstance(body, dict):
            raise invalid("the JSON body must be an object")
        options = parse_options(body)
        return await prepare(source_uri(body), options, gw.config.core), None
    if not content_type.startswith("multipart/form-data"):
        raise GatewayError(
            415, GatewayCode.UNSUPPORTED_BODY,
            "send multipart/form-data with a 'file' field, or application/json with 'source'",
        )
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise invalid("multipart submissions need a 'file' field holding the document")
    options = parse_options({k: v for k, v in form.items() if isinstance(v, str)})
    folder = Path(tempfile.mkdtemp(prefix="ocr-gateway-"))
    try:
        path = await save_upload(upload, gw.config.max_upload_bytes, folder)
        inspection = await gw.workers.inspect(
            path, upload.content_type, options.pages, options.dpi
        )
        submission = await prepare(str(path), options, gw.config.core)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    return submission, inspection.media_type


async def submit(request: Request, gw: Gateway, owner: str, kind: str) -> Submission:
    submission, media_type = await _submission(request, gw)
    task_id = submission.task_id
    cap = gw.config.gateway.max_open_tasks_per_key
    if not await gw.store.admit(owner, task_id, cap):
        raise GatewayError(
            429, GatewayCode.OPEN_TASKS_LIMIT,
            f"this API key has {cap} tasks open (OCR_GATEWAY_MAX_OPEN_TASKS_PER_KEY); wait "
            "for one to finish (or cancel one) and submit again",
        )
    fields = {
        "filename": (submission.blob.name.split("-", 1)[-1] if submission.blob else
                     submission.label)[:255],
        "submitted_at": datetime.now(UTC).isoformat(),
        "dpi": str(submission.request.dpi),
    }
    if submission.blob is not None and media_type is not None:
        fields.update(blob=str(submission.blob), media_type=media_type)
    try:
        await gw.store.record_submission(task_id, owner, fields)
        await gw.publisher.publish(submission.request)
    except BaseException:
        await gw.store.release(owner, task_id)
        raise
    gw.metrics.submitted.labels(kind).inc()
    log.info("task_submitted", task_id=task_id, key_id=owner, kind=kind)
    return submission


@router.post(
    "/tasks", status_code=202, response_model=TaskAccepted, responses=ERRORS,
    openapi_extra=SUBMISSION_BODY,
    summary="Submit a document (multipart upload, or JSON with a source URI)",
)
async def submit_task(request: Request, owner: str = Depends(caller)) -> JSONResponse:
    submission = await submit(request, gateway(request), owner, "task")
    accepted = TaskAccepted(task_id=submission.task_id, status_url=task_url(submission.task_id))
    return JSONResponse(
        accepted.model_dump(mode="json"), status_code=202,
        headers={"Location": accepted.status_url},
    )


# --- following ---------------------------------------------------------------------------------


async def current(gw: Gateway, task_id: str) -> TaskAnswer:
    snapshot = await gw.store.snapshot(task_id)
    if not snapshot.known:
        raise not_found(task_id)
    return task_answer(task_id, snapshot)


@router.get(
    "/tasks/{task_id}", response_model=TaskAnswer, responses=ERRORS,
    summary="Status, progress, timings and per-page summaries",
)
async def get_task(task_id: str, request: Request, _: str = Depends(caller)) -> TaskAnswer:
    return await current(gateway(request), checked_task_id(task_id))


async def wait_final(gw: Gateway, task_id: str, timeout_s: float) -> TaskAnswer:
    """The task's answer once final, or as it is when `timeout_s` ran out."""
    deadline = time.monotonic() + timeout_s
    with gw.notifier.watch(task_id) as changed:
        while True:
            changed.clear()
            answer = await current(gw, task_id)
            left = deadline - time.monotonic()
            if answer.status.is_final or left <= 0:
                return answer
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, KEEPALIVE_S))


@router.get(
    "/tasks/{task_id}/events", responses=ERRORS,
    summary="Server-Sent Events: `progress` with the status answer on every change, then `end`",
    response_class=StreamingResponse,
)
async def task_events(task_id: str, request: Request, _: str = Depends(caller)) -> Any:
    gw = gateway(request)
    first = await current(gw, checked_task_id(task_id))

    async def stream() -> AsyncIterator[str]:
        last: str | None = None
        answer = first
        with gw.notifier.watch(task_id) as changed:
            while True:
                text = answer.model_dump_json()
                if text != last:
                    yield f"event: progress\ndata: {text}\n\n"
                    last = text
                if answer.status.is_final:
                    yield f"event: end\ndata: {json.dumps({'status': answer.status.value})}\n\n"
                    return
                try:
                    await asyncio.wait_for(changed.wait(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                changed.clear()
                answer = await current(gw, task_id)

    return StreamingResponse(
        stream(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.delete(
    "/tasks/{task_id}", status_code=202, responses=ERRORS,
    summary="Ask for the task to be cancelled (a cancel control record on the requests topic)",
)
async def cancel_task(
    task_id: str, request: Request, reason: str = Query("", max_length=512),
    owner: str = Depends(caller),
) -> JSONResponse:
    gw = gateway(request)
    answer = await current(gw, checked_task_id(task_id))
    if answer.status.is_final:
        raise GatewayError(
            409, GatewayCode.TASK_FINAL,
            f"task {task_id} is already {answer.status.value}; there is nothing to cancel",
        )
    why = reason or f"cancelled through ocr-gateway by key {owner}"
    record = await gw.publisher.cancel(task_id, why)
    gw.metrics.cancels.inc()
    log.info("task_cancel_requested", task_id=task_id, key_id=owner)
    return JSONResponse(
        {"task_id": task_id, "cancel_requested": True, "record": record.model_dump(mode="json"),
         "status_url": task_url(task_id)},
        status_code=202,
    )


# --- synchronous -------------------------------------------------------------------------------


@router.post(
    "/ocr", response_model=SyncAnswer, responses={202: {"model": TaskAccepted}, **ERRORS},
    openapi_extra=SUBMISSION_BODY,
    summary="OCR one image or a short PDF and wait for the text (202 with the task on timeout)",
)
async def ocr_now(
    request: Request,
    timeout: float = Query(SYNC_DEFAULT_S, gt=0, description="Seconds to wait for the result."),
    owner: str = Depends(caller),
) -> JSONResponse:
    gw = gateway(request)
    limit = gw.config.gateway.sync_timeout_max_s
    if timeout > limit:
        raise invalid(f"timeout {timeout:g} s is above this gateway's limit of {limit:g} s")
    started = time.monotonic()
    submission = await submit(request, gw, owner, "sync")
    task_id = submission.task_id
    answer = await wait_final(gw, task_id, max(0.0, timeout - (time.monotonic() - started)))
    if not answer.status.is_final:
        accepted = TaskAccepted(task_id=task_id, status_url=task_url(task_id), status=answer.status)
        return JSONResponse(
            accepted.model_dump(mode="json"), status_code=202,
            headers={"Location": accepted.status_url},
        )
    pages = await gw.store.pages(task_id)
    body = SyncAnswer(
        task_id=task_id, status=answer.status, markdown=assemble_markdown(pages),
        pages=[page.model_dump(mode="json") for page in pages],
    )
    return JSONResponse(body.model_dump(mode="json"))

