"""Clients no one here wrote, on the real broker: Java kafka-clients and librdkafka.

Producers publish requests as a Java or C service would (plain JSON, key = task id, each of
the five codecs, with and without headers; Java's default partitioner, and librdkafka's,
which hashes keys with CRC32 instead of murmur2), and the consumer under test must complete
every one and keep running. Then a Java consumer reads the output topics following only the
README's "Reading results" recipe, through the CloudEvents Java SDK's Kafka binding, and
must hold every page exactly as `ocr-collect` writes it, see one `ce_source` for the
deployment, the consumer as the `ocrconsumer` extension, and each request's traceparent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from consumer.config import Settings
from schemas.common import ErrorCode
from schemas.headers import DLQ_ERROR_CODE
from schemas.keys import task_partition
from tests.support import java as java_support
from tests.support.apps import running_app
from tests.support.documents import make_png
from tests.support.engines import ScriptedEngine
from tests.support.kafka import TopicReader

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
REPO = Path(__file__).resolve().parents[2]
# What each client sends on its requests with headers (InteropProducer.java has Java's).
JAVA_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
LIBRDKAFKA_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def request_json(task_id: str, client: str, codec: str, png_base64: str) -> str:
    return json.dumps({
        "schema_version": 1,
        "task_id": task_id,
        "source": {"inline_base64": png_base64, "media_type": "image/png"},
        "metadata": {"client": client, "codec": codec},
    })


def produce_with_librdkafka(
    settings: Settings, requests: list[tuple[str, bool, str, str]], extra: list[bytes],
) -> dict[str, int]:
    """confluent-kafka as its users write it: no partitioner setting (consistent_random)."""
    partitions: dict[str, int] = {}

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        if message.key() is not None:
            partitions[message.key().decode()] = message.partition()

    for codec in CODECS:
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap,
                             "compression.codec": codec, "acks": "all",
                             "client.id": f"interop-librdkafka-{codec}"})
        for request_codec, with_headers, task_id, value in requests:
            if request_codec != codec:
                continue
            headers = ([("traceparent", LIBRDKAFKA_TRACEPARENT.encode()),
                        ("x-origin", b"librdkafka"), ("x-empty", b"")] if with_headers else None)
            producer.produce(settings.topic_requests, key=task_id.encode(), value=value.encode(),
                             headers=headers, on_delivery=delivered)
        if codec == "zstd":
            for value in extra:
                producer.produce(settings.topic_requests, key=b"framed", value=value,
                                 on_delivery=delivered)
        assert producer.flush(30) == 0
    return partitions


async def test_foreign_producers_every_codec_and_a_java_reader(
    stack_settings: Settings, java_classpath: str, tmp_path: Path, run_id: str,
) -> None:
    settings = stack_settings.model_copy(update={"metrics_port": 0, "commit_interval_s": 0.2})
    png = base64.b64encode(make_png(tmp_path / "page.png").read_bytes()).decode()
    requests = {
        client: [
            (codec, with_headers, f"{client}-{codec}-{'h' if with_headers else 'n'}-{run_id}",
             "")
            for codec in CODECS for with_headers in (False, True)
        ]
        for client in ("java", "librdkafka")
    }
    for client, entries in requests.items():
        requests[client] = [(c, h, t, request_json(t, client, c, png)) for c, h, t, _ in entries]
    task_ids = [t for entries in requests.values() for _, _, t, _ in entries]
    framed = b"\x00\x00\x00\x00\x2a" + request_json(f"framed-{run_id}", "x", "zstd", png).encode()

    engine = ScriptedEngine()
    async with running_app(settings, engine) as app:
        tsv = "".join(f"{c}\t{int(h)}\t{t}\t{v}\n" for c, h, t, v in requests["java"])
        produced = await asyncio.to_thread(
            java_support.java, java_classpath, "InteropProducer",
            settings.kafka_bootstrap, settings.topic_requests, stdin=tsv,
        )
        java_partitions = {
            line.split("\t")[0]: int(line.split("\t")[1])
            for line in produced.stdout.splitlines() if line.strip()
        }
        rdkafka_partitions = await asyncio.to_thread(
            produce_with_librdkafka, settings, requests["librdkafka"], [framed]
        )

        async with TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader:
            await reader.wait_for(
                lambda r: all(r.final(settings, t) for t in task_ids)
                and len(r.on(settings.topic_dlq)) >= 1,
                timeout=120,
            )
            await asyncio.sleep(1.0)  # anything else that was coming (a second dead letter)
            await reader.poll()
            finals = {t: reader.final(settings, t) for t in task_ids}
            dead = reader.on(settings.topic_dlq)
        assert app.ready, "the consumer stopped serving"
        assert not app.exit_code

    assert {t: [(e.status.value, e.pages_total) for e in events] for t, events in finals.items()} \
        == {t: [("completed", 1)] for t in task_ids}
    # The one dead letter is the registry-framed value, with its own code.
    assert [(r.key, r.headers[DLQ_ERROR_CODE].decode()) for r in dead] == [
        ("framed", ErrorCode.REQUEST_SCHEMA_REGISTRY_FRAMED.value)
    ]
    # Java's default partitioner is the contract's murmur2; librdkafka's default is not, and
    # the consumer coped with requests on other partitions than their outputs.
    assert java_partitions == {t: task_partition(t.encode(), 6) for _, _, t, _ in requests["java"]}
    moved = [t for t, p in rdkafka_partitions.items()
             if t != "framed" and p != task_partition(t.encode(), 6)]
    assert moved, "every librdkafka key happened to land where murmur2 puts it"
    # Every codec really reached the broker, from both clients (plus our own DLQ record).
    stored = java_support.batch_codecs(java_classpath, settings.topic_requests)
    # (librdkafka may put its two records of a codec in one batch; Java sends one at a time.)
    assert all(stored[codec] >= 3 for codec in CODECS), stored

    # A Java reader following the README's recipe, through the CloudEvents SDK.
    report_file = tmp_path / "java-reader.json"
    await asyncio.to_thread(
        java_support.java, java_classpath, "ResultsReader", settings.kafka_bootstrap,
        settings.topic_progress, settings.topic_results, f"{settings.group_id}-java-reader",
        "120", str(report_file), *task_ids,
    )
    report = json.loads(report_file.read_text())
    assert report["cloudevent_errors"] == []
    assert {t: v["done"] for t, v in report["tasks"].items()} == dict.fromkeys(task_ids, True)
    # What a tracing estate sees through the SDK: one source for the deployment, the
    # consumer as the `ocrconsumer` extension, and the request's W3C traceparent on every
    # record of a task sent with one (each client sends its own), none on the others.
    parents = {"java": JAVA_TRACEPARENT, "librdkafka": LIBRDKAFKA_TRACEPARENT}
    for task_id, seen in report["tasks"].items():
        assert seen["sources"] == [settings.ce_source], task_id
        assert seen["consumers"] == [app.consumer_id], task_id
        assert "ocrconsumer" in seen["extensions"], task_id
        traced = "-h-" in task_id
        assert seen["traceparents"] == [parents[task_id.split("-")[0]] if traced else ""], task_id

    # ocr-collect, the reader we wrote, must hold exactly the same pages.
    out = tmp_path / "collected"
    collect = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "producer_tools.collect", "--out", str(out), "--once",
         "--group", f"{settings.group_id}-collect",
         "--kafka-bootstrap", settings.kafka_bootstrap,
         "--topic-results", settings.topic_results, "--topic-progress", settings.topic_progress,
         "--task", *task_ids],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )
    assert collect.returncode == 0, collect.stderr[-3000:]
    for task_id in task_ids:
        collected = json.loads((out / task_id / "pages.json").read_text())
        assert report["tasks"][task_id]["pages"] == collected, task_id
        assert [p["metadata"]["client"] for p in collected] == [task_id.split("-")[0]]
