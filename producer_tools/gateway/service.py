"""The gateway's parts, started and stopped together: producer, view, notifier, workers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from consumer.artifacts.store import open_artifact_store
from consumer.log import get_logger
from consumer.state import redis_client
from producer_tools.gateway.access import KeyRing, load_keys
from producer_tools.gateway.documents import DocumentWorkers
from producer_tools.gateway.metrics import GatewayMetrics
from producer_tools.gateway.notify import Notifier
from producer_tools.gateway.settings import GatewayConfig
from producer_tools.gateway.submission import RequestPublisher
from producer_tools.gateway.view import View
from producer_tools.gateway.view_store import ViewStore

log = get_logger(__name__)

OPEN_TASKS_SAMPLE_S = 10.0


class Gateway:
    def __init__(self, config: GatewayConfig, *, redis: aioredis.Redis | None = None) -> None:
        core, own = config.core, config.gateway
        self.config = config
        self.metrics = GatewayMetrics()
        self.keys = KeyRing(
            load_keys(
                own.api_keys.get_secret_value() if own.api_keys else None, own.api_keys_file
            )
        )
        # redis_client reads only the RedisConnection fields (it still names Settings).
        self.redis = redis or redis_client(cast(Any, core))
        self.store = ViewStore(self.redis, core.redis_key_prefix, own.view_ttl_s)
        self.publisher = RequestPublisher(core)
        self.view = View(core, self.store, own.view_group, self.metrics)
        self.notifier = Notifier(self.store)
        # Where the consumers store figures; read for the ZIP (None: figures say so).
        self.artifacts = open_artifact_store(core)
        self.workers = DocumentWorkers(own.render_workers, core.max_pages, core.max_page_pixels)
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        await self.publisher.start()
        self._tasks = [
            asyncio.create_task(self.view.run(), name="gateway-view"),
            asyncio.create_task(self.notifier.run(), name="gateway-notifier"),
            asyncio.create_task(self._sample_open_tasks(), name="gateway-open-tasks"),
        ]
        log.info(
            "gateway_started", api_keys=self.keys.required,
            view_group=self.config.gateway.view_group,
        )

    async def stop(self) -> None:
        self.view.stop()
        self.notifier.stop()
        for task in self._tasks:
            if task.get_name() == "gateway-open-tasks":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 15)
        self._tasks = []
        await self.publisher.stop()
        self.workers.close()
        await self.redis.aclose()

    def alive(self) -> tuple[bool, str]:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return False, f"{task.get_name()} stopped: {task.exception()!r}"
        return True, "ok"

    async def ready(self) -> tuple[bool, str]:
        alive, why = self.alive()
        if not alive:
            return False, why
        if not self.publisher.started:
            return False, "the request producer is not started"
        try:
            await self.store.ping()
        except (RedisError, OSError) as exc:
            return False, f"Redis does not answer: {exc}"
        if not self.view.caught_up:
            return False, f"the view is catching up ({self.view.error or 'reading'})"
        return True, "ok"

    async def _sample_open_tasks(self) -> None:
        pattern = f"{self.config.core.redis_key_prefix}gw:open:*"
        while True:
            try:
                total = 0
                async for key in self.redis.scan_iter(match=pattern, count=500):
                    total += int(await self.redis.zcard(key))
                self.metrics.open_tasks.set(total)
            except (RedisError, OSError) as exc:
                log.warning("open_tasks_sample_failed", error=repr(exc))
            await asyncio.sleep(OPEN_TASKS_SAMPLE_S)
