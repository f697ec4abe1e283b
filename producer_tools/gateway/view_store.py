"""The view and the gateway's own records in Redis. A thin adapter: decisions are
view_model's.

Keys (P = OCR_REDIS_KEY_PREFIX + "gw:"), every one expiring after OCR_GATEWAY_VIEW_TTL_S:
  P task:<id>     string  TaskProgress JSON                      written by the view
  P pages:<id>    hash    page -> PageResult JSON                written by the view
  P ranks:<id>    hash    page -> "attempt:offset" of that result written by the view
  P sums:<id>     hash    page -> page summary JSON (status answers) written by the view
  P sub:<id>      hash    blob path, media type, name, dpi, submitted_at of the first
                          submission (API; a re-submission keeps them)
  P owners:<id>   set     key ids that submitted the task (API)
  P open:<key id> zset    task id -> submit time: the key's open tasks (API adds, view
                          removes the task from its owners' sets when it is final)
Channel P events:<id> carries a ping whenever the view changed a task; readers re-read.

The consumer's own task state (P task:<id> without "gw:") is not touched or read: the view
is built from the topics alone, so it works the same for any number of consumers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from pydantic import ValidationError

from consumer.log import get_logger
from producer_tools.gateway.view_model import PageRank, TaskProgress
from schemas.result import PageResult

log = get_logger(__name__)

# Keep the page result if it outranks the one held (see view_model: highest attempt, then
# offset), in one step, so two view members during a rebalance cannot interleave.
_OFFER_PAGE = """
local held = redis.call('hget', KEYS[2], ARGV[1])
if held then
  local a, o = string.match(held, '^(%d+):(%d+)$')
  local na, no = tonumber(ARGV[2]), tonumber(ARGV[3])
  if tonumber(a) > na or (tonumber(a) == na and tonumber(o) >= no) then return 0 end
end
redis.call('hset', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
redis.call('hset', KEYS[1], ARGV[1], ARGV[4])
redis.call('hset', KEYS[3], ARGV[1], ARGV[6])
for i = 1, 3 do redis.call('expire', KEYS[i], ARGV[5]) end
return 1
"""
# Admit a submission under its key's cap, in one step: count, then add.
_ADMIT = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[3])
if redis.call('zscore', KEYS[1], ARGV[1]) then return 1 end
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('zadd', KEYS[1], ARGV[2], ARGV[1])
redis.call('expire', KEYS[1], ARGV[5])
return 1
"""


@dataclass(frozen=True, slots=True)
class PageOffer:
    task_id: str
    page: int
    rank: PageRank
    value: str  # the PageResult JSON as read from the topic
    summary: str  # view_model.page_summary as JSON


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    progress: TaskProgress | None
    submission: dict[str, str]
    summaries: list[dict[str, Any]]  # one per page result held, in page order

    @property
    def pages_stored(self) -> int:
        return len(self.summaries)

    @property
    def known(self) -> bool:
        return self.progress is not None or bool(self.submission)


class ViewStore:
    def __init__(self, client: aioredis.Redis, key_prefix: str, ttl_s: int) -> None:
        self._redis = client
        self._p = f"{key_prefix}gw:"
        self._ttl = ttl_s
        self._offer = client.register_script(_OFFER_PAGE)
        self._admit = client.register_script(_ADMIT)

    # --- key names -------------------------------------------------------------------------

    def _task(self, task_id: str) -> str:
        return f"{self._p}task:{task_id}"

    def _pages(self, task_id: str) -> str:
        return f"{self._p}pages:{task_id}"

    def _ranks(self, task_id: str) -> str:
        return f"{self._p}ranks:{task_id}"

    def _sums(self, task_id: str) -> str:
        return f"{self._p}sums:{task_id}"

    def _sub(self, task_id: str) -> str:
        return f"{self._p}sub:{task_id}"

    def _owners_key(self, task_id: str) -> str:
        return f"{self._p}owners:{task_id}"

    def _open(self, owner: str) -> str:
        return f"{self._p}open:{owner}"

    def channel(self, task_id: str) -> str:
        return f"{self._p}events:{task_id}"

    @property
    def channel_pattern(self) -> str:
        return f"{self._p}events:*"

    def task_of_channel(self, channel: str) -> str:
        return channel[len(self._p) + len("events:"):]

    # --- the view's writes -----------------------------------------------------------------

    async def load_progress(self, task_ids: Sequence[str]) -> dict[str, TaskProgress | None]:
        if not task_ids:
            return {}
        values = await self._redis.mget([self._task(t) for t in task_ids])
        loaded: dict[str, TaskProgress | None] = {}
        for task_id, value in zip(task_ids, values, strict=True):
            loaded[task_id] = _parse_progress(task_id, cast(str | None, value))
        return loaded

    async def apply(
        self,
        progress: Mapping[str, TaskProgress],
        pages: Sequence[PageOffer],
        finals: Iterable[str],
    ) -> None:
        """Write one batch of the view: entries, page offers, open-task releases, pings."""
        changed = set(progress)
        finals = list(finals)
        owners: list[list[str]] = []
        if finals:
            owners = await self._owners(finals)
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id, entry in progress.items():
                pipe.set(self._task(task_id), entry.model_dump_json(), ex=self._ttl)
            for offer in pages:
                await self._offer(
                    keys=[
                        self._pages(offer.task_id), self._ranks(offer.task_id),
                        self._sums(offer.task_id),
                    ],
                    args=[offer.page, offer.rank.attempt, offer.rank.offset, offer.value,
                          self._ttl, offer.summary],
                    client=pipe,
                )
                changed.add(offer.task_id)
            for task_id, task_owners in zip(finals, owners, strict=True):
                for owner in task_owners:
                    pipe.zrem(self._open(owner), task_id)
            for task_id in sorted(changed):
                pipe.publish(self.channel(task_id), "1")
            await pipe.execute()

    async def _owners(self, task_ids: Sequence[str]) -> list[list[str]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.smembers(self._owners_key(task_id))
            return [sorted(members) for members in await pipe.execute()]

    # --- the API's writes ------------------------------------------------------------------

    async def admit(self, owner: str, task_id: str, cap: int) -> bool:
        """Count `task_id` as open for `owner` unless the owner has `cap` open already.

        A task that never ends (its consumer died for good) stops counting after the view's
        TTL, so a lost task cannot hold a key's quota for ever.
        """
        now = time.time()
        admitted = await self._admit(
            keys=[self._open(owner)],
            args=[task_id, now, now - self._ttl, cap, self._ttl],
        )
        return bool(admitted)

    async def release(self, owner: str, task_id: str) -> None:
        await self._redis.zrem(self._open(owner), task_id)

    async def open_count(self, owner: str) -> int:
        await self._redis.zremrangebyscore(self._open(owner), "-inf", time.time() - self._ttl)
        return int(await self._redis.zcard(self._open(owner)))

    async def record_submission(
        self, task_id: str, owner: str, fields: Mapping[str, str]
    ) -> None:
        key, owners = self._sub(task_id), self._owners_key(task_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, value in fields.items():
                pipe.hsetnx(key, name, value)
            pipe.sadd(owners, owner)
            pipe.expire(key, self._ttl)
            pipe.expire(owners, self._ttl)
            await pipe.execute()

    # --- reads -----------------------------------------------------------------------------

    async def snapshot(self, task_id: str) -> TaskSnapshot:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._task(task_id))
            pipe.hgetall(self._sub(task_id))
            pipe.hgetall(self._sums(task_id))
            value, submission, sums = await pipe.execute()
        summaries = sorted(
            (json.loads(text) for text in cast(dict[str, str], sums or {}).values()),
            key=lambda summary: int(summary["page"]),
        )
        return TaskSnapshot(
            progress=_parse_progress(task_id, value),
            submission=cast(dict[str, str], submission or {}),
            summaries=summaries,
        )

    async def pages(self, task_id: str) -> list[PageResult]:
        values = cast(dict[str, str], await self._redis.hgetall(self._pages(task_id)))
        results = [_parse_page(task_id, value) for value in values.values()]
        return sorted((r for r in results if r is not None), key=lambda r: r.page)

    async def page(self, task_id: str, page: int) -> PageResult | None:
        value = cast(str | None, await self._redis.hget(self._pages(task_id), str(page)))
        return None if value is None else _parse_page(task_id, value)

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    def pubsub(self) -> Any:
        return self._redis.pubsub(ignore_subscribe_messages=True)


def _parse_progress(task_id: str, value: str | None) -> TaskProgress | None:
    if value is None:
        return None
    try:
        return TaskProgress.model_validate_json(value)
    except ValidationError as exc:
        # Written by an older gateway: the topics still have it; treat as absent.
        log.warning("view_entry_unreadable", task_id=task_id, error=str(exc).splitlines()[0])
        return None


def _parse_page(task_id: str, value: str) -> PageResult | None:
    try:
        return PageResult.model_validate_json(value)
    except ValidationError as exc:
        log.warning("view_page_unreadable", task_id=task_id, error=str(exc).splitlines()[0])
        return None
