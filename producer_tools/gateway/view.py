"""The materialised view: the gateway's own consumer of ocr.progress and ocr.results.

One consumer group (OCR_GATEWAY_VIEW_GROUP) over every partition of both topics; with
several gateway replicas the group splits the partitions between them, and all write the
one view in Redis, so any replica answers for any task. Each batch is written to Redis
(view_store) before its offsets are committed: after a crash or restart the view re-reads
from the last commit, and applying a record twice changes nothing (view_model's
invariants). If Redis lost the view, reset the group to the beginning
(`ocr-replay reset --group ocr-gateway-view ...`) and the view rebuilds from the topics.

Caught up: when partitions are first assigned, their end offsets are noted; the view is
caught up once it has read to them on every assigned partition. /readyz says so, and
Kubernetes sends traffic only to caught-up replicas. A member left with no partitions (more
replicas than partitions) is caught up as soon as it has joined. Once caught up, a replica
stays ready through later rebalances (every replica serves the one shared view, so taking
one out of service would not make anything fresher); it is unready again only while its
consumer is down (Kafka or Redis errors) until it has caught up anew.

Why not read the topics per request as ocr-collect's one-shot reader does: the results
topic cannot be looked up by key, so finding one task's pages means reading its partition
from the beginning, a cost that grows with history (docs/gateway.md has the numbers). The
view pays each record once, when it arrives, and answers from Redis in O(pages of the task).

This module never reads the requests topic: the gateway is a producer there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from pydantic import ValidationError
from redis.exceptions import RedisError

from consumer.log import get_logger
from consumer.settings import client_kwargs
from producer_tools.gateway.metrics import GatewayMetrics
from producer_tools.gateway.settings import ViewSettings
from producer_tools.gateway.view_model import (
    PageRank,
    TaskProgress,
    apply_progress,
    page_summary,
)
from producer_tools.gateway.view_store import PageOffer, ViewStore
from schemas.progress import ProgressEvent
from schemas.result import PageResult

log = get_logger(__name__)

POLL_MS = 500
MAX_RECORDS = 1000
RETRY_MAX_S = 10.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, view: View) -> None:
        self._view = view

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        # Nothing to drop: the view lives in Redis, and the next owner of a revoked
        # partition re-reads from its last commit.
        return None

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        await self._view.note_assignment(assigned)


class View:
    def __init__(
        self, settings: ViewSettings, store: ViewStore, group: str, metrics: GatewayMetrics
    ) -> None:
        self._settings = settings
        self._store = store
        self._group = group
        self._metrics = metrics
        self._consumer: Any = None
        self._stopping = asyncio.Event()
        # End offsets to reach before the view counts as caught up; None: not assigned yet.
        self.targets: dict[Any, int] | None = None
        self.caught_up = False
        self.error: str | None = "starting"

    # --- readiness ---------------------------------------------------------------------------

    async def note_assignment(self, assigned: set[Any]) -> None:
        ends = await self._consumer.end_offsets(sorted(assigned)) if assigned else {}
        self.targets = dict(ends)
        log.info("view_assigned", partitions=len(assigned), group=self._group)

    async def _check_caught_up(self) -> None:
        if self.caught_up or self.targets is None:
            return
        for tp, end in self.targets.items():
            if await self._consumer.position(tp) < end:
                return
        self.caught_up = True
        self._metrics.view_caught_up.set(1)
        log.info("view_caught_up", partitions=len(self.targets))

    async def _report_lag(self) -> None:
        # highwater() is what the last fetch reported and position() is local once known:
        # no round trip to the broker.
        lag = 0
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - await self._consumer.position(tp))
        self._metrics.view_lag.set(lag)

    # --- running -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Follow the topics until stopped; Kafka and Redis outages are waited out."""
        delay = 0.5
        while not self._stopping.is_set():
            try:
                await self._follow()
            except (KafkaError, RedisError, OSError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                self.caught_up = False
                self._metrics.view_caught_up.set(0)
                log.warning("view_retrying", error=self.error, retry_in=delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                delay = 0.5

    async def _follow(self) -> None:
        settings = self._settings
        topics = [settings.topic_progress, settings.topic_results]
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings),
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            client_id=f"ocr-gateway-view-{uuid.uuid4().hex[:8]}",
        )
        self._consumer = consumer
        consumer.subscribe(topics, listener=_Listener(self))
        await consumer.start()
        self.error = None
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
                records = [record for part in batch.values() for record in part]
                if records:
                    await self._apply(records)
                    try:
                        await consumer.commit()
                    except (CommitFailedError, IllegalStateError) as exc:
                        # A rebalance: the next owner re-reads from the last commit (no loss).
                        log.warning("view_commit_skipped", error=repr(exc))
                await self._check_caught_up()
                await self._report_lag()
        finally:
            self.targets = None
            self.caught_up = False
            await consumer.stop()

    async def _apply(self, records: Sequence[Any]) -> None:
        settings = self._settings
        events: list[tuple[ProgressEvent, int]] = []
        offers: list[PageOffer] = []
        for record in records:
            if record.value is None:
                continue
            try:
                if record.topic == settings.topic_results:
                    result = PageResult.model_validate_json(record.value)
                    offers.append(
                        PageOffer(
                            task_id=result.task_id, page=result.page,
                            rank=PageRank(result.attempt, record.offset),
                            value=record.value.decode("utf-8"),
                            summary=json.dumps(page_summary(result)),
                        )
                    )
                else:
                    events.append((ProgressEvent.model_validate_json(record.value), record.offset))
            except (ValidationError, UnicodeDecodeError) as exc:
                # Never crash-loop on a record: skip it, counted and logged.
                self._metrics.view_skipped.inc()
                log.warning(
                    "view_record_unreadable", topic=record.topic, partition=record.partition,
                    offset=record.offset, error=str(exc).splitlines()[0],
                )
        held = await self._store.load_progress(sorted({e.task_id for e, _ in events}))
        updates: dict[str, TaskProgress] = {}
        finals: set[str] = set()
        for event, offset in events:
            entry = apply_progress(held.get(event.task_id), event, offset)
            if entry is None:
                continue
            held[event.task_id] = entry
            updates[event.task_id] = entry
            if event.status.is_final:
                finals.add(event.task_id)
        await self._store.apply(updates, offers, sorted(finals))
        self._metrics.view_records.inc(len(records))
