"""Requests published in Kafka transactions, by a client no one here wrote (Java
kafka-clients with a transactional.id, as an exactly-once Java service or a Kafka Streams
app writes), on the real broker.

- With the default `OCR_ISOLATION_LEVEL=read_committed`, the requests of an aborted
  transaction are never run: no event, no dead letter, no GPU time.
- The group's committed offsets reach the log end, past the commit markers, as Kafka's own
  clients commit, so the lag that librdkafka (a third client) and our own gauge report
  is 0, not 1 for good on each partition whose last batch was transactional.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

from confluent_kafka import Consumer as RdKafkaConsumer
from confluent_kafka import Producer
from confluent_kafka import TopicPartition as RdPartition

from consumer.config import Settings
from consumer.settings.service import IsolationLevel
from schemas.keys import task_partition
from tests.integration.test_interop import request_json
from tests.support import java as java_support
from tests.support.apps import running_app
from tests.support.documents import make_png
from tests.support.engines import ScriptedEngine
from tests.support.kafka import TopicReader, wait_until

PARTITIONS = 6


def committed_and_ends(settings: Settings) -> dict[int, tuple[int, int]]:
    """(committed offset, log end offset) per partition, as librdkafka reads them."""
    reader = RdKafkaConsumer({"bootstrap.servers": settings.kafka_bootstrap,
                              "group.id": settings.group_id, "enable.auto.commit": False})
    try:
        partitions = [RdPartition(settings.topic_requests, p) for p in range(PARTITIONS)]
        committed = reader.committed(partitions, timeout=10)
        return {
            tp.partition: (tp.offset, reader.get_watermark_offsets(tp, timeout=10)[1])
            for tp in committed
        }
    finally:
        reader.close()


async def test_aborted_requests_are_not_run_and_commits_pass_the_markers(
    stack_settings: Settings, java_classpath: str, tmp_path: Path, run_id: str,
) -> None:
    settings = stack_settings.model_copy(update={"metrics_port": 0, "commit_interval_s": 0.2})
    assert settings.isolation_level is IsolationLevel.READ_COMMITTED  # the default
    png = base64.b64encode(make_png(tmp_path / "page.png").read_bytes()).decode()
    plan = [("1", "commit", f"c{i}-{run_id}") for i in range(4)]
    plan += [("2", "abort", f"a{i}-{run_id}") for i in range(4)]
    plan += [("3", "commit", f"c{i}-{run_id}") for i in range(4, 8)]
    committed_ids = [task for _, verb, task in plan if verb == "commit"]
    aborted_ids = [task for _, verb, task in plan if verb == "abort"]
    tsv = "".join(f"{n}\t{verb}\t{task}\t{request_json(task, 'java-txn', 'none', png)}\n"
                  for n, verb, task in plan)

    async with running_app(settings, ScriptedEngine()) as app:
        produced = await asyncio.to_thread(
            java_support.java, java_classpath, "TransactionalProducer",
            settings.kafka_bootstrap, settings.topic_requests, f"txn-{run_id}", stdin=tsv,
        )
        partitions_used = {int(line.split("\t")[1]) for line in produced.stdout.splitlines()}
        async with TopicReader(settings, settings.topic_progress, settings.topic_dlq) as reader:
            await reader.wait_for(
                lambda r: all(r.final(settings, t) for t in committed_ids), timeout=120
            )
            # The commits catch up with the log ends, markers included.
            deadline = time.monotonic() + 30
            while True:
                offsets = await asyncio.to_thread(committed_and_ends, settings)
                behind = {p: o for p, o in offsets.items() if p in partitions_used
                          and o[0] != o[1]}
                if not behind or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            await reader.poll()
            aborted_seen = [r for r in reader.records
                            if r.key in aborted_ids or (r.value and any(
                                a.encode() in r.value for a in aborted_ids))]
            finals = {t: [e.status.value for e in reader.final(settings, t)]
                      for t in committed_ids}
        # Our own gauge (asked every 5 s) says the same.
        sample = app.metrics.registry.get_sample_value
        deadline = time.monotonic() + 15
        while True:
            lag = {p: sample("ocr_consumer_lag", {"topic": settings.topic_requests,
                                                  "partition": str(p)})
                   for p in partitions_used}
            if all(v == 0 for v in lag.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert app.ready and not app.exit_code

    assert finals == {t: ["completed"] for t in committed_ids}
    assert aborted_seen == [], "a request of an aborted transaction was run or dead-lettered"
    assert behind == {}, f"(committed, end) per partition behind the log end: {behind}"
    assert lag == dict.fromkeys(partitions_used, 0.0)


async def test_an_open_transaction_holds_its_partition_and_says_so(
    stack_settings: Settings, java_classpath: str, tmp_path: Path, run_id: str,
) -> None:
    """read_committed's price: a transaction left open holds back every later record of its
    partition, non-transactional ones too, while the lag (measured to the last stable
    offset) says 0. `ocr_consumer_unstable_records` shows it; the commit releases both.
    (How long it held, `ocr_consumer_unstable_seconds`, is unit-tested in test_lag.py.)"""
    settings = stack_settings.model_copy(update={"metrics_port": 0, "commit_interval_s": 0.2})
    png = base64.b64encode(make_png(tmp_path / "page.png").read_bytes()).decode()
    held, plain = f"held-{run_id}", f"plain-{run_id}"
    partition = task_partition(held.encode(), PARTITIONS)
    tsv = f"1\tcommit\t{held}\t{request_json(held, 'java-txn', 'none', png)}\n"

    async with running_app(settings, ScriptedEngine()) as app:
        sample = app.metrics.registry.get_sample_value
        labels = {"topic": settings.topic_requests, "partition": str(partition)}
        producing = asyncio.create_task(asyncio.to_thread(
            java_support.java, java_classpath, "TransactionalProducer",
            settings.kafka_bootstrap, settings.topic_requests, f"txn-{run_id}", "30",
            stdin=tsv,
        ))
        # JVM start, the transaction coordinator and one 5 s lag report: well inside the
        # 30 s the transaction stays open, with room for what follows.
        await wait_until(lambda: (sample("ocr_consumer_unstable_records", labels) or 0) > 0,
                         timeout=20)
        # A plain request behind it, on the same partition.
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        producer.produce(settings.topic_requests, key=plain.encode(), partition=partition,
                         value=request_json(plain, "librdkafka", "none", png).encode())
        assert producer.flush(10) == 0
        async with TopicReader(settings, settings.topic_progress) as reader:
            await asyncio.sleep(3.0)
            await reader.poll()
            assert reader.final(settings, plain) == [] and reader.final(settings, held) == []
            lag = sample("ocr_consumer_lag", labels)
            produced = await producing  # the transaction commits after its 30 s
            assert held in produced.stdout
            await reader.wait_for(
                lambda r: bool(r.final(settings, plain)) and bool(r.final(settings, held)),
                timeout=60,
            )
        await wait_until(lambda: sample("ocr_consumer_unstable_records", labels) == 0,
                         timeout=15)
        assert app.ready and not app.exit_code

    assert lag == 0, "the lag counts up to the last stable offset only"
