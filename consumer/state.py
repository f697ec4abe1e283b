"""Task state in Redis: status, progress, per-page completion, ownership lease.

Redis is what lets a restarted or reassigned consumer resume a task from its missing pages
and recognise a re-sent duplicate of a finished task. It is not the source of truth for
results (Kafka is): if Redis loses its data, tasks are simply recomputed (duplicates, never
loss). Every key expires after `state_ttl_s`.

Guarantees:
- Every operation but `ping` and `release_lease` waits out a Redis outage (see
  `consumer.redis_outage`): it returns once Redis answers, never raises for an outage.
- A final status (completed, failed) is never overwritten: `finish` and `begin` leave it
  as it is, except `begin(reset_pages=True)`, which is how `force` recomputes a task.
- `finish` writes the task's identity again (fingerprint, attempt, owner, page total, as
  `begin` and `set_pages_total` gave them in this process), so a task whose state Redis
  lost mid-run still ends with its fingerprint: a later request reusing the id for other
  content is then a conflict, not a duplicate.
- `release_lease` is best-effort and never raises: the lease expires by itself.

Keys (P = settings.redis_key_prefix):
  P task:<id>         hash   status, fingerprint, attempt, owner, pages_total, timings, error
  P task:<id>:pages   hash   page -> PageStatus value ("ok" | "failed"), once published
  P task:<id>:lease   string owner id, expires after lease_ttl_s unless refreshed
  P task:<id>:cancel  string JSON {reason, at}: a cancel was requested (state_ttl_s)
Channel:
  P cancels           JSON {task_id, reason}, published with each cancel marker, so that the
                      member running the task stops it at once; the marker is the truth, a
                      notice missed (subscription down) is caught by the marker checks
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from consumer.config import Settings
from consumer.log import get_logger
from consumer.redis_outage import OutageListener, OutageWaiter
from schemas.common import ErrorCode, ErrorInfo
from schemas.progress import TaskStatus
from schemas.result import PageStatus

log = get_logger(__name__)

FINAL_STATUSES: Final = tuple(status.value for status in TaskStatus if status.is_final)
# A lease release is an optimisation (a takeover without waiting for the expiry): it must
# not hold up a task's exit during an outage.
RELEASE_TIMEOUT_S: Final = 2.0

# Released only by its owner: compare-and-delete in one step.
_RELEASE_LEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Taken when free (or already ours), in one step: between a failed SET NX and a GET the
# lease can expire, and a holder read as "nobody" must not count as taken.
_ACQUIRE_LEASE = """
local holder = redis.call('get', KEYS[1])
if (not holder) or holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ''
end
return holder
"""
# KEYS: task hash, pages hash. ARGV: reset ("1"/"0"), ttl, then field/value pairs. A final
# status stays unless reset (force): nothing may overwrite it (0 = left as it was).
_BEGIN = """
local status = redis.call('hget', KEYS[1], 'status')
local reset = ARGV[1] == '1'
if (not reset) and status and FINAL[status] then return 0 end
if reset then redis.call('del', KEYS[2]) end
redis.call('hdel', KEYS[1], 'error_code', 'error_message', 'finished_at')
for i = 3, #ARGV, 2 do redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('expire', KEYS[1], ARGV[2])
return 1
"""
# KEYS: task hash, pages hash. ARGV: ttl, then field/value pairs. 0 = a final status was
# there already and stays.
_FINISH = """
local status = redis.call('hget', KEYS[1], 'status')
if status and FINAL[status] then return 0 end
for i = 2, #ARGV, 2 do redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('expire', KEYS[1], ARGV[1])
redis.call('expire', KEYS[2], ARGV[1])
return 1
"""
_FINAL_TABLE = "local FINAL = {" + ", ".join(f"[{s!r}] = true" for s in FINAL_STATUSES) + "}\n"
_REFRESH_LEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(slots=True)
class TaskState:
    task_id: str
    status: TaskStatus
    fingerprint: str = ""
    attempt: int = 0
    owner: str = ""
    pages_total: int | None = None
    pages: dict[int, PageStatus] = field(default_factory=dict)  # pages published and recorded
    error: ErrorInfo | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def pages_done(self) -> int:
        return len(self.pages)

    @property
    def pages_failed(self) -> int:
        return sum(1 for status in self.pages.values() if status is PageStatus.FAILED)


def redis_client(settings: Settings) -> aioredis.Redis:
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    tls: dict[str, object] = {}
    if settings.redis_url.lower().startswith("rediss://"):
        # Verified, host name included, whatever redis-py's default (5.x did not check the
        # name); query parameters of the URL still win, as an operator's explicit choice.
        tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if settings.redis_ssl_cafile is not None:
            tls["ssl_ca_certs"] = str(settings.redis_ssl_cafile)
        if settings.redis_ssl_certfile is not None:
            tls["ssl_certfile"] = str(settings.redis_ssl_certfile)
        if settings.redis_ssl_keyfile is not None:
            tls["ssl_keyfile"] = str(settings.redis_ssl_keyfile)
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url,
        # Both at their defaults, named so that **tls below goes to the open **kwargs only.
        single_connection_client=False,
        auto_close_connection_pool=None,
        password=password,
        decode_responses=True,
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
        health_check_interval=15,
        **tls,
    )
    return client


class TaskStateStore:
    def __init__(
        self, client: aioredis.Redis, settings: Settings,
        on_error: Callable[[str], None] | None = None,
        outages: OutageListener | None = None,
    ) -> None:
        """`on_error(operation)` is told of every failed call that will be retried (the
        consumer counts them: ocr_redis_errors_total); `outages` of each outage's start
        and end (ocr_redis_available, ocr_redis_outages_total, ...)."""
        self._redis = client
        self._prefix = settings.redis_key_prefix
        self._ttl = settings.state_ttl_s
        self._lease_ms = settings.lease_ttl_s * 1000
        self._waiter = OutageWaiter(outages, on_error=on_error)
        # What begin() and set_pages_total() recorded for tasks running here, written
        # again by finish() in case Redis lost the task's hash meanwhile.
        self._identity: dict[str, dict[str, str | int | float]] = {}

    @property
    def redis_down(self) -> bool:
        """True while an operation is waiting out an outage."""
        return self._waiter.down

    def _task(self, task_id: str) -> str:
        return f"{self._prefix}task:{task_id}"

    def _pages(self, task_id: str) -> str:
        return f"{self._prefix}task:{task_id}:pages"

    def _lease(self, task_id: str) -> str:
        return f"{self._prefix}task:{task_id}:lease"

    def _cancel(self, task_id: str) -> str:
        return f"{self._prefix}task:{task_id}:cancel"

    @property
    def cancel_channel(self) -> str:
        return f"{self._prefix}cancels"

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def load(self, task_id: str) -> TaskState | None:
        async def call() -> tuple[dict[str, str], dict[str, str]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._task(task_id))
                pipe.hgetall(self._pages(task_id))
                task, pages = await pipe.execute()
            return task, pages

        task, pages = await self._waiter.call("load", call)
        if not task:
            return None
        error = None
        if task.get("error_code"):
            error = ErrorInfo(
                code=ErrorCode(task["error_code"]), message=task.get("error_message", "")
            )
        return TaskState(
            task_id=task_id,
            status=TaskStatus(task.get("status", TaskStatus.QUEUED)),
            fingerprint=task.get("fingerprint", ""),
            attempt=int(task.get("attempt", 0)),
            owner=task.get("owner", ""),
            pages_total=int(task["pages_total"]) if task.get("pages_total") else None,
            pages={int(page): PageStatus(status) for page, status in pages.items()},
            error=error,
            started_at=float(task["started_at"]) if task.get("started_at") else None,
            finished_at=float(task["finished_at"]) if task.get("finished_at") else None,
        )

    async def begin(
        self, task_id: str, *, fingerprint: str, attempt: int, owner: str, reset_pages: bool
    ) -> bool:
        """Record that `owner` works on the task; `reset_pages` forgets earlier pages (force).

        False when the task already had a final status and `reset_pages` is off: nothing
        was written (a copy raced a finished run; its outcome stands).
        """
        identity: dict[str, str | int | float] = {
            "fingerprint": fingerprint, "attempt": attempt, "owner": owner,
        }
        self._identity[task_id] = identity
        fields = {"status": TaskStatus.STARTED.value, **identity, "started_at": time.time()}
        args: list[str | int | float] = ["1" if reset_pages else "0", self._ttl]
        for name, value in fields.items():
            args += [name, value]
        written = await self._waiter.call(
            "begin",
            lambda: self._redis.eval(
                _FINAL_TABLE + _BEGIN, 2, self._task(task_id), self._pages(task_id), *args
            ),
        )
        return bool(written)

    async def set_pages_total(self, task_id: str, pages_total: int) -> None:
        self._identity.setdefault(task_id, {})["pages_total"] = pages_total
        await self._waiter.call(
            "pages_total", lambda: self._redis.hset(self._task(task_id), "pages_total", pages_total)
        )

    async def page_done(self, task_id: str, page: int, status: PageStatus) -> None:
        async def call() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._pages(task_id), str(page), status.value)
                pipe.expire(self._pages(task_id), self._ttl)
                pipe.expire(self._task(task_id), self._ttl)
                await pipe.execute()

        await self._waiter.call("page_done", call)

    async def finish(self, task_id: str, status: TaskStatus, error: ErrorInfo | None) -> bool:
        """Record the task's final status; False when it had one already (left as it was).

        The identity begin() recorded here is written with it: if Redis lost the task's
        hash mid-run, the finished task still names its fingerprint.
        """
        fields: dict[str, str | int | float] = {
            **self._identity.pop(task_id, {}), "status": status.value, "finished_at": time.time(),
        }
        if error is not None:
            fields |= {"error_code": error.code.value, "error_message": error.message}
        args: list[str | int | float] = [self._ttl]
        for name, value in fields.items():
            args += [name, value]
        written = await self._waiter.call(
            "finish",
            lambda: self._redis.eval(
                _FINAL_TABLE + _FINISH, 2, self._task(task_id), self._pages(task_id), *args
            ),
        )
        if not written:
            log.warning("task_final_status_kept", attempted=status.value)
        return bool(written)

    async def acquire_lease(self, task_id: str, owner: str) -> str | None:
        """Take the task's lease (or extend our own); None when taken, else the holder."""

        async def call() -> str | None:
            raw = await self._redis.eval(
                _ACQUIRE_LEASE, 1, self._lease(task_id), owner, self._lease_ms
            )
            holder = raw.decode() if isinstance(raw, bytes) else str(raw)
            return holder or None

        return await self._waiter.call("lease", call)

    async def refresh_lease(self, task_id: str, owner: str) -> bool:
        result = await self._waiter.call(
            "lease_refresh",
            lambda: self._redis.eval(
                _REFRESH_LEASE, 1, self._lease(task_id), owner, self._lease_ms
            ),
        )
        return bool(result)

    async def lease_holder(self, task_id: str) -> str | None:
        """Who holds the task's lease now (None: nobody runs the task)."""
        holder = await self._waiter.call(
            "lease_holder", lambda: self._redis.get(self._lease(task_id))
        )
        return str(holder) if holder else None

    async def release_lease(self, task_id: str, owner: str) -> None:
        """Best-effort and bounded: it expires by itself, releasing early only speeds up a
        takeover. Any error (an outage, READONLY from a failover) is logged, never raised:
        the task it ends has its outcome recorded already."""
        self._identity.pop(task_id, None)
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await self._redis.eval(_RELEASE_LEASE, 1, self._lease(task_id), owner)
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("lease_release_skipped", error=f"{type(exc).__name__}: {exc}")

    # -- cancels ----------------------------------------------------------------------------

    async def request_cancel(self, task_id: str, reason: str) -> None:
        """Mark the task cancelled and tell every member (the marker outlives the notice)."""
        marker = json.dumps({"reason": reason, "at": time.time()})
        notice = json.dumps({"task_id": task_id, "reason": reason})

        async def call() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._cancel(task_id), marker, ex=self._ttl)
                pipe.publish(self.cancel_channel, notice)
                await pipe.execute()

        await self._waiter.call("cancel", call)

    async def cancel_reasons(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The tasks among `task_ids` whose cancel was requested, with the reason."""
        if not task_ids:
            return {}
        keys = [self._cancel(task_id) for task_id in task_ids]
        markers = await self._waiter.call("cancel_check", lambda: self._redis.mget(keys))
        return {
            task_id: _marker_reason(marker)
            for task_id, marker in zip(task_ids, markers, strict=True)
            if marker is not None
        }

    async def clear_cancel(self, task_id: str) -> None:
        """Forget a cancel (a forced request starts the task again)."""
        await self._waiter.call(
            "cancel_clear", lambda: self._redis.delete(self._cancel(task_id))
        )

    async def listen_for_cancels(self, notice: Callable[[str, str], None]) -> None:
        """Call `notice(task_id, reason)` for every cancel any member requests, until
        cancelled. An outage is waited out (resubscribing); notices published meanwhile are
        lost, which the callers' marker checks make up for."""
        delay = 0.2
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.cancel_channel)
                delay = 0.2
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    parsed = _notice(message)
                    if parsed is not None:
                        notice(*parsed)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("redis_unavailable", operation="cancel_notices", error=str(exc),
                            retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                    await pubsub.aclose()

    async def close(self) -> None:
        await self._redis.aclose()


def _marker_reason(marker: str | bytes) -> str:
    try:
        reason = json.loads(marker).get("reason", "")
    except (ValueError, AttributeError):
        return ""  # written by something else: still a cancel
    return reason if isinstance(reason, str) else ""


def _notice(message: dict[str, object] | None) -> tuple[str, str] | None:
    """(task id, reason) of a notice on the cancel channel; None for anything else."""
    if message is None or message.get("type") != "message":
        return None
    data = message.get("data")
    try:
        notice = json.loads(data) if isinstance(data, str | bytes) else None
    except ValueError:
        return None
    if not isinstance(notice, dict) or not isinstance(notice.get("task_id"), str):
        return None
    reason = notice.get("reason")
    return notice["task_id"], reason if isinstance(reason, str) else ""
