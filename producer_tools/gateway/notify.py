"""Wake-ups for readers waiting on a task (SSE streams, the synchronous endpoint).

The view publishes a ping on a task's channel whenever it changed that task, from whichever
replica owns the task's partition. Each gateway process holds one pattern subscription and
wakes its local waiters; they then re-read the task from Redis, so a ping carries no data
and a lost ping costs only a delay: waiters re-read at least every `fallback_s` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from redis.exceptions import RedisError

from consumer.log import get_logger
from producer_tools.gateway.view_store import ViewStore

log = get_logger(__name__)


class Notifier:
    def __init__(self, store: ViewStore) -> None:
        self._store = store
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._stopping = asyncio.Event()

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the task changes; clear it before each re-read."""
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._waiters.get(task_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[task_id]

    def _wake(self, task_id: str) -> None:
        for event in self._waiters.get(task_id, ()):
            event.set()

    def _wake_all(self) -> None:
        # After a lost subscription: pings may have been missed, so everyone re-reads.
        for waiting in self._waiters.values():
            for event in waiting:
                event.set()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            pubsub = self._store.pubsub()
            try:
                await pubsub.psubscribe(self._store.channel_pattern)
                delay = 0.5
                self._wake_all()
                while not self._stopping.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "pmessage":
                        self._wake(self._store.task_of_channel(str(message["channel"])))
            except (RedisError, OSError) as exc:
                log.warning("notifier_retrying", error=repr(exc), retry_in=delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 10.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
