"""The loop's bookkeeping (consumer/workbook.py), event by event, without asyncio or Kafka.

Partitions are plain ints and a work's job is a label: the book never looks inside either.
The adapter that carries the decisions out is tested in tests/unit/test_loop_work.py.
"""

from __future__ import annotations

from consumer.workbook import (
    Decision,
    Reason,
    Request,
    Start,
    WorkBook,
    WorkKind,
)

Book = WorkBook[int, str]


def _book(*partitions: int) -> Book:
    book: Book = WorkBook()
    book.assigned(partitions or (0, 1))
    return book


def _started(decision: Decision[int, str]) -> Start[int, str]:
    assert decision.start is not None, decision
    return decision.start


def _task(book: Book, partition: int, offset: int, task_id: str = "t", *,
          content: str = "a", force: bool = False) -> Decision[int, str]:
    return book.receive(
        partition, offset, Request(task_id, content, force), f"{task_id}@{partition}.{offset}"
    )


def test_a_new_request_starts_and_its_offset_commits_when_it_finishes() -> None:
    book = _book()
    start = _started(_task(book, 0, 0))
    assert (start.work.kind, start.work.task_id, start.delay_s, start.after) == (
        WorkKind.TASK, "t", 0.0, (),
    )
    assert book.to_commit(force=False) == {0: 0} and book.run_ids == (start.run,)
    assert book.finished(start.run).reason is Reason.FINISHED
    assert book.to_commit(force=False) == {0: 1} and book.runs == 0
    assert book.running("t") is None


def test_read_positions_move_commits_of_assigned_partitions_only() -> None:
    book = _book(0, 1)
    run = _started(_task(book, 0, 4)).run
    book.read_to({0: 6, 1: 3, 2: 9}, epoch=book.epoch)  # 5 is a marker; 2 is not ours
    assert book.to_commit(force=False) == {0: 4, 1: 3}
    book.finished(run)
    assert book.to_commit(force=False) == {0: 6, 1: 3}
    assert book.resume_offset(0) == 6 and book.resume_offset(2) is None
    book.revoked([1])
    book.read_to({1: 8}, epoch=book.epoch)  # its next owner's now
    assert book.to_commit(force=True) == {0: 6, 1: 3}


def test_read_positions_asked_across_a_rebalance_are_dropped() -> None:
    book = _book(0)
    asked = book.epoch
    book.revoked([0])
    book.assigned([0])  # lost and back meanwhile? Either way the position is stale
    book.read_to({0: 9}, epoch=asked)
    assert book.to_commit(force=False) == {}
    book.read_to({0: 9}, epoch=book.epoch)
    assert book.to_commit(force=False) == {0: 9}


def test_a_copy_follows_and_finishes_with_the_run_on_its_own_partition() -> None:
    book = _book()
    run = _started(_task(book, 0, 0)).run
    assert _task(book, 1, 0).reason is Reason.FOLLOWS
    assert book.runs == 1 and book.pending(1) == [0]
    book.finished(run)
    assert book.to_commit(force=False) == {0: 1, 1: 1}


def test_other_content_under_a_running_task_id_is_a_conflict_report() -> None:
    book = _book()
    _task(book, 0, 0)
    decision = _task(book, 0, 1, content="b")
    assert decision.reason is Reason.CONFLICT
    report = _started(decision)
    assert report.work.kind is WorkKind.CONFLICT and report.work.task_id is None
    book.finished(report.run)
    assert book.pending(0) == [0], "the running task's offset is still open"


def test_an_unreadable_record_starts_its_dead_letter() -> None:
    book = _book()
    dead = _started(book.receive(0, 0, None, "junk"))
    assert dead.work.kind is WorkKind.DEAD_LETTER and dead.work.job == "junk"
    book.finished(dead.run)
    assert book.to_commit(force=False) == {0: 1}


def test_a_cancel_runs_beside_the_run_of_its_task_and_finishes_on_its_own() -> None:
    book = _book()
    task = _started(_task(book, 0, 0))
    decision = book.receive_control(0, 1, "cancel t")
    assert decision.reason is Reason.CONTROL and decision.cancel == ()
    cancel = _started(decision)
    assert (cancel.work.kind, cancel.work.task_id, cancel.after) == (WorkKind.CANCEL, None, ())
    assert book.running("t") == task.run, "the task-id index still names the task's run"
    book.finished(cancel.run)
    assert book.pending(0) == [0], "the cancel's offset waits for the task's before it"
    book.finished(task.run)
    assert book.to_commit(force=False) == {0: 2}
    assert book.receive_control(0, 1, "again").reason is Reason.REDELIVERED
    assert book.receive_control(5, 0, "elsewhere").reason is Reason.NOT_ASSIGNED


def test_records_not_ours_or_seen_before_are_ignored() -> None:
    book = _book(0)
    assert _task(book, 5, 0).reason is Reason.NOT_ASSIGNED
    assert not book.wants(5, 0)
    _task(book, 0, 3)
    assert not book.wants(0, 3) and not book.wants(0, 2) and book.wants(0, 4)
    assert _task(book, 0, 3, "other").reason is Reason.REDELIVERED
    assert book.runs == 1


def test_a_forced_copy_cancels_the_run_and_starts_once_it_stopped() -> None:
    book = _book()
    first = _started(_task(book, 0, 0)).run
    _task(book, 1, 0)  # a copy following the first run
    decision = _task(book, 0, 1, force=True)
    assert decision.reason is Reason.REPLACES and decision.cancel == (first,)
    forced = _started(decision)
    assert forced.after == (first,) and book.running("t") == forced.run
    # The replaced run stops: it hands nothing over (its copies follow the forced run) and
    # does not take the task id from the forced run.
    assert book.interrupted(first).reason is Reason.LEFT_PENDING
    assert book.running("t") == forced.run
    book.finished(forced.run)
    assert book.to_commit(force=False) == {0: 2, 1: 1}


def test_an_interrupted_run_hands_over_to_its_first_copy_still_ours() -> None:
    book = _book(0, 1, 2)
    run = _started(_task(book, 0, 0)).run
    _task(book, 1, 0)
    _task(book, 2, 0)
    decision = book.interrupted(run)
    assert decision.reason is Reason.HANDED_OVER
    heir = _started(decision)
    assert (heir.work.partition, heir.work.offset) == (1, 0)
    assert [(w.partition, w.offset) for w in heir.work.followers] == [(2, 0)]
    book.finished(heir.run)
    # Partition 0's offset stays for its next reader: interrupted work is unfinished.
    assert book.to_commit(force=False) == {0: 0, 1: 1, 2: 1}


def test_work_that_raises_runs_again_with_growing_delays() -> None:
    book: Book = WorkBook(retry_first_s=1.0, retry_max_s=5.0)
    book.assigned([0])
    run = _started(_task(book, 0, 0)).run
    _started(_task(book, 0, 1, "u"))
    delays = []
    for _ in range(5):
        retry = _started(book.raised(run))
        delays.append(retry.delay_s)
        run = retry.run
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert book.running("t") == run and book.pending(0) == [0, 1]
    book.finished(run)
    assert book.pending(0) == [1]


def test_a_run_that_raises_on_a_revoked_partition_hands_its_copy_over() -> None:
    book = _book()
    run = _started(_task(book, 0, 0)).run
    _task(book, 1, 0)
    book.revoked([0])
    heir = _started(book.raised(run))
    assert (heir.work.partition, heir.work.offset, heir.delay_s) == (1, 0, 0.0)


def test_nothing_starts_once_stopping() -> None:
    book = _book()
    first = _started(_task(book, 0, 0)).run
    _task(book, 1, 0)
    second = _started(_task(book, 0, 1, "u")).run
    book.stop()
    assert book.raised(second).reason is Reason.LEFT_PENDING
    assert book.interrupted(first).reason is Reason.LEFT_PENDING
    assert book.runs == 0 and book.pending(0) == [0, 1] and book.pending(1) == [0]


def test_an_assignment_cancels_the_runs_of_partitions_that_moved_away() -> None:
    book = _book(0, 1, 2)
    lost = _started(_task(book, 0, 0, "a")).run
    kept = _started(_task(book, 1, 0, "b")).run
    book.finished(_started(_task(book, 2, 0, "c")).run)
    book.revoked([0, 1, 2])
    assert book.owned == frozenset()
    change = book.assigned([1, 2, 3])
    assert change.cancel == (lost,) and change.lost == (0,)
    assert book.resume_offset(0) is None, "the lost partition's offsets are forgotten"
    # Kept partitions keep their offsets: the redelivery from the committed position is
    # recognised, and the kept run still finishes its offset.
    assert _task(book, 1, 0, "b").reason is Reason.REDELIVERED
    book.interrupted(lost)
    book.finished(kept)
    assert book.to_commit(force=False) == {1: 1, 2: 1}


def test_commits_wait_for_the_oldest_unfinished_offset() -> None:
    book = _book(0)
    slow = _started(_task(book, 0, 0, "slow")).run
    fast = _started(_task(book, 0, 1, "fast")).run
    book.finished(fast)
    assert book.to_commit(force=False) == {0: 0}
    book.committed({0: 0})
    assert book.to_commit(force=False) == {}
    book.finished(slow)
    assert book.to_commit(force=False) == {0: 2}


def test_a_forced_commit_includes_partitions_being_revoked() -> None:
    book = _book(0, 1)
    book.finished(_started(_task(book, 0, 0)).run)
    book.revoked([0])
    assert book.to_commit(force=False) == {}
    assert book.to_commit(force=True) == {0: 1}


# Counterexamples the state machine (test_workbook_machine.py) found in the book before
# these fixes, pinned as plain tests.


def test_work_raising_between_revoke_and_assign_runs_again_if_the_partition_stays() -> None:
    """Issue 16, defect 4: it was neither run again nor forgotten, its redelivery was taken
    for a duplicate, and the partition committed nothing more until a restart."""
    book = _book(0)
    run = _started(_task(book, 0, 0)).run
    book.revoked([0])
    assert book.raised(run).reason is Reason.PARKED
    change = book.assigned([0])  # the partition came back
    [retry] = change.start
    assert (retry.work.partition, retry.work.offset, retry.delay_s) == (0, 0, 1.0)
    assert _task(book, 0, 0).reason is Reason.REDELIVERED  # read again: already running
    book.finished(retry.run)
    assert book.to_commit(force=False) == {0: 1}


def test_parked_work_is_forgotten_with_a_partition_that_moved_away() -> None:
    book = _book(0, 1)
    run = _started(_task(book, 0, 0)).run
    _task(book, 1, 0)  # a copy on partition 1
    book.revoked([0, 1])
    book.raised(run)
    [heir] = book.assigned([1]).start  # 0 moved away: its copy on 1 runs in its place
    assert (heir.work.partition, heir.work.offset, heir.delay_s) == (1, 0, 0.0)
    assert book.resume_offset(0) is None


def test_copies_handed_over_between_revoke_and_assign_wait_for_the_assignment() -> None:
    book = _book(0, 1)
    run = _started(_task(book, 0, 0)).run
    _task(book, 1, 0)
    book.revoked([0, 1])
    assert book.interrupted(run).reason is Reason.PARKED
    [heir] = book.assigned([0, 1]).start
    assert (heir.work.partition, heir.work.offset) == (1, 0)
    book.finished(heir.run)
    assert book.pending(1) == [] and book.pending(0) == [0]


def test_a_replaced_run_that_raises_is_not_retried() -> None:
    """Before: retried, it worked the task a second time beside the forced run and took the
    task-id index from it."""
    book = _book()
    first = _started(_task(book, 0, 0)).run
    forced = _started(_task(book, 0, 1, force=True))
    decision = book.raised(first)  # cancelled, it raised on its way out
    assert decision.start is None and book.running("t") == forced.run
    book.finished(forced.run)
    assert book.to_commit(force=False) == {0: 2}


def test_nothing_starts_once_drained_whoever_drains() -> None:
    """Before: when run() left through an exception the loop cancelled every run without
    stopping the book, and a cancelled run handed its copy over to a new run."""
    book = _book()
    run = _started(_task(book, 0, 0)).run
    _task(book, 1, 0)
    assert book.drain() == (run,)
    assert book.interrupted(run).start is None and book.runs == 0


def test_a_run_waits_for_every_run_of_its_task_still_winding_down() -> None:
    book = _book()
    first = _started(_task(book, 0, 0)).run
    second = _started(_task(book, 0, 1, force=True)).run  # waits for first
    third = _started(_task(book, 0, 2, force=True))  # replaces second, which waits
    assert third.after == (first, second)
    assert book.interrupted(second).start is None
    assert book.running("t") == third.run


def test_a_dead_letter_that_keeps_failing_is_given_up_and_committed() -> None:
    book: Book = WorkBook(give_up_attempts=3)
    book.assigned([0])
    run = _started(book.receive(0, 0, None, "junk")).run
    run = _started(book.raised(run)).run
    run = _started(book.raised(run)).run
    assert book.raised(run).reason is Reason.GAVE_UP
    assert book.to_commit(force=False) == {0: 1}


def test_a_cancel_that_keeps_failing_is_given_up_and_a_task_never_is() -> None:
    """A cancel that raised 3 times (a bug) no longer holds its partition's commits for
    ever; a task that raises stays pending (dropping it would lose the request)."""
    book: Book = WorkBook(give_up_attempts=3)
    book.assigned([0])
    cancel = _started(book.receive_control(0, 0, "cancel t")).run
    cancel = _started(book.raised(cancel)).run
    cancel = _started(book.raised(cancel)).run
    assert book.raised(cancel).reason is Reason.GAVE_UP
    assert book.to_commit(force=False) == {0: 1}
    book.committed({0: 1})
    task = _started(_task(book, 0, 1)).run
    for _ in range(5):
        decision = book.raised(task)
        assert decision.reason is Reason.RETRY
        task = _started(decision).run
    assert book.to_commit(force=False) == {}
