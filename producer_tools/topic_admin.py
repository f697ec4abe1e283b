"""Topic admin: the topics of schemas/topics.py created and checked through the Kafka admin
API, for `ocr-topics` (and `deploy/local/stack.sh up`, the test fixtures, the benchmarks).

Creating is idempotent; an existing topic is never altered, only reported by `check`,
because repartitioning or flipping a cleanup policy on a live topic is an operator's
decision, not a side effect of starting the stack.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, for_code

from consumer.settings.kafka import KafkaConnection, client_kwargs
from schemas.topics import TopicSpec

TOPIC_ALREADY_EXISTS = 36
UNKNOWN_TOPIC_OR_PARTITION = 3


class MismatchKind(StrEnum):
    MISSING = "missing"
    PARTITIONS = "partitions"
    REPLICATION = "replication"
    CONFIG = "config"


@dataclass(frozen=True, slots=True)
class TopicMismatch:
    topic: str
    kind: MismatchKind
    expected: str
    actual: str
    config: str | None = None

    def __str__(self) -> str:
        if self.kind is MismatchKind.MISSING:
            return f"topic {self.topic!r} is missing (expected {self.expected})"
        what = f"config {self.config}" if self.config else self.kind.value
        return f"topic {self.topic!r}: {what} is {self.actual}, expected {self.expected}"


async def _started_admin(settings: KafkaConnection) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="ocr-topics")
    await admin.start()
    return admin


def _raise_for(code: int, message: str | None, context: str) -> NoReturn:
    error = for_code(code)
    raise error(f"{context}: {message or error.__name__}")


async def ensure_topics(settings: KafkaConnection, specs: Sequence[TopicSpec]) -> list[str]:
    """Create the topics of `specs` that do not exist; returns the names created."""
    admin = await _started_admin(settings)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.configs))
                for s in missing
            ]
        )
        created = set()
        for topic, code, *rest in response.topic_errors:
            # Another `ensure` racing us (two test sessions, two consumers) is not an error.
            if code == TOPIC_ALREADY_EXISTS:
                continue
            if code != 0:
                _raise_for(code, rest[0] if rest else None, f"creating topic {topic!r}")
            created.add(topic)
        await _wait_until_served(admin, {s.name for s in missing})
        return [s.name for s in missing if s.name in created]
    finally:
        await admin.close()


async def _wait_until_served(
    admin: AIOKafkaAdminClient, names: set[str], timeout_s: float = 30.0
) -> None:
    """Block until every partition of `names` has a leader in the broker's metadata.

    CreateTopics returns once the controller has committed the topic; the broker learns
    of it a moment later. Without this wait a producer, a `check` or a consumer started
    right after `ensure` sees the topic as missing.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        topics = {t["topic"]: t for t in await admin.describe_topics()}
        pending = sorted(
            name
            for name in names
            if name not in topics
            or topics[name]["error_code"] != 0
            or any(p["leader"] < 0 for p in topics[name]["partitions"])
        )
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not served {timeout_s:.0f}s after creation: {pending}")
        await asyncio.sleep(0.1)


async def delete_topics(settings: KafkaConnection, names: Sequence[str]) -> None:
    """Delete topics; ones already gone are fine (tests clean up after themselves)."""
    if not names:
        return
    admin = await _started_admin(settings)
    try:
        response = await admin.delete_topics(list(names))
        for topic, code, *_ in response.topic_error_codes:
            if code not in (0, UNKNOWN_TOPIC_OR_PARTITION):
                _raise_for(code, None, f"deleting topic {topic!r}")
    finally:
        await admin.close()


def _config_entries(responses: list[Any]) -> dict[str, dict[str, str | None]]:
    """Topic name -> config name -> value from DescribeConfigs responses (any version)."""
    found: dict[str, dict[str, str | None]] = {}
    for response in responses:
        for resource in response.resources:
            error_code, error_message, _type, name, entries = resource[:5]
            if error_code:
                _raise_for(error_code, error_message, f"describing configs of {name!r}")
            found[name] = {entry[0]: entry[1] for entry in entries}
    return found


async def check_topics(
    settings: KafkaConnection, specs: Sequence[TopicSpec]
) -> list[TopicMismatch]:
    """Every way the cluster differs from `specs`; empty when it matches."""
    admin = await _started_admin(settings)
    try:
        # Metadata for all topics, not for the named ones: a named request may auto-create
        # a missing topic (with broker defaults) on clusters that allow it, and `check`
        # must not change what it inspects.
        wanted = {s.name for s in specs}
        described = {
            t["topic"]: t
            for t in await admin.describe_topics()
            if t["topic"] in wanted and t["error_code"] == 0
        }
        present = [s for s in specs if s.name in described]
        configs = (
            _config_entries(
                await admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in present]
                )
            )
            if present
            else {}
        )
    finally:
        await admin.close()

    mismatches: list[TopicMismatch] = []
    for spec in specs:
        topic = described.get(spec.name)
        if topic is None:
            mismatches.append(
                TopicMismatch(
                    spec.name, MismatchKind.MISSING,
                    f"{spec.partitions} partitions, replication {spec.replication}", "absent",
                )
            )
            continue
        partitions = topic["partitions"]
        if len(partitions) != spec.partitions:
            mismatches.append(
                TopicMismatch(
                    spec.name, MismatchKind.PARTITIONS, str(spec.partitions), str(len(partitions))
                )
            )
        replication = min((len(p["replicas"]) for p in partitions), default=0)
        if replication != spec.replication:
            mismatches.append(
                TopicMismatch(
                    spec.name, MismatchKind.REPLICATION, str(spec.replication), str(replication)
                )
            )
        actual = configs.get(spec.name, {})
        for key, expected in spec.configs.items():
            value = actual.get(key)
            if value != expected:
                mismatches.append(
                    TopicMismatch(
                        spec.name, MismatchKind.CONFIG, expected,
                        "unset" if value is None else value, config=key,
                    )
                )
    return mismatches


async def wait_for_broker(settings: KafkaConnection, timeout_s: float) -> None:
    """Return once the broker answers a metadata request; raise TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = await _started_admin(settings)
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.5)
            continue
        try:
            await admin.list_topics()
            return
        except (KafkaError, OSError) as exc:
            last = exc
        finally:
            await admin.close()
        await asyncio.sleep(0.5)
    raise TimeoutError(
        f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout_s:.0f}s: {last}"
    )
