"""Stopping a task wherever it runs: each run's cancel scope, and every member's watch.

How a cancel travels: whichever member reads the cancel record (TaskRunner.cancel) writes
the task's cancel marker in Redis and publishes a notice on the cancel channel
(consumer/state.py). Every member listens (`CancelWatch`); the one whose `RunningTasks`
holds the task cancels that run's `CancelScope`, which cancels the run's pages (the engine
aborts them, their slots free at once), and the run ends `cancelled`. So the record may
land on any partition, read by any member. Markers are also checked for every running
task about once a second, and by each run as it starts, so a notice lost while a
subscription was down, or sent before the run began, still stops the task.

What it does not guarantee: a page that is publishing when the cancel arrives is published
and recorded whole (the task keeps it), so a cancel stops a task within a page's
publication, not at once. A run interrupted at the same moment (revoke, shutdown) stays
interrupted: its next run finds the marker and ends `cancelled` there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Protocol

from consumer.log import get_logger
from schemas.common import ErrorCode, ErrorInfo

log = get_logger(__name__)

# How often the markers of the running tasks are read, in case a notice was missed.
CHECK_INTERVAL_S = 1.0


class TaskCancelled(Exception):
    """A cancel request stopped the run; `reason` is the requester's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason or "cancelled")
        self.reason = reason


def cancel_error(reason: str) -> ErrorInfo:
    """The error a cancelled task ends with: the requester's reason, or a plain statement."""
    message = reason or "cancelled by a cancel request (no reason given)"
    return ErrorInfo(code=ErrorCode.TASK_CANCELLED, message=message[:2048])


class CancelScope:
    """`async with scope:` runs its body until `cancel(reason)`, which cancels the task
    running the body; the block then raises TaskCancelled instead of CancelledError.

    Built like asyncio.timeout: a cancellation from outside (a revoke, a shutdown) that
    arrives too stays a CancelledError, so the run is interrupted, not ended. A scope
    cancelled before it is entered raises TaskCancelled on entry; one cancelled after its
    block only remembers the reason.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._inside = False
        self._cancelled_task = False

    def cancel(self, reason: str) -> bool:
        """True when this call cancelled the scope (the first one does)."""
        if self.reason is not None:
            return False
        self.reason = reason
        if self._inside and self._task is not None:
            self._task.cancel()
            self._cancelled_task = True
        return True

    async def __aenter__(self) -> CancelScope:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("CancelScope must be used inside a task")
        if self.reason is not None:
            raise TaskCancelled(self.reason)
        self._task = task
        self._cancelling = task.cancelling()
        self._inside = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inside = False
        if not self._cancelled_task or self._task is None:
            return
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            assert self.reason is not None
            raise TaskCancelled(self.reason) from None


class RunningTasks:
    """The task runs of this process that a cancel can stop, by task id (the work book
    admits one run per task id at a time)."""

    def __init__(self) -> None:
        self._scopes: dict[str, CancelScope] = {}

    @contextmanager
    def running(self, task_id: str) -> Iterator[CancelScope]:
        """Registers a run of `task_id` for as long as the block lasts."""
        scope = CancelScope()
        self._scopes[task_id] = scope
        try:
            yield scope
        finally:
            if self._scopes.get(task_id) is scope:
                del self._scopes[task_id]

    def snapshot(self) -> dict[str, CancelScope]:
        return dict(self._scopes)

    def cancel(self, task_id: str, reason: str) -> bool:
        """Cancel the run of `task_id` here; False when none runs here (or it was already)."""
        scope = self._scopes.get(task_id)
        return scope is not None and scope.cancel(reason)


class CancelSignals(Protocol):
    """Where cancels are kept and announced (consumer.state.TaskStateStore)."""

    async def cancel_reasons(self, task_ids: Sequence[str]) -> dict[str, str]: ...

    async def listen_for_cancels(self, notice: Callable[[str, str], None]) -> None: ...


class CancelWatch:
    """Every member runs one: notices from the cancel channel, and a marker check of the
    running tasks every `interval_s`, both cancel the runs they name."""

    def __init__(
        self, signals: CancelSignals, running: RunningTasks, *,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._signals = signals
        self._running = running
        self._interval_s = interval_s

    async def run(self) -> None:
        """Until cancelled. A bug in either half restarts both: cancels must not stop
        working for the rest of the process's life."""
        while True:
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._signals.listen_for_cancels(self._notice))
                    group.create_task(self._check_markers())
            except Exception as exc:
                log.error("cancel_watch_failed", error=repr(exc))
                await asyncio.sleep(self._interval_s)

    def _notice(self, task_id: str, reason: str) -> None:
        if self._running.cancel(task_id, reason):
            log.info("task_cancel_received", task_id=task_id, via="notice")

    async def _check_markers(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            # The scopes as they are now: a run that ends meanwhile and a forced run that
            # takes its place (clearing the marker) must not get the old run's cancel.
            scopes = self._running.snapshot()
            if not scopes:
                continue
            try:
                reasons = await self._signals.cancel_reasons(list(scopes))
            except Exception as exc:  # the next check tries again; notices still arrive
                log.warning("cancel_check_failed", error=repr(exc))
                continue
            for task_id, reason in reasons.items():
                if scopes[task_id].cancel(reason):
                    log.info("task_cancel_received", task_id=task_id, via="marker")
