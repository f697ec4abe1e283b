"""The offset tracker never commits past an unfinished request, whatever the order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.offsets import OffsetTracker, PartitionOffsets


def test_commits_contiguous_prefix_only() -> None:
    offsets = PartitionOffsets()
    for offset in (10, 11, 12, 13):
        offsets.received(offset)
    assert offsets.position() == 10
    offsets.done(12)
    offsets.done(13)
    assert offsets.position() == 10
    offsets.done(10)
    assert offsets.position() == 11
    offsets.done(11)
    assert offsets.position() == 14


def test_gaps_in_offsets_are_not_arithmetic() -> None:
    # Compaction and transaction markers leave gaps: offsets are not consecutive.
    offsets = PartitionOffsets()
    for offset in (3, 7, 20):
        offsets.received(offset)
    offsets.done(3)
    assert offsets.position() == 7
    offsets.done(20)
    assert offsets.position() == 7
    offsets.done(7)
    assert offsets.position() == 21


def test_the_read_position_moves_the_commit_past_offsets_with_no_record() -> None:
    # Records 0 and 1 in a transaction, its commit marker at 2: Kafka's own clients commit
    # 3 once both are done, so the group's lag is 0, not 1 for good.
    offsets = PartitionOffsets()
    offsets.received(0)
    offsets.received(1)
    offsets.read_to(3)
    assert offsets.position() == 0
    offsets.done(1)
    assert offsets.position() == 0  # never past an unfinished record
    offsets.done(0)
    assert offsets.position() == 3
    offsets.read_to(2)  # a position read after a rewind may be behind: it never goes back
    assert offsets.position() == 3
    offsets.received(7)  # an aborted transaction at 3-6 was skipped by the reader
    assert offsets.position() == 7


def test_a_partition_with_only_markers_read_commits_the_read_position() -> None:
    offsets = PartitionOffsets()
    assert offsets.position() is None
    offsets.read_to(5)
    assert offsets.position() == 5


def test_redelivered_offsets_are_ignored() -> None:
    offsets = PartitionOffsets()
    assert offsets.received(5)
    assert offsets.received(6)
    offsets.done(5)
    assert not offsets.received(5)
    assert not offsets.received(6)
    assert offsets.position() == 6


def test_to_commit_reports_only_moves() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.received("p0", 0)
    assert tracker.to_commit() == {"p0": 0}
    tracker.committed({"p0": 0})
    assert tracker.to_commit() == {}
    tracker.done("p0", 0)
    assert tracker.to_commit() == {"p0": 1}


def test_revoked_partition_forgets_done() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.received("p0", 0)
    tracker.revoke("p0")
    tracker.done("p0", 0)  # a task finishing after revoke must not recreate the partition
    assert tracker.get("p0") is None


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60),
    data=st.data(),
)
def test_random_completion_never_commits_past_unfinished(
    gaps: list[int], data: st.DataObject
) -> None:
    offsets_seen = []
    offset = data.draw(st.integers(min_value=0, max_value=1000))
    for gap in gaps:
        offsets_seen.append(offset)
        offset += gap
    tracker: OffsetTracker[int] = OffsetTracker()
    for seen in offsets_seen:
        tracker.received(0, seen)
    order = data.draw(st.permutations(offsets_seen))
    finish_count = data.draw(st.integers(min_value=0, max_value=len(order)))
    finished: set[int] = set()
    for done in order[:finish_count]:
        tracker.done(0, done)
        finished.add(done)
        position = tracker.get(0).position()  # type: ignore[union-attr]
        assert position is not None
        unfinished = [o for o in offsets_seen if o not in finished]
        if unfinished:
            # Never past the oldest unfinished offset, and exactly at it (no lag).
            assert position == min(unfinished)
        else:
            assert position == offsets_seen[-1] + 1
        # Everything below the position is finished.
        assert all(o in finished for o in offsets_seen if o < position)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_read_positions_never_commit_past_an_unfinished_record(data: st.DataObject) -> None:
    """Records and markers interleave; the reader reports its position only when every
    record below it was received (the caller's duty), at any moment. The commit position
    never passes an unfinished record, and it reaches the read position once all is done."""
    kinds = data.draw(st.lists(st.sampled_from(["record", "marker"]), min_size=1, max_size=40))
    offsets = PartitionOffsets()
    unfinished: set[int] = set()
    read = 0
    for offset, kind in enumerate(kinds):
        if kind == "record":
            offsets.received(offset)
            unfinished.add(offset)
        read = offset + 1
        if data.draw(st.booleans()):
            offsets.read_to(read)
        for done in data.draw(st.sets(st.sampled_from(sorted(unfinished)))) if unfinished else ():
            offsets.done(done)
            unfinished.discard(done)
        position = offsets.position()
        if unfinished:
            assert position == min(unfinished)
    for done in sorted(unfinished):
        offsets.done(done)
    offsets.read_to(read)
    assert offsets.position() == read
