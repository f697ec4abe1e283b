"""Waiting out a Redis outage: task-state operations retry, they do not fail the task.

Redis holds progress, not results: while it is away, a task can neither record a page nor
its end, so the right move is to wait (the task stays unfinished and its offset
uncommitted; a shutdown meanwhile loses nothing). An outage is a failover, a restart or a
network cut; all of them end, and a misconfiguration (a wrong password) is better seen in
a log line and a metric than as every task failing.

What it guarantees:
- An operation that meets a transient error (TRANSIENT_ERRORS) is retried with a backoff
  bounded by RETRY_MAX_S, until it succeeds or its caller is cancelled; any other error is
  raised at once (a bug, or a command Redis refuses for good).
- One log line when an outage starts (`redis_unavailable`) and one when it ends
  (`redis_available`, with its length), however many operations wait meanwhile; the same
  two moments go to an optional `OutageListener` (the metrics).
- Time spent waiting can be kept out of a task's time budget: inside
  `redis_waits_excluded(timeout)`, the `asyncio.Timeout` stops counting while any
  operation of that task waits for Redis (`RedisWaitClock`).

What it does not do: tell an outage from a Redis that will never come back (nothing can;
the log line and metric are for a person), or bound the wait (a task waits as long as the
outage lasts; the in-flight budget fills and partitions pause meanwhile).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final, Protocol, TypeVar

from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from consumer.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

# Errors that end by themselves: the connection (refused, reset, a server still loading
# its data, a password rotated under us), a timeout, the failover family (a primary
# demoted to replica answers READONLY, a replica cut from its primary MASTERDOWN (a
# ClusterDownError), a resharding cluster TRYAGAIN), and a server refusing writes until
# an operator acts (OOM at maxmemory; MISCONF, its snapshots failing): failing tasks for
# those would turn an operator's alert into users' failed documents.
TRANSIENT_ERRORS: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    OutOfMemoryError,
)
# Refusals redis-py reports as a plain ResponseError, known by their prefix.
TRANSIENT_REPLIES: Final = ("MISCONF",)
RETRY_FIRST_S: Final = 0.2
RETRY_MAX_S: Final = 5.0


def transient(exc: BaseException) -> bool:
    """Whether `exc` is an outage that ends by itself or by an operator, not an error of
    the operation (a wrong type, a script error)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(TRANSIENT_REPLIES)


class OutageListener(Protocol):
    """Told when an outage starts and ends (metrics); called on the event loop."""

    def redis_unavailable(self) -> None: ...

    def redis_available(self, down_s: float) -> None: ...


class RedisWaitClock:
    """Keeps Redis waits out of one task's time budget.

    While at least one operation of the task waits, the task's `asyncio.Timeout` is
    suspended; when the last one is through, it is rescheduled with the time it had left.
    Overlapping waits (several pages recording at once) count once.
    """

    def __init__(self, timeout: asyncio.Timeout) -> None:
        self._timeout = timeout
        self._waiting = 0
        self._left_s: float | None = None
        self.waited_s = 0.0
        self._since = 0.0

    def wait_started(self) -> None:
        self._waiting += 1
        if self._waiting > 1:
            return
        loop = asyncio.get_running_loop()
        self._since = loop.time()
        when = self._timeout.when()
        # An expired budget is not revived: the timeout is already cancelling the task.
        if when is not None and when > self._since and not self._timeout.expired():
            self._left_s = when - self._since
            self._timeout.reschedule(None)

    def wait_ended(self) -> None:
        self._waiting -= 1
        if self._waiting > 0:
            return
        loop = asyncio.get_running_loop()
        self.waited_s += loop.time() - self._since
        if self._left_s is not None:
            self._timeout.reschedule(loop.time() + self._left_s)
            self._left_s = None


_task_clock: contextvars.ContextVar[RedisWaitClock | None] = contextvars.ContextVar(
    "redis_wait_clock", default=None
)


@contextmanager
def redis_waits_excluded(timeout: asyncio.Timeout) -> Iterator[RedisWaitClock]:
    """Within this block (and the asyncio tasks it creates), Redis waits do not count
    against `timeout`. The runner wraps a task's work in it."""
    clock = RedisWaitClock(timeout)
    token = _task_clock.set(clock)
    try:
        yield clock
    finally:
        _task_clock.reset(token)


def _raise_if_cancelling(exc: BaseException) -> None:
    """A task being cancelled must stop, even when a client library reported the
    cancellation as a connection error: retrying would swallow it (a lease refresher
    that outlived its task was seen so in the chaos suite, cause not pinned down)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


class OutageWaiter:
    """Runs Redis operations, waiting out transient errors; one per Redis client."""

    def __init__(
        self,
        listener: OutageListener | None = None,
        *,
        on_error: Callable[[str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_error(operation)`: told of every failed attempt that will be retried
        (ocr_redis_errors_total counts them by operation)."""
        self._listener = listener
        self._on_error = on_error
        self._sleep = sleep
        self._clock = clock
        self._down_since: float | None = None
        self._retries = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    async def call(self, operation: str, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = RETRY_FIRST_S
        task_clock: RedisWaitClock | None = None
        try:
            while True:
                try:
                    result = await attempt()
                except (*TRANSIENT_ERRORS, ResponseError) as exc:
                    if not transient(exc):
                        raise
                    _raise_if_cancelling(exc)
                    self._outage(operation, exc)
                    if self._on_error is not None:
                        self._on_error(operation)
                    if task_clock is None:
                        task_clock = _task_clock.get()
                        if task_clock is not None:
                            task_clock.wait_started()
                    await self._sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                self._recovered()
                return result
        finally:
            if task_clock is not None:
                task_clock.wait_ended()

    def _outage(self, operation: str, exc: BaseException) -> None:
        self._retries += 1
        if self._down_since is not None:
            return
        self._down_since = self._clock()
        log.warning(
            "redis_unavailable", operation=operation, error=f"{type(exc).__name__}: {exc}",
            retry_max_s=RETRY_MAX_S,
        )
        if self._listener is not None:
            self._listener.redis_unavailable()

    def _recovered(self) -> None:
        if self._down_since is None:
            return
        down_s = self._clock() - self._down_since
        log.info("redis_available", down_s=round(down_s, 3), retries=self._retries)
        self._down_since = None
        self._retries = 0
        if self._listener is not None:
            self._listener.redis_available(down_s)
