"""Go clients no one here wrote, on the real broker: franz-go, segmentio/kafka-go, IBM/sarama.

Each client publishes requests as the README's partitioner table tells a Go developer to,
with its own default partitioner and with the Java-compatible setting the table gives, with
its default codec and with zstd; the consumer under test must complete every one. Where the
records landed checks the table itself: the Java-compatible settings put every task where
`schemas.keys.task_partition` (murmur2) does, and each default behaves as the table says.
Then each client reads `ocr.progress` (zstd, our default output codec) from the beginning
in a consumer group and must see every task's final event.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import defaultdict
from pathlib import Path

import pytest

from consumer.config import Settings
from schemas.keys import murmur2, task_partition
from tests.support import go as go_support
from tests.support import java as java_support
from tests.support.apps import running_app
from tests.support.documents import make_png
from tests.support.engines import ScriptedEngine
from tests.support.kafka import TopicReader

PARTITIONS = 6
# (client, partitioner mode, codec, task numbers). Modes: `default` sets no partitioner;
# `java` is the README's Java-compatible setting (franz-go: StickyKeyPartitioner(nil);
# kafka-go: Murmur2Balancer{}; sarama: NewCustomPartitioner(WithAbsFirst(),
# WithCustomHashFunction(our murmur2))); `murmur2` is sarama's own NewMurmur2Partitioner.
# Six requests in one default-mode batch cover every partition once under round robin.
# sarama's default also gets tasks 41 and 46, whose FNV-1a has the top bit set (the first
# 41 numbers have none), so that its sign handling is checked too.
SARAMA_NEGATIVE = (41, 46)
PLAN: list[tuple[str, str, str, tuple[int, ...]]] = [
    ("franz-go", "default", "default", tuple(range(6))),
    ("franz-go", "java", "default", (0, 1, 2)),
    ("franz-go", "java", "zstd", (0, 1, 2)),
    ("kafka-go", "default", "default", tuple(range(6))),
    ("kafka-go", "java", "default", (0, 1, 2)),
    ("kafka-go", "java", "zstd", (0, 1, 2)),
    ("sarama", "default", "default", (*range(6), *SARAMA_NEGATIVE)),
    ("sarama", "java", "default", (0, 1, 2)),
    ("sarama", "java", "zstd", (0, 1, 2)),
    ("sarama", "murmur2", "default", (0, 1, 2)),
]
# Fixed task ids: each test has its own topics and Redis prefix, and fixed keys keep the
# partition assertions below the same on every run.
REQUESTS = [
    (client, mode, codec, f"go-{client}-{mode}-{codec}-{i}")
    for client, mode, codec, numbers in PLAN for i in numbers
]
TASK_IDS = [task_id for *_, task_id in REQUESTS]


def fnv1a_32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def signed_32(h: int) -> int:
    return h - (1 << 32) if h & 0x80000000 else h


def sarama_hash_partition(key: bytes, partitions: int) -> int:
    """sarama's NewHashPartitioner: int32(fnv1a(key)) % n in Go (the remainder takes the
    sign of the hash), then negated when negative, i.e. |int32 hash| % n."""
    return abs(signed_32(fnv1a_32(key))) % partitions


def test_sarama_keys_tell_the_sign_rules_apart() -> None:
    """The keys of SARAMA_NEGATIVE tell |h| % n from Java's (h & 0x7fffffff) % n and
    from the unsigned h % n, so the sarama assertion below checks the sign handling."""
    for i in SARAMA_NEGATIVE:
        h = fnv1a_32(f"go-sarama-default-default-{i}".encode())
        rules = {abs(signed_32(h)) % PARTITIONS, (h & 0x7FFFFFFF) % PARTITIONS, h % PARTITIONS}
        assert h & 0x80000000 and len(rules) == 3, i


@pytest.fixture(scope="session")
def go_interop() -> Path:
    """The Go interop program (tests/support/go), built once and cached."""
    try:
        return go_support.binary()
    except go_support.GoUnavailable as exc:
        pytest.fail(f"the Go interop clients could not be built: {exc}")


def test_go_murmur2_is_the_contracts(go_interop: Path) -> None:
    """The murmur2 we hand sarama agrees with schemas.keys for every length class."""
    keys = [f"task-{i}-{'x' * (i % 7)}" for i in range(300)] + ["", "a", "ab", "abc", "é✓"]
    done = go_support.run(go_interop, "murmur2", stdin="".join(f"{k}\n" for k in keys if k))
    got = [int(line) for line in done.stdout.split()]
    assert got == [murmur2(k.encode()) for k in keys if k]


async def test_go_clients_publish_requests_and_read_progress(
    stack_settings: Settings, go_interop: Path, java_classpath: str, tmp_path: Path,
) -> None:
    settings = stack_settings.model_copy(update={"metrics_port": 0, "commit_interval_s": 0.2})
    assert settings.topic_specs()[0].partitions == PARTITIONS
    png = base64.b64encode(make_png(tmp_path / "page.png").read_bytes()).decode()
    tsv = "".join(
        f"{client}\t{mode}\t{codec}\t{task_id}\t" + json.dumps({
            "schema_version": 1, "task_id": task_id,
            "source": {"inline_base64": png, "media_type": "image/png"},
            "metadata": {"client": client, "partitioner": mode, "codec": codec},
        }) + "\n"
        for client, mode, codec, task_id in REQUESTS
    )

    async with running_app(settings, ScriptedEngine()) as app:
        produced = await asyncio.to_thread(
            go_support.run, go_interop, "produce", settings.kafka_bootstrap,
            settings.topic_requests, stdin=tsv,
        )
        async with TopicReader(settings, settings.topic_progress) as reader:
            await reader.wait_for(
                lambda r: all(r.final(settings, t) for t in TASK_IDS), timeout=120
            )
            finals = {t: reader.final(settings, t) for t in TASK_IDS}
        assert app.ready, "the consumer stopped serving"
        assert not app.exit_code

    assert {t: [(e.status.value, e.pages_total) for e in events] for t, events in finals.items()} \
        == {t: [("completed", 1)] for t in TASK_IDS}

    # Where each record landed, per (client, mode, codec), in the order it was sent.
    placed: dict[tuple[str, str, str], list[tuple[str, int]]] = defaultdict(list)
    for line in produced.stdout.splitlines():
        task_id, client, mode, codec, partition, _offset = line.split("\t")
        placed[client, mode, codec].append((task_id, int(partition)))
    assert sorted(t for group in placed.values() for t, _ in group) == sorted(TASK_IDS)
    murmur = {t: task_partition(t.encode(), PARTITIONS) for t in TASK_IDS}
    # The README's Java-compatible settings (and sarama's built-in one) put every task
    # where the contract's murmur2 does.
    for (client, mode, codec), records in placed.items():
        if mode in ("java", "murmur2"):
            assert records == [(t, murmur[t]) for t, _ in records], (client, mode, codec)
    # franz-go's default hashes keys with murmur2 as Java does.
    franz = placed["franz-go", "default", "default"]
    assert franz == [(t, murmur[t]) for t, _ in franz]
    # kafka-go's Writer ignores keys by default: its six records of one batch went round
    # robin, each partition once and in turn (keys hashed would do so once in 6**5 sets).
    kafka_go = [p for _, p in placed["kafka-go", "default", "default"]]
    assert kafka_go == [(kafka_go[0] + i) % PARTITIONS for i in range(PARTITIONS)], kafka_go
    # sarama's default is FNV-1a with its own sign handling, not murmur2.
    sarama = placed["sarama", "default", "default"]
    assert sarama == [(t, sarama_hash_partition(t.encode(), PARTITIONS)) for t, _ in sarama]
    assert any(p != murmur[t] for t, p in sarama), "FNV-1a agreed with murmur2 on every key"

    # Each Go reader, in its own group from the beginning, saw every task's final event.
    read = await asyncio.to_thread(
        go_support.run, go_interop, "read", settings.kafka_bootstrap, settings.topic_progress,
        f"{settings.group_id}-go", "90", stdin="".join(f"{t}\n" for t in TASK_IDS),
    )
    seen: dict[str, dict[str, list[tuple[str, str, str]]]] = defaultdict(lambda: defaultdict(list))
    for line in read.stdout.splitlines():
        client, task_id, status, pages_total, replayed = line.split("\t")
        seen[client][task_id].append((status, pages_total, replayed))
    expected = {t: [("completed", "1", "false")] for t in TASK_IDS}
    for client in ("franz-go", "kafka-go", "sarama"):
        assert seen[client] == expected, (client, read.stderr[-2000:])

    # The codecs the broker stored: the Go producers' defaults (franz-go snappy, kafka-go
    # and sarama none) and zstd; our outputs, which every Go reader decompressed, all zstd.
    requests_codecs = java_support.batch_codecs(java_classpath, settings.topic_requests)
    assert requests_codecs["snappy"] >= 1 and requests_codecs["none"] >= 2, requests_codecs
    assert requests_codecs["zstd"] >= 3, requests_codecs
    progress_codecs = java_support.batch_codecs(java_classpath, settings.topic_progress)
    assert set(progress_codecs) == {"zstd"}, progress_codecs
