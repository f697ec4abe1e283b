"""Publishing requests and cancels, as ocr-submit does.

A request is built by ocr-submit's own code (submit_requests.build_submission): an upload is
handed over into OCR_BLOB_ROOT (copied, fsync'd, renamed; its name holds its SHA-256) and
referenced by file:// URI with its SHA-256, and the task id is derived from the content
and options, so the same file with the same options is the same task (the consumer
re-announces a finished one instead of recomputing it). URIs are passed through.

One idempotent producer (acks=all) lives as long as the gateway; a 202 is answered only
after the broker acknowledged the record.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from consumer.settings import HandOver, TopicClient, client_kwargs
from producer_tools.submit_requests import RequestOptions, Submission, build_submission
from schemas.cloudevents import CE_TYPE_CANCEL, CE_TYPE_REQUEST, ce_headers
from schemas.control import CancelRequest, ControlAction
from schemas.request import OcrRequest


class RequestPublisher:
    def __init__(self, settings: TopicClient) -> None:
        self._settings = settings
        self._source = f"ocr-gateway/{socket.gethostname()}"
        self._producer = AIOKafkaProducer(
            **client_kwargs(settings),
            client_id="ocr-gateway",
            acks="all",
            enable_idempotence=settings.kafka_idempotence,
        )
        self.started = False

    async def start(self) -> None:
        await self._producer.start()
        self.started = True

    async def stop(self) -> None:
        if self.started:
            self.started = False
            await self._producer.stop()

    async def publish(self, request: OcrRequest) -> None:
        headers = ce_headers(
            event_id=f"{request.task_id}/{uuid.uuid4().hex}",
            event_type=CE_TYPE_REQUEST,
            source=self._source,
            subject=request.task_id,
            time=request.submitted_at,
        )
        await self._producer.send_and_wait(
            self._settings.topic_requests,
            value=request.model_dump_json(exclude_none=True).encode(),
            key=request.task_id.encode(),
            headers=headers,
        )

    async def cancel(self, task_id: str, reason: str) -> CancelRequest:
        record = CancelRequest(action=ControlAction.CANCEL, task_id=task_id, reason=reason)
        headers = ce_headers(
            event_id=f"{task_id}/cancel/{uuid.uuid4().hex}",
            event_type=CE_TYPE_CANCEL,
            source=self._source,
            subject=task_id,
            time=datetime.now(UTC),
        )
        await self._producer.send_and_wait(
            self._settings.topic_requests,
            value=record.model_dump_json().encode(),
            key=task_id.encode(),
            headers=headers,
        )
        return record


async def prepare(item: str, options: RequestOptions, settings: HandOver) -> Submission:
    """ocr-submit's hand-over and request for one file path or URI (off the event loop:
    it copies and hashes the file)."""
    return await asyncio.to_thread(build_submission, item, options, settings.blob_root)
