"""Reading and writing the real topics from tests."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from consumer.config import Settings
from consumer.settings.kafka import client_kwargs
from schemas.progress import ProgressEvent
from schemas.request import OcrRequest
from schemas.result import PageResult


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    headers: dict[str, bytes]


async def produce_requests(settings: Settings, requests: list[OcrRequest]) -> None:
    producer = AIOKafkaProducer(
        **client_kwargs(settings), acks="all", enable_idempotence=settings.kafka_idempotence
    )
    await producer.start()
    try:
        for request in requests:
            await producer.send_and_wait(
                settings.topic_requests,
                value=request.model_dump_json().encode(),
                key=request.task_id.encode(),
            )
    finally:
        await producer.stop()


async def produce_raw(settings: Settings, value: bytes | None, key: bytes | None = None) -> None:
    producer = AIOKafkaProducer(**client_kwargs(settings), max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_requests, value=value, key=key)
    finally:
        await producer.stop()


class TopicReader:
    """Reads topics from the beginning, accumulating every record seen so far."""

    def __init__(self, settings: Settings, *topics: str) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics,
            **client_kwargs(settings),
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            client_id=f"test-reader-{uuid.uuid4().hex[:6]}",
        )
        self.records: list[Record] = []

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        batch = await self._consumer.getmany(timeout_ms=200)
        for records in batch.values():
            for r in records:
                self.records.append(
                    Record(
                        r.topic, r.partition, r.offset,
                        r.key.decode() if r.key is not None else None, r.value,
                        {k: v for k, v in r.headers},
                    )
                )

    async def wait_for(
        self, condition: Callable[[TopicReader], bool], timeout: float = 60.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"condition not met in {timeout}s; saw {len(self.records)} records"
                )
            await self.poll()

    def on(self, topic: str) -> list[Record]:
        return [r for r in self.records if r.topic == topic]

    def results(self, settings: Settings) -> list[PageResult]:
        return [
            PageResult.model_validate_json(r.value)
            for r in self.on(settings.topic_results) if r.value is not None
        ]

    def progress(self, settings: Settings) -> list[ProgressEvent]:
        return [
            ProgressEvent.model_validate_json(r.value)
            for r in self.on(settings.topic_progress) if r.value is not None
        ]

    def final(self, settings: Settings, task_id: str) -> list[ProgressEvent]:
        return [
            e for e in self.progress(settings) if e.task_id == task_id and e.status.is_final
        ]

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.on(topic) if r.value is not None]


async def committed_offsets(settings: Settings) -> dict[int, int]:
    """The group's committed position per partition of the requests topic."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.group_id)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset for tp, meta in committed.items()
        if tp.topic == settings.topic_requests
    }


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)
