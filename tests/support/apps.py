"""Running consumer Apps in the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from consumer.app import App
from consumer.config import Settings
from consumer.engines.base import Engine
from tests.support.kafka import wait_until


@asynccontextmanager
async def running_app(
    settings: Settings, engine: Engine, *, ready_timeout: float = 60.0,
    health_port: int | None = None,
) -> AsyncIterator[App]:
    """`health_port=0` serves /metrics, /healthz and /readyz on an ephemeral port
    (`app.health.url`)."""
    app = App(settings, engine=engine, health_port=health_port)
    task = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: app.ready or task.done(), ready_timeout)
        if task.done():
            task.result()  # raise the start-up error
        yield app
    finally:
        app.stop()
        await asyncio.wait_for(task, 60)
