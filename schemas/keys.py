"""Record keys and the partition they land on.

Every record about a task is keyed by its task id, except page results, keyed
`task_id/page` so that a compacted results topic keeps the latest result of each page. The
partition is Kafka's default for keys (murmur2, as the Java client computes it) of the part
before the first '/', so a task's results sit beside its progress and timing records and
stay in order with them. A task id never contains '/' (schemas.common.TASK_ID_PATTERN).

Pure Python and dependency-free, so that a producer (or a tool on a host without a Kafka
client) computes the same partitions as the consumer; tests check the hash against
aiokafka's and against values from the Java client.
"""

from __future__ import annotations

from collections.abc import Sequence

KEY_SEPARATOR = "/"
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2): a signed 32-bit int."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & _MASK32
    for i in range(0, length - length % 4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & _MASK32
        k ^= k >> 24
        k = (k * m) & _MASK32
        h = ((h * m) & _MASK32) ^ k
    tail = length & ~3
    extra = length % 4
    # Java's switch falls through: 3 takes the third byte, then the second, then the first.
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & _MASK32
    h ^= h >> 13
    h = (h * m) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def result_key(task_id: str, page: int) -> str:
    """The key of a page result."""
    return f"{task_id}{KEY_SEPARATOR}{page}"


def parse_key(key: str | bytes) -> tuple[str, int | None]:
    """(task id, page) of a record key; page is None for a task key. ValueError when the
    part after '/' is not a page number."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    task_id, separator, page = text.partition(KEY_SEPARATOR)
    if not separator:
        return task_id, None
    if not page.isdigit() or not page.isascii():
        raise ValueError(f"key {text!r}: {page!r} after {KEY_SEPARATOR!r} is not a page number")
    return task_id, int(page)


def key_task_id(key: bytes) -> bytes:
    """The task-id part of a key, as bytes: what the partition is computed from."""
    return key.split(KEY_SEPARATOR.encode(), 1)[0]


def task_partition(key: str | bytes, partition_count: int) -> int:
    """The partition (0-based) of a task's records among `partition_count`.

    Java's default partitioner for a keyed record: toPositive(murmur2(key)) % count,
    applied to the task-id part of the key.
    """
    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(key_task_id(raw)) & 0x7FFFFFFF) % partition_count


class TaskPartitioner:
    """aiokafka's partitioner hook: the same partition for `task` and `task/page` keys."""

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return (available or all_partitions)[0]
        ordered = sorted(all_partitions)
        return ordered[task_partition(key, len(ordered))]
