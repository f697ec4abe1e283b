"""The consumer loop's bookkeeping of received work: pure, without Kafka, asyncio or a clock.

The loop (consumer/loop.py) polls, runs work and commits; this book decides. Each method is
an event the loop saw (a record received, a run ended one of three ways, partitions revoked
or assigned, a commit wanted or done) and returns what the loop must do about it: a
`Decision` (cancel these runs, then start this one, after a delay or once another run has
stopped) or a `Reassignment`. The loop carries decisions out and decides nothing itself.

Words:
- work: what one received record asks for (its task, a dead letter, a conflict report, a
  cancel);
- run: one attempt at a work, an asyncio task in the loop, named by an int the book hands
  out. A work that raised runs again under a new run id;
- copy (follower): a request for a task id that is running here, with the same content. It
  starts nothing: its offset is finished when the run it follows finishes.

Invariants (model-checked by tests/unit/test_workbook_machine.py, a hypothesis state machine
that plays the loop and the group around the book):
- A committed position never passes an unfinished offset: positions come from the
  OffsetTracker, and an offset is marked finished only when its own run, or the run it
  follows, finished (or its dead letter was given up, below).
- While a partition is ours, every offset the book holds pending has a run that will finish
  it: its own, or the run it follows as a copy. Work that raised runs again with backoff; a
  run that was cancelled or interrupted hands its copies on partitions still ours to the
  first of them. Work that raised, or copies handed over, between a revoke and the
  assignment that follows are parked until that assignment: they run again if their
  partition stayed ours and are forgotten with it if it moved away. The one exception is a
  run interrupted without being cancelled (the engine died): its offset stays pending, and
  the process exits to be read again (consumer/app.py).
- One task id has at most one run working on it, except while a forced run waits for the
  run it replaces; the task-id index then names the forced run. A cancelled run never runs
  again, however it ends: a replaced run that raises instead of stopping is not retried.
- A run ends exactly once: `finished`, `raised` or `interrupted` forgets it.
- Once `drain` was called, nothing starts.

Bounds: a task that raises is tried again after 1, 2, 4 ... seconds, at most a minute apart,
for as long as its partition is ours (a Redis or broker outage ends, and both are waited
out below this layer, so a task that still raises meets a bug or a refusal a person must
fix: dropping it would lose the request, so it stays pending, logged and counted each
time). A dead letter, conflict report or cancel that raised `GIVE_UP_ATTEMPTS` times is
given up: its offset is finished without it, and the loop logs and counts that.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from consumer.offsets import OffsetTracker

P = TypeVar("P", bound=Hashable)  # a partition, as the loop names it
J = TypeVar("J")  # the loop's own payload for a work; the book never looks inside

# Work that raised is tried again after 1, 2, 4 ... seconds, at most a minute apart.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
# Publishing a dead letter that failed this many times (after the producer's own retries)
# will not succeed: the DLQ refuses it. A cancel that raised so often meets a bug. Retrying
# either for ever would stall the partition; a task is never given up (see above).
GIVE_UP_ATTEMPTS = 5


class WorkKind(StrEnum):
    TASK = "task"  # run the request's task
    DEAD_LETTER = "dead_letter"  # the record cannot be read: publish it to the DLQ
    CONFLICT = "conflict"  # its task id runs here for other content: dead-letter it
    CANCEL = "cancel"  # a cancel record: mark the task cancelled (its run stops itself)


_GIVEN_UP = frozenset({WorkKind.DEAD_LETTER, WorkKind.CONFLICT, WorkKind.CANCEL})


@dataclass(frozen=True, slots=True)
class Request:
    """What the book needs to know of a decoded request."""

    task_id: str
    fingerprint: str  # the request's content, to tell copies from conflicts
    force: bool = False


@dataclass(eq=False, slots=True)
class Work(Generic[P, J]):
    """One received record's work. Compared by identity: two records are two works."""

    partition: P
    offset: int
    kind: WorkKind
    job: J
    task_id: str | None = None  # set for TASK only: the task-id index's key
    fingerprint: str = ""
    # Copies of the request received while this runs, finished when it finishes.
    followers: list[Work[P, J]] = field(default_factory=list)
    failures: int = 0  # times it raised; the retry delay grows with it


class Reason(StrEnum):
    """Why a decision is what it is (for logs and tests; the loop acts on its fields)."""

    NOT_ASSIGNED = "not_assigned"  # fetched just before a revoke: the new owner reads it
    REDELIVERED = "redelivered"  # at or below the newest offset seen: running or finished
    ADMITTED = "admitted"  # a new task starts
    DEAD_LETTER = "dead_letter"  # an unreadable record starts its dead letter
    CONTROL = "control"  # a control record (cancel) starts its work, beside any run
    CONFLICT = "conflict"  # the task id runs here for other content: report it
    FOLLOWS = "follows"  # a copy of a running task waits for it
    REPLACES = "replaces"  # a forced copy cancels the run and starts once it stopped
    FINISHED = "finished"  # the run's offset and its copies' are finished
    RETRY = "retry"  # the run raised: the same work runs again after a delay
    HANDED_OVER = "handed_over"  # the first copy still ours runs in the ended run's place
    PARKED = "parked"  # revoked: runs again if the next assignment keeps its partition
    GAVE_UP = "gave_up"  # a dead letter that kept failing: its offset finishes without it
    LEFT_PENDING = "left_pending"  # offsets stay pending for the partition's next reader


@dataclass(frozen=True, slots=True)
class Start(Generic[P, J]):
    """Start run `run` of `work`: after `delay_s`, and once the runs `after` ended (runs of
    the same task, cancelled and winding down: two runs never work one task at once)."""

    run: int
    work: Work[P, J]
    delay_s: float = 0.0
    after: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision(Generic[P, J]):
    """What the loop does after an event: cancel `cancel` (without waiting), then `start`."""

    reason: Reason
    start: Start[P, J] | None = None
    cancel: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Reassignment(Generic[P, J]):
    """After an assignment: cancel these runs (their partitions moved away) and wait for
    them; `lost` are the partitions that moved away; `start` the work parked since the
    revoke whose partitions stayed ours."""

    cancel: tuple[int, ...]
    lost: tuple[P, ...]
    start: tuple[Start[P, J], ...] = ()


class WorkBook(Generic[P, J]):
    """Admitted work, its copies, retries, the task-id index and offsets per partition."""

    def __init__(
        self, *, retry_first_s: float = RETRY_FIRST_S, retry_max_s: float = RETRY_MAX_S,
        give_up_attempts: int = GIVE_UP_ATTEMPTS,
    ) -> None:
        self._retry_first_s = retry_first_s
        self._retry_max_s = retry_max_s
        self._give_up_attempts = give_up_attempts
        self._offsets: OffsetTracker[P] = OffsetTracker()
        self._runs: dict[int, Work[P, J]] = {}
        self._cancelled: set[int] = set()  # runs the book asked the loop to cancel
        self._by_task_id: dict[str, int] = {}
        self._assigned: set[P] = set()
        self._orphans: set[P] = set()  # revoked, not yet known whether they come back
        # Work that ended between a revoke and the next assignment and must run again if
        # its partition stays ours: each with the copies that follow it.
        self._parked: list[Work[P, J]] = []
        self._stopping = False
        self._run_ids = itertools.count(1)
        self._epoch = 0

    # -- queries -------------------------------------------------------------------------

    @property
    def runs(self) -> int:
        """Runs admitted and not ended (those waiting for a delay or a replaced run too)."""
        return len(self._runs)

    @property
    def run_ids(self) -> tuple[int, ...]:
        """The admitted runs, oldest first: each ends once, through finished, raised or
        interrupted."""
        return tuple(self._runs)

    @property
    def owned(self) -> frozenset[P]:
        """The partitions assigned to us now (none between a revoke and its assignment)."""
        return frozenset(self._assigned)

    def work(self, run: int) -> Work[P, J]:
        return self._runs[run]

    def running(self, task_id: str) -> int | None:
        """The run the task-id index names for `task_id`, if any."""
        return self._by_task_id.get(task_id)

    def resume_offset(self, partition: P) -> int | None:
        """Where the group would resume the partition; None when nothing was received or
        read there."""
        offsets = self._offsets.get(partition)
        return offsets.position() if offsets is not None else None

    def next_offset(self, partition: P) -> int | None:
        """The first offset of the partition not received yet; None when none was (since
        it was assigned)."""
        offsets = self._offsets.get(partition)
        if offsets is None or offsets.last_received is None:
            return None
        return offsets.last_received + 1

    def pending(self, partition: P) -> list[int]:
        """Received offsets of the partition that are not finished yet, oldest first."""
        offsets = self._offsets.get(partition)
        return sorted(offsets.pending_set - offsets.finished) if offsets is not None else []

    def retry_delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self._retry_first_s * 2.0 ** (failures - 1), self._retry_max_s)

    def wants(self, partition: P, offset: int) -> bool:
        """Whether `receive` would take the record: the loop decodes only those."""
        if partition not in self._assigned:
            return False
        offsets = self._offsets.get(partition)
        last = offsets.last_received if offsets is not None else None
        return last is None or offset > last

    # -- records -------------------------------------------------------------------------

    def receive(
        self, partition: P, offset: int, request: Request | None, job: J
    ) -> Decision[P, J]:
        """A polled record, decoded: `request` is None for one that must be dead-lettered."""
        if partition not in self._assigned:
            return Decision(Reason.NOT_ASSIGNED)
        if not self._offsets.received(partition, offset):
            return Decision(Reason.REDELIVERED)
        if request is None:
            dead = Work(partition, offset, WorkKind.DEAD_LETTER, job)
            return Decision(Reason.DEAD_LETTER, self._start(dead))
        work = Work(
            partition, offset, WorkKind.TASK, job, request.task_id, request.fingerprint
        )
        running = self._by_task_id.get(request.task_id)
        if running is None:
            return Decision(Reason.ADMITTED, self._start(work))
        leader = self._runs[running]
        if request.force:
            # The run stops (it stays resumable) and the forced one starts from scratch once
            # it has; the stopped run's offset and its copies finish with the new run.
            work.followers = [leader, *leader.followers]
            leader.followers = []
            self._cancelled.add(running)
            return Decision(Reason.REPLACES, self._start(work), cancel=(running,))
        if leader.fingerprint != request.fingerprint:
            conflict = Work(partition, offset, WorkKind.CONFLICT, job)
            return Decision(Reason.CONFLICT, self._start(conflict))
        leader.followers.append(work)
        return Decision(Reason.FOLLOWS)

    @property
    def epoch(self) -> int:
        """Counts rebalance events (revokes and assignments)."""
        return self._epoch

    def read_to(self, positions: Mapping[P, int], *, epoch: int) -> None:
        """The consumer's read positions, taken when every record below each was received:
        offsets in between that were never received hold no record (a transaction marker,
        an aborted transaction, compaction), and the commit may move past them. `epoch`
        is `self.epoch` when they were asked for: positions read across a rebalance are
        dropped, as a partition lost and assigned again must not take its old position."""
        if epoch != self._epoch:
            return
        for partition, position in positions.items():
            if partition in self._assigned:
                self._offsets.read_to(partition, position)

    def receive_control(self, partition: P, offset: int, job: J) -> Decision[P, J]:
        """A control record (a cancel): its work starts at once and is no run of its task,
        so a cancel never waits for the run it stops, nor counts as that task's copy."""
        if partition not in self._assigned:
            return Decision(Reason.NOT_ASSIGNED)
        if not self._offsets.received(partition, offset):
            return Decision(Reason.REDELIVERED)
        control = Work(partition, offset, WorkKind.CANCEL, job)
        return Decision(Reason.CONTROL, self._start(control))

    # -- runs ending ---------------------------------------------------------------------

    def finished(self, run: int) -> Decision[P, J]:
        """The run did its work: its offset and its copies' are finished."""
        work = self._end(run)
        for done in (work, *work.followers):
            self._offsets.done(done.partition, done.offset)
        return Decision(Reason.FINISHED)

    def interrupted(self, run: int) -> Decision[P, J]:
        """Cancelled or interrupted (revoke, shutdown, engine death): unfinished and
        resumable, so its offset stays pending. Copies waiting on it, on partitions still
        ours, would otherwise wait for nothing: the first one runs."""
        return self._hand_over(self._end(run).followers)

    def raised(self, run: int) -> Decision[P, J]:
        """The run raised (a publish that kept failing, a bug): run it again after a delay
        while its partition is ours; parked if it was revoked and may come back."""
        cancelled = run in self._cancelled
        work = self._end(run)
        if cancelled:
            # Replaced by a forced run (which finishes this offset), or its partition moved
            # away: it raised on its way out. Running it again would work the task twice.
            return self._hand_over(work.followers)
        work.failures += 1
        if work.kind in _GIVEN_UP and work.failures >= self._give_up_attempts:
            self._offsets.done(work.partition, work.offset)
            return Decision(Reason.GAVE_UP)
        if self._stopping:
            return Decision(Reason.LEFT_PENDING)  # uncommitted, so read again after restart
        if work.partition in self._assigned:
            return Decision(Reason.RETRY, self._start(work))
        if work.partition in self._orphans:
            # A copy still ours runs now and finishes this offset too, should its partition
            # come back; with none, the work waits for the assignment to tell.
            return self._hand_over([work, *work.followers])
        # Its partition moved away: its own offset is the next owner's; its copies are not.
        return self._hand_over(work.followers)

    # -- rebalances and shutdown ---------------------------------------------------------

    def revoked(self, partitions: Iterable[P]) -> None:
        """Eager rebalance, first half: runs go on until the new assignment is known."""
        revoked = set(partitions)
        self._epoch += 1
        self._assigned -= revoked
        self._orphans |= revoked

    def assigned(self, partitions: Iterable[P]) -> Reassignment[P, J]:
        """Second half: partitions we got back keep their runs and offsets, and the work
        parked since the revoke runs again; runs of the partitions that moved away are
        cancelled (resumable from the pages Redis holds)."""
        assigned = set(partitions)
        self._epoch += 1
        lost = self._orphans - assigned
        self._orphans.clear()
        self._assigned = assigned
        cancel = tuple(run for run, work in self._runs.items() if work.partition in lost)
        self._cancelled.update(cancel)
        for partition in lost:
            self._offsets.revoke(partition)
        for partition in assigned:
            self._offsets.assign(partition)
        parked, self._parked = self._parked, []
        starts = []
        for work in parked:
            decision = self._hand_over([work, *work.followers])
            if decision.start is not None:
                starts.append(decision.start)
        return Reassignment(cancel=cancel, lost=tuple(lost), start=tuple(starts))

    def stop(self) -> None:
        """Shutting down: nothing is started any more; what is unfinished is read again
        after the restart."""
        self._stopping = True

    def drain(self) -> tuple[int, ...]:
        """Shutting down (`stop`), whatever the reason: the runs to cancel, all of them.
        The loop drains through this one call, so that no path forgets to stop the book."""
        self.stop()
        self._parked.clear()
        runs = tuple(self._runs)
        self._cancelled.update(runs)
        return runs

    # -- commits -------------------------------------------------------------------------

    def to_commit(self, *, force: bool) -> dict[P, int]:
        """Positions that moved since their last commit, of assigned partitions (of every
        partition still tracked with `force`: before a revoke and at shutdown)."""
        return {
            partition: position
            for partition, position in self._offsets.to_commit().items()
            if partition in self._assigned or force
        }

    def committed(self, positions: Mapping[P, int]) -> None:
        self._offsets.committed(dict(positions))

    # -- internals -----------------------------------------------------------------------

    def _start(self, work: Work[P, J]) -> Start[P, J]:
        # Runs of the same task still live were cancelled (replaced, their partition moved
        # away, or one of them raised on its way out) and are winding down: this one
        # starts once they all ended, whatever order they end in.
        after = (
            tuple(run for run, live in self._runs.items() if live.task_id == work.task_id)
            if work.task_id is not None else ()
        )
        run = next(self._run_ids)
        self._runs[run] = work
        if work.task_id is not None:
            self._by_task_id[work.task_id] = run
        return Start(run, work, self.retry_delay(work.failures), after)

    def _end(self, run: int) -> Work[P, J]:
        work = self._runs.pop(run)
        self._cancelled.discard(run)
        task_id = work.task_id
        if task_id is not None and self._by_task_id.get(task_id) == run:
            # The index names the newest live run of the task, while there is one: a copy
            # received now must follow a run that still ends.
            newest = max(
                (other for other, live in self._runs.items() if live.task_id == task_id),
                default=None,
            )
            if newest is None:
                del self._by_task_id[task_id]
            else:
                self._by_task_id[task_id] = newest
        return work

    def _hand_over(self, followers: list[Work[P, J]]) -> Decision[P, J]:
        """The first of `followers` still ours runs, the others follow it. Copies on
        partitions revoked and not yet reassigned follow it too; if none is ours now, they
        are parked together until the assignment tells which stay ours."""
        if self._stopping:
            return Decision(Reason.LEFT_PENDING)  # uncommitted, so read again after restart
        ours = [copy for copy in followers if copy.partition in self._assigned]
        revoked = [copy for copy in followers if copy.partition in self._orphans]
        for copy in followers:
            copy.followers = []  # one leader holds the group's list
        if ours:
            leader, *rest = ours
            leader.followers = [*rest, *revoked]
            return Decision(Reason.HANDED_OVER, self._start(leader))
        if revoked:
            leader, *rest = revoked
            leader.followers = rest
            self._parked.append(leader)
            return Decision(Reason.PARKED)
        return Decision(Reason.LEFT_PENDING)
