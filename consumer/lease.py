"""A task's ownership lease in Redis, held while the task runs in this process.

The lease keeps two consumers from computing one task at the same time: after a
rebalance, the partition's new owner reads the request again while the old owner may
still be finishing its in-flight pages. The newcomer waits for the lease, then reads the
task's state afresh and resumes from the pages recorded meanwhile (or, if the task
finished, announces it instead of recomputing).

A lease is an optimisation against duplicate work, never a correctness condition: if it
is lost (Redis restarted empty, a refresh missed during an outage), the task runs on and
at worst two consumers publish the same keyed pages, which the compacted results topic
and the deterministic event ids absorb.

During a Redis outage, taking the lease and refreshing it wait the outage out (the store's
operations do; see `consumer.redis_outage`). Releasing it is best-effort and never raises,
so an error on the way out (READONLY from a failover, a connection reset) cannot turn a
task that ended into one that failed: the lease then simply expires after its lifetime.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Protocol

from consumer.log import get_logger

log = get_logger(__name__)

RETRY_S = 0.5
# How long leaving the lease waits for its refresher to stop before going on without it.
REFRESHER_STOP_S = 5.0


class LeaseStore(Protocol):
    """Where leases live (consumer.state.TaskStateStore in the service)."""

    async def acquire_lease(self, task_id: str, owner: str) -> str | None:
        """Take the lease (or extend our own); None when taken, else the holder."""
        ...

    async def refresh_lease(self, task_id: str, owner: str) -> bool: ...

    async def release_lease(self, task_id: str, owner: str) -> None: ...


class TaskLease:
    """`async with TaskLease(...)`: waits until the lease is ours, refreshes it every third
    of its lifetime, re-takes it when it vanished, releases it on the way out."""

    def __init__(self, store: LeaseStore, task_id: str, owner: str, ttl_s: float) -> None:
        self._store = store
        self._task_id = task_id
        self._owner = owner
        self._refresh_s = max(ttl_s / 3, 1.0)
        self._refresher: asyncio.Task[None] | None = None
        self._leaving = False

    async def __aenter__(self) -> TaskLease:
        waited = 0.0
        while True:
            holder = await self._store.acquire_lease(self._task_id, self._owner)
            if holder is None:
                break
            if waited == 0.0:
                log.info("task_lease_busy", holder=holder)
            await asyncio.sleep(RETRY_S)
            waited += RETRY_S
        if waited:
            log.info("task_lease_taken", waited_s=waited)
        self._refresher = asyncio.create_task(self._keep())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leaving = True
        if self._refresher is not None:
            self._refresher.cancel()
            # Bounded, and the flag ends its loop even if a library swallowed the cancel:
            # a refresher that outlived its task kept the task's work (and its partition's
            # commits) open in the chaos suite.
            done, _ = await asyncio.wait([self._refresher], timeout=REFRESHER_STOP_S)
            if not done:
                log.warning("lease_refresher_stuck", waited_s=REFRESHER_STOP_S)
        # Also on interruption: the next owner should not wait for the lease to expire.
        # Best-effort (the store logs and swallows every error): the task's outcome is
        # recorded before this, and an error here must not be mistaken for the task's.
        await self._store.release_lease(self._task_id, self._owner)

    async def _keep(self) -> None:
        lost_to: str | None = None
        while not self._leaving:
            await asyncio.sleep(self._refresh_s)
            if self._leaving:
                return
            try:
                if await self._store.refresh_lease(self._task_id, self._owner):
                    continue
                # Expired (an outage longer than its lifetime) or wiped with Redis: take it
                # again unless someone else has it by now.
                holder = await self._store.acquire_lease(self._task_id, self._owner)
            except Exception as exc:  # a missed refresh only risks a duplicate, never loss
                log.warning("lease_refresh_failed", error=str(exc))
                continue
            if holder is None:
                log.info("lease_retaken")
                lost_to = None
            elif holder != lost_to:
                # Both run to the end: keyed, idempotent outputs make that a duplicate.
                log.warning("lease_lost", holder=holder)
                lost_to = holder
