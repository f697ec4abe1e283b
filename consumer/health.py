"""A tiny HTTP server for /metrics, /healthz and /readyz.

Built on asyncio.start_server so the consumer needs no web framework: it answers a handful
of GET requests a minute from Prometheus and the kubelet. Every connection gets one response
and is closed; requests are read with size and time limits so a garbage or slow client
cannot hold memory or a task for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.config import Settings
from consumer.log import get_logger

log = get_logger(__name__)

# A probe or scrape request is a few hundred bytes; anything larger is not one of ours.
MAX_HEADER_BYTES = 16 * 1024
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
METRICS_PATH = "/metrics"

Check = Callable[[], "bool | tuple[bool, str]"]


def _evaluate(check: Check) -> tuple[bool, str]:
    try:
        outcome = check()
    except Exception as exc:  # a failing check means "not ok", never a dead server
        return False, f"check raised {exc!r}"
    if isinstance(outcome, tuple):
        return bool(outcome[0]), str(outcome[1])
    return bool(outcome), "ok" if outcome else "not ok"


class HealthServer:
    """Serves the registry and two probes on settings.metrics_host:metrics_port.

    `liveness` answers "can this process still work" (event loop answering, engine alive; a
    False restarts the pod); `readiness` answers "should traffic/rollouts count this pod"
    (engine loaded, group joined). Both may return a bool or (bool, reason). Port 0 binds
    an ephemeral port; read it from `.port`.
    """

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        *,
        liveness: Check | None = None,
        readiness: Check | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self._registry = registry
        self._liveness: Check = liveness or (lambda: True)
        self._readiness: Check = readiness or (lambda: True)
        self._host = host if host is not None else settings.metrics_host
        self._requested_port = port if port is not None else settings.metrics_port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("HealthServer is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._requested_port,
            limit=MAX_HEADER_BYTES, reuse_address=True,
        )
        sockets = self._server.sockets
        self.port = int(sockets[0].getsockname()[1]) if sockets else self._requested_port
        log.info("health_server_started", host=self._host, port=self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Open connections are at most a few seconds from done; cancel rather than wait so
        # shutdown is never held up by a stuck client.
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        self.port = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Connection handling ----------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer
        except Exception:
            log.exception("health_request_failed")
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await self._respond(writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "")
            return
        except asyncio.IncompleteReadError as exc:
            # Tolerate a bare "GET /path\n" (curl-less probes, netcat) if a line arrived.
            if b"\n" not in exc.partial:
                return
            head = exc.partial
        request_line = head.split(b"\n", 1)[0].strip()
        parts = request_line.split()
        if len(parts) < 2:
            await self._respond(writer, HTTPStatus.BAD_REQUEST, "")
            return
        try:
            method = parts[0].decode("ascii")
            target = parts[1].decode("ascii")
        except UnicodeDecodeError:
            await self._respond(writer, HTTPStatus.BAD_REQUEST, "")
            return
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await self._respond(writer, HTTPStatus.METHOD_NOT_ALLOWED, "", head_only=False,
                                extra_headers=[("Allow", "GET, HEAD")])
            return
        head_only = method == "HEAD"
        if path == METRICS_PATH:
            body = generate_latest(self._registry)
            await self._respond(writer, HTTPStatus.OK, body, CONTENT_TYPE_LATEST, head_only)
        elif path == HEALTHZ_PATH:
            ok, reason = _evaluate(self._liveness)
            await self._respond_json(writer, ok, reason, head_only)
        elif path == READYZ_PATH:
            ok, reason = _evaluate(self._readiness)
            await self._respond_json(writer, ok, reason, head_only)
        else:
            await self._respond(writer, HTTPStatus.NOT_FOUND, "", head_only=head_only)

    async def _respond_json(
        self, writer: asyncio.StreamWriter, ok: bool, reason: str, head_only: bool
    ) -> None:
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        body = json.dumps({"status": "ok" if ok else "unavailable", "reason": reason})
        await self._respond(writer, status, body, "application/json", head_only)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: HTTPStatus,
        body: bytes | str,
        content_type: str = "text/plain; charset=utf-8",
        head_only: bool = False,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> None:
        payload = body.encode() if isinstance(body, str) else body
        if not payload and status is not HTTPStatus.OK:
            payload = f"{status.value} {status.phrase}\n".encode()
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        lines.extend(f"{name}: {value}" for name, value in extra_headers or [])
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if not head_only:
            writer.write(payload)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
