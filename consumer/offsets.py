"""Which offsets may be committed: the contiguous finished prefix of each partition.

Tasks finish out of order (a 1-page task overtakes a 300-page one), but Kafka stores one
position per partition. Committing past an unfinished task would lose it on a crash, so a
partition's commit position is the offset of its oldest unfinished record, or, when
everything received is finished, the furthest of one past the newest record and the
consumer's read position.

Invariant: every offset below the commit position is either a finished record or no record
of ours. The read position (`passed`) is what lets the commit move over offsets that hold
no record, as Kafka's own clients commit: a transaction's commit or abort marker, an aborted
transaction's records (read_committed skips them), or offsets removed by compaction.
Without it, a partition whose last batch was transactional would show a lag of 1 for good.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass
class PartitionOffsets:
    """Offsets received on one partition, in order, and which of them are finished."""

    pending: deque[int] = field(default_factory=deque)
    pending_set: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    last_received: int | None = None
    last_committed: int | None = None
    # The consumer's read position, reported only when everything below it was handed to
    # `received` (the caller's duty): offsets under it that were not received hold no record.
    passed: int | None = None

    def received(self, offset: int) -> bool:
        """Track a new offset; False for one already seen (re-delivered after a rebalance)."""
        # Offsets only grow within a partition, so anything at or below the newest seen
        # offset is a re-delivery of a record that is running or finished here.
        if self.last_received is not None and offset <= self.last_received:
            return False
        self.pending.append(offset)
        self.pending_set.add(offset)
        self.last_received = offset
        return True

    def done(self, offset: int) -> None:
        if offset not in self.pending_set:
            return
        self.finished.add(offset)
        while self.pending and self.pending[0] in self.finished:
            head = self.pending.popleft()
            self.finished.discard(head)
            self.pending_set.discard(head)

    def read_to(self, position: int) -> None:
        """The consumer read up to `position`, and every record below it was `received`."""
        if self.passed is None or position > self.passed:
            self.passed = position

    def position(self) -> int | None:
        """The offset to commit (next to read), or None when nothing was received or read."""
        if self.pending:
            return self.pending[0]
        after_received = None if self.last_received is None else self.last_received + 1
        ends = [end for end in (after_received, self.passed) if end is not None]
        return max(ends, default=None)

    def to_commit(self) -> int | None:
        """The position if it moved since the last commit, else None."""
        position = self.position()
        if position is None or position == self.last_committed:
            return None
        return position

    def committed(self, position: int) -> None:
        self.last_committed = position

    @property
    def unfinished(self) -> int:
        return len(self.pending)


class OffsetTracker(Generic[P]):
    """Per-partition finished prefixes, keyed by whatever identifies a partition."""

    def __init__(self) -> None:
        self._partitions: dict[P, PartitionOffsets] = {}

    def assign(self, partition: P) -> None:
        self._partitions.setdefault(partition, PartitionOffsets())

    def revoke(self, partition: P) -> PartitionOffsets | None:
        return self._partitions.pop(partition, None)

    def received(self, partition: P, offset: int) -> bool:
        return self._partitions.setdefault(partition, PartitionOffsets()).received(offset)

    def read_to(self, partition: P, position: int) -> None:
        self._partitions.setdefault(partition, PartitionOffsets()).read_to(position)

    def done(self, partition: P, offset: int) -> None:
        offsets = self._partitions.get(partition)
        if offsets is not None:
            offsets.done(offset)

    def to_commit(self) -> dict[P, int]:
        commits = {}
        for partition, offsets in self._partitions.items():
            position = offsets.to_commit()
            if position is not None:
                commits[partition] = position
        return commits

    def committed(self, commits: dict[P, int]) -> None:
        for partition, position in commits.items():
            offsets = self._partitions.get(partition)
            if offsets is not None:
                offsets.committed(position)

    def get(self, partition: P) -> PartitionOffsets | None:
        return self._partitions.get(partition)

    def partitions(self) -> list[P]:
        return list(self._partitions)
