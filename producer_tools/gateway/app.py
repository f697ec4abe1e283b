"""The ASGI application: routes, error answers, limits on bodies, metrics, health, the page."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from consumer.errors import OcrError
from consumer.log import get_logger
from producer_tools import ToolError
from producer_tools.gateway import routes_results, routes_tasks
from producer_tools.gateway.errors import GatewayCode, GatewayError
from producer_tools.gateway.intake import too_large
from producer_tools.gateway.metrics import GatewayMetrics
from producer_tools.gateway.service import Gateway
from schemas.common import ErrorCode

log = get_logger(__name__)

STATIC = Path(__file__).parent / "static"
# Room for the multipart framing and the small form fields around the file.
BODY_OVERHEAD = 64 * 1024


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses request bodies over `limit` bytes before they are read whole: by
    Content-Length at once, else while they stream in (chunked uploads)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        upload_limit = self._limit - BODY_OVERHEAD
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            await _send_error(send, too_large(upload_limit))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._limit:
                    raise _BodyTooLarge
            return message

        try:
            await self._app(scope, counted, send)
        except _BodyTooLarge:
            await _send_error(send, too_large(upload_limit))


async def _send_error(send: Send, error: GatewayError) -> None:
    response = JSONResponse(error.body(), status_code=error.status, headers={"Connection": "close"})
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class RequestMetrics:
    """Counts and times every request by route template (bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, recorded)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self._metrics.requests.labels(template, method, str(status)).inc()
            self._metrics.latency.labels(template, method).observe(time.perf_counter() - started)


def _status_of(code: ErrorCode) -> int:
    return 415 if code is ErrorCode.DOCUMENT_UNSUPPORTED_TYPE else 422


def create_app(gateway: Gateway, *, manage: bool = True) -> FastAPI:
    """The app serving `gateway`; `manage` starts and stops the gateway with the app."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage:
            await gateway.start()
        try:
            yield
        finally:
            if manage:
                await gateway.stop()

    app = FastAPI(
        title="ocr-gateway",
        version="1",
        summary="HTTP front door of ocr-stream: submit documents, follow tasks, fetch results.",
        description="Publishes OcrRequests to the requests topic and serves a view of the "
        "progress and results topics. API keys (when configured): `Authorization: Bearer "
        "<key>` or `X-API-Key`. Errors: `{\"error\": {\"code\", \"message\"}}`.",
        lifespan=lifespan,
        docs_url=None,  # served below from packaged assets, not FastAPI's default CDN
    )
    app.state.gateway = gateway
    app.include_router(routes_tasks.router)
    app.include_router(routes_results.router)

    def refuse(error: GatewayError) -> JSONResponse:
        if 400 <= error.status < 500:
            gateway.metrics.refused.labels(error.code.value).inc()
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return refuse(exc)

    @app.exception_handler(OcrError)
    async def _document_error(_: Request, exc: OcrError) -> JSONResponse:
        return refuse(GatewayError(_status_of(exc.code), exc.code, exc.message))

    @app.exception_handler(ToolError)
    async def _request_error(_: Request, exc: ToolError) -> JSONResponse:
        return refuse(GatewayError(422, ErrorCode.REQUEST_INVALID, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        return refuse(GatewayError(422, ErrorCode.REQUEST_INVALID, detail))

    @app.exception_handler(KafkaError)
    @app.exception_handler(RedisError)
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("backend_unavailable", error=repr(exc))
        return refuse(GatewayError(
            503, GatewayCode.UNAVAILABLE,
            f"{'Kafka' if isinstance(exc, KafkaError) else 'Redis'} does not answer; try again "
            "shortly",
        ))

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # The API page's scripts come from the swagger-ui-bundle wheel, so /docs works in
    # estates whose gateways cannot reach a CDN (FastAPI's default loads them from one).
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title="ocr-gateway API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    @app.get("/healthz", tags=["operations"], summary="The process and its loops are alive")
    async def healthz() -> JSONResponse:
        alive, why = gateway.alive()
        return JSONResponse({"ok": alive, "reason": why}, status_code=200 if alive else 503)

    @app.get("/readyz", tags=["operations"], summary="Kafka producer up, Redis answers, view "
             "caught up")
    async def readyz() -> JSONResponse:
        ready, why = await gateway.ready()
        return JSONResponse({"ok": ready, "reason": why}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    wrapped: Any = app
    wrapped.add_middleware(BodyLimit, limit=gateway.config.max_upload_bytes + BODY_OVERHEAD)
    wrapped.add_middleware(RequestMetrics, metrics=gateway.metrics)
    return app

