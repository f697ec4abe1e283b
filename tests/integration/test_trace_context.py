"""Events a tracing estate can follow, on the real broker (issue 15, item 6).

A request's W3C `traceparent`/`tracestate` reach every output record of its task (results,
progress, timing) and its dead letter; every record names the deployment in `ce_source`,
the same whichever consumer sent it, and the consumer in the `ce_ocrconsumer` extension.
The Java CloudEvents SDK's view of the same headers is in test_interop.py.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from consumer.config import Settings
from consumer.settings.kafka import client_kwargs
from schemas.headers import CE_SOURCE, CE_SUBJECT, DLQ_ERROR_CODE, TRACEPARENT, TRACESTATE
from schemas.request import OcrRequest, Source
from tests.support.apps import running_app
from tests.support.documents import make_pdf
from tests.support.engines import ScriptedEngine
from tests.support.kafka import Record, TopicReader

pytestmark = pytest.mark.integration

PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
DEAD_PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CONSUMER = "ce_ocrconsumer"


@pytest.fixture
def settings(stack_settings: Settings) -> Settings:
    return stack_settings.model_copy(update={"metrics_port": 0, "commit_interval_s": 0.2})


def inline_request(task_id: str, document: bytes) -> bytes:
    return OcrRequest(
        task_id=task_id,
        source=Source(inline_base64=base64.b64encode(document).decode(),
                      media_type="application/pdf"),
    ).model_dump_json().encode()


async def send(
    settings: Settings, records: list[tuple[str, bytes, list[tuple[str, bytes]]]]
) -> None:
    """(key, value, headers) to the requests topic, as a traced upstream service sends them."""
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(settings.topic_requests, key=key.encode(), value=value,
                                         headers=headers or None)
    finally:
        await producer.stop()


def about(reader: TopicReader, settings: Settings, task_id: str) -> dict[str, list[Record]]:
    """Every output record of the task, by topic (the subject is the task id)."""
    topics = (settings.topic_results, settings.topic_progress, settings.topic_timing)
    return {
        topic: [r for r in reader.on(topic) if r.headers.get(CE_SUBJECT) == task_id.encode()]
        for topic in topics
    }


async def test_trace_context_follows_every_output_and_the_dead_letter(
    settings: Settings, tmp_path: Path
) -> None:
    pdf = make_pdf(tmp_path / "two.pdf", pages=2).read_bytes()
    first = settings.model_copy(update={"consumer_id": "first-7"})
    traced = [(TRACEPARENT, PARENT), (TRACESTATE, STATE), ("x-tenant", b"acme")]
    async with running_app(first, ScriptedEngine()):
        await send(settings, [
            ("traced", inline_request("traced", pdf), traced),
            ("untraced", inline_request("untraced", pdf), []),
            # An invalid traceparent is not passed on (W3C: restart the trace), nor its state.
            ("bad-parent", inline_request("bad-parent", pdf),
             [(TRACEPARENT, PARENT.upper()), (TRACESTATE, STATE)]),
            ("junk", b"{not json", [(TRACEPARENT, DEAD_PARENT)]),
        ])
        async with TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader:
            await reader.wait_for(
                lambda r: all(r.final(settings, t) for t in ("traced", "untraced", "bad-parent"))
                and len(r.on(settings.topic_dlq)) == 1,
                timeout=90,
            )
    # A second consumer of the same group (another process, after a restart) answers a task.
    second = settings.model_copy(update={"consumer_id": "second-8"})
    async with running_app(second, ScriptedEngine()):
        await send(settings, [("later", inline_request("later", pdf), traced)])
        async with TopicReader(settings, settings.topic_progress) as reader:
            await reader.wait_for(lambda r: bool(r.final(settings, "later")), timeout=90)

    async with TopicReader(settings, settings.topic_results, settings.topic_progress,
                           settings.topic_timing, settings.topic_dlq) as everything:
        await everything.wait_for(
            lambda r: sum(len(v) for v in about(r, settings, "later").values()) >= 2 + 5 + 3
            and len(r.on(settings.topic_timing)) >= 4 * 3,
            timeout=30,
        )
    records = everything.records

    # Every output of the traced tasks carries the request's trace, and nothing else of its
    # headers: 2 results, queued/started/2 page_done/completed, 2 page timings and the task's.
    for task_id in ("traced", "later"):
        outputs = about(everything, settings, task_id)
        assert [len(outputs[t]) for t in outputs] == [2, 5, 3], task_id
        for record in (r for rs in outputs.values() for r in rs):
            assert (record.headers.get(TRACEPARENT), record.headers.get(TRACESTATE)) == (
                PARENT, STATE), (task_id, record.topic, record.offset)
            assert "x-tenant" not in record.headers
    for task_id in ("untraced", "bad-parent"):
        outputs = about(everything, settings, task_id)
        assert [len(outputs[t]) for t in outputs] == [2, 5, 3], task_id
        assert not [r for rs in outputs.values() for r in rs
                    if TRACEPARENT in r.headers or TRACESTATE in r.headers], task_id
    [dead] = everything.on(settings.topic_dlq)
    assert dead.headers[DLQ_ERROR_CODE] == b"REQUEST_NOT_JSON"
    assert dead.headers[TRACEPARENT] == DEAD_PARENT and TRACESTATE not in dead.headers

    # One source for the deployment, whichever consumer sent; the consumer as an extension.
    assert {r.headers[CE_SOURCE] for r in records} == {
        f"ocr-stream/{settings.group_id}".encode()}
    assert {r.headers[CONSUMER] for r in records if r.headers[CE_SUBJECT] != b"later"} == {
        b"first-7"}
    assert {r.headers[CONSUMER] for rs in about(everything, settings, "later").values()
            for r in rs} == {b"second-8"}
