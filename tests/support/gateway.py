"""Running ocr-gateway in the test's event loop, on an ephemeral port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import uvicorn

from consumer.config import Settings
from producer_tools.gateway.app import create_app
from producer_tools.gateway.service import Gateway
from producer_tools.gateway.settings import GatewayConfig, GatewaySettings
from tests.support.kafka import wait_until


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str

    def client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=60.0, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def running_gateway(
    settings: Settings, *, ready: bool = True, **gateway_settings: object
) -> AsyncIterator[RunningGateway]:
    """The gateway on `settings` (its topics, Redis prefix, blob root); `gateway_settings`
    are GatewaySettings fields. Waits until /readyz would say ready unless ready=False."""
    own = GatewaySettings(host="127.0.0.1", port=0, **gateway_settings)  # type: ignore[arg-type]
    gateway = Gateway(GatewayConfig(core=settings, gateway=own))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(gateway), host="127.0.0.1", port=0, log_config=None, access_log=False,
            lifespan="on",
        )
    )
    # The test's loop owns the signals; uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started or task.done(), 60)
        if task.done():
            task.result()
        port = server.servers[0].sockets[0].getsockname()[1]
        if ready:
            await wait_until(lambda: gateway.view.caught_up, 60)
        yield RunningGateway(gateway=gateway, url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)
