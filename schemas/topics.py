"""The five topics of the v1 contract: their names (with an optional prefix) and how each is
configured (cleanup policy, retention, record sizes).

Pure data: `producer_tools/topic_admin.py` creates and checks topics from these specs, the
consumer and the tools read and write the names, and a deployment that manages topics its
own way (Terraform, Strimzi) can read the same figures here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

from schemas.request import MAX_REQUEST_RECORD_BYTES

DAY_MS = 24 * 3600 * 1000
# Kafka's own rule for topic names (kafka.common.internals.Topic): at most 249 of these.
MAX_TOPIC_NAME = 249
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")

# Records bigger than the broker default (1 MB) that the contract allows: a page result may
# carry up to 512 KiB of Markdown plus the same of text, and a DLQ envelope holds the refused
# request base64-encoded. 5 MiB stays above the publisher's 4 MiB max_request_size, so
# the producer, not the broker, is the limit that fires first.
LARGE_RECORD_BYTES = 5 * 1024 * 1024
# Requests may exceed the consumer's 1 MiB OCR_MAX_REQUEST_BYTES so that an oversized one
# reaches the consumer and ends on the DLQ with REQUEST_TOO_LARGE, instead of being refused
# by the broker where the producer alone would see the error. The DLQ envelope's bounds
# come from the same figure.
REQUEST_RECORD_BYTES = MAX_REQUEST_RECORD_BYTES


def check_topic_prefix(prefix: str) -> str:
    """`prefix` when it can start topic names (a Kafka topic-name fragment); ValueError
    saying why not otherwise."""
    if not _TOPIC_CHARS.fullmatch(prefix) or prefix.startswith("."):
        raise ValueError(
            f"topic prefix {prefix!r} must be letters, digits, '.', '_' or '-', not starting "
            "with '.', e.g. 'cmp-gundam'"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The names of the five topics. `TopicNames()` is the defaults; `with_prefix("x")`
    names the same topics as `x.<name>` (a side-by-side pipeline, a test's namespace)."""

    requests: str = "ocr.requests"
    results: str = "ocr.results"
    progress: str = "ocr.progress"
    timing: str = "ocr.timing"
    dlq: str = "ocr.requests.dlq"

    def __iter__(self) -> Iterator[str]:
        return (getattr(self, f.name) for f in fields(self))

    def with_prefix(self, prefix: str) -> TopicNames:
        check_topic_prefix(prefix)
        named = {f.name: f"{prefix}.{getattr(self, f.name)}" for f in fields(self)}
        too_long = [name for name in named.values() if len(name) > MAX_TOPIC_NAME]
        if too_long:
            raise ValueError(f"topic names longer than {MAX_TOPIC_NAME} characters: {too_long}")
        return TopicNames(**named)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(names: TopicNames, partitions: int, replication: int) -> list[TopicSpec]:
    """The five topics as `ocr-topics create` makes them."""

    def spec(name: str, configs: dict[str, str]) -> TopicSpec:
        return TopicSpec(name, partitions, replication, dict(configs))

    week = {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}
    return [
        spec(names.requests, {**week, "max.message.bytes": str(REQUEST_RECORD_BYTES)}),
        # Keyed task_id/page: compaction keeps each page's latest result forever, so a
        # replay overwrites instead of piling up. Segments roll daily because the active
        # segment is never compacted; the lag gives slow readers a minute to see every
        # version before older ones may go.
        spec(
            names.results,
            {
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": "60000",
                "segment.ms": str(DAY_MS),
                "retention.ms": "-1",
                "max.message.bytes": str(LARGE_RECORD_BYTES),
            },
        ),
        # Progress is a stream of transitions that watchers follow live; old ones have no
        # value once a task is final, so plain time retention.
        spec(names.progress, week),
        spec(names.timing, week),
        # Dead letters wait for an operator to look at them, which can take a while.
        spec(
            names.dlq,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(30 * DAY_MS),
                "max.message.bytes": str(LARGE_RECORD_BYTES),
            },
        ),
    ]
