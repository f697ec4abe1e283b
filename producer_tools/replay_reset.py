"""`ocr-replay reset`: move a consumer group's committed offsets (dry run unless --execute).

Moving offsets back makes the group re-read requests: tasks that completed are answered as
duplicates unless the request says force, and unfinished ones resume from their missing
pages (Redis keeps per-page progress). Moving forward skips requests for good.

The group must be empty: a live member would overwrite the new offsets with its own next
commit. Besides the check before planning, Kafka itself refuses a commit from outside the
group (generation -1) while the group has members, so a consumer that starts between the
check and the commit makes the commit fail instead of being silently overridden.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from consumer.settings import KafkaConnection, client_kwargs
from producer_tools.replay_common import (
    GroupInfo,
    ReplayError,
    describe_group,
    format_ms,
    offsets_at,
    offsets_consumer,
    refuse_if_live,
    topic_partitions,
)

COMMIT_METADATA = "ocr-replay reset"


class TargetKind(StrEnum):
    EARLIEST = "earliest"
    LATEST = "latest"
    OFFSET = "offset"
    DATETIME = "datetime"
    SHIFT = "shift"


@dataclass(frozen=True, slots=True)
class ResetTarget:
    kind: TargetKind
    value: int = 0  # the offset, the time in epoch ms, or the shift

    def describe(self) -> str:
        if self.kind is TargetKind.OFFSET:
            return f"offset {self.value}"
        if self.kind is TargetKind.DATETIME:
            return f"first record at or after {format_ms(self.value)}"
        if self.kind is TargetKind.SHIFT:
            return f"current {self.value:+d}"
        return self.kind.value


@dataclass(frozen=True, slots=True)
class OffsetMove:
    tp: TopicPartition
    current: int | None  # committed offset; None when the group never committed here
    new: int
    beginning: int
    end: int
    note: str = ""
    skip: bool = False  # nothing to commit for this partition

    @property
    def changes(self) -> bool:
        return not self.skip and self.current != self.new

    def line(self) -> str:
        current = "none" if self.current is None else str(self.current)
        delta = "" if self.current is None else f" ({self.new - self.current:+d})"
        note = f"  [{self.note}]" if self.note else ""
        if self.skip:
            return f"{self.tp.topic:<30} {self.tp.partition:>4}  {current:>10}    (unchanged){note}"
        return (
            f"{self.tp.topic:<30} {self.tp.partition:>4}  {current:>10} -> {self.new:<10}"
            f"{delta:<12} log {self.beginning}..{self.end}{note}"
        )


@dataclass(frozen=True, slots=True)
class ResetPlan:
    group: GroupInfo
    target: ResetTarget
    moves: list[OffsetMove]


async def committed_offsets(
    settings: KafkaConnection, group_id: str, tps: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="ocr-replay")
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group_id, partitions=tps)
    finally:
        await admin.close()
    # -1 is Kafka's "no committed offset" for a partition that was asked about explicitly.
    return {
        tp: (found[tp].offset if tp in found and found[tp].offset >= 0 else None) for tp in tps
    }


def _clamp(wanted: int, beginning: int, end: int) -> tuple[int, str]:
    # Offsets outside the log would make the consumer fall back to auto_offset_reset, which
    # is not what the operator asked for; pin them to the nearest real offset and say so.
    if wanted < beginning:
        return beginning, f"{wanted} is before the log start; clamped"
    if wanted > end:
        return end, f"{wanted} is past the end; clamped"
    return wanted, ""


async def plan_reset(
    settings: KafkaConnection, group_id: str, topics: list[str], target: ResetTarget
) -> ResetPlan:
    group = await describe_group(settings, group_id)
    tps = await topic_partitions(settings, topics)
    consumer = offsets_consumer(settings)
    await consumer.start()
    try:
        beginning = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        at_time = (
            await offsets_at(consumer, tps, target.value, end)
            if target.kind is TargetKind.DATETIME
            else {}
        )
    finally:
        await consumer.stop()
    current = await committed_offsets(settings, group_id, tps)

    moves: list[OffsetMove] = []
    for tp in tps:
        note = ""
        if target.kind is TargetKind.EARLIEST:
            new = beginning[tp]
        elif target.kind is TargetKind.LATEST:
            new = end[tp]
        elif target.kind is TargetKind.OFFSET:
            new, note = _clamp(target.value, beginning[tp], end[tp])
        elif target.kind is TargetKind.DATETIME:
            new = at_time[tp]
            if new == end[tp]:
                note = "no record at or after the time: end of log"
        else:
            committed = current[tp]
            if committed is None:
                # No committed offset to shift from; the group would start per its
                # auto_offset_reset, so leave this partition alone.
                moves.append(OffsetMove(tp, None, -1, beginning[tp], end[tp],
                                        "no committed offset to shift from", skip=True))
                continue
            new, note = _clamp(committed + target.value, beginning[tp], end[tp])
        moves.append(OffsetMove(tp, current[tp], new, beginning[tp], end[tp], note))
    return ResetPlan(group, target, moves)


async def execute_reset(settings: KafkaConnection, group_id: str, moves: list[OffsetMove]) -> None:
    """Commit the new offsets as the (empty) group, then read them back to confirm."""
    commits = {m.tp: (m.new, COMMIT_METADATA) for m in moves if not m.skip}
    if not commits:
        return
    # group_id without subscribe(): the consumer never joins the group, it only commits
    # (as generation -1, which the broker accepts only while the group is empty).
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), group_id=group_id, enable_auto_commit=False,
        client_id="ocr-replay-reset",
    )
    await consumer.start()
    try:
        consumer.assign(list(commits))
        await consumer.commit(commits)
    except (CommitFailedError, UnknownMemberIdError, IllegalGenerationError,
            RebalanceInProgressError) as exc:
        raise ReplayError(
            f"Kafka refused the commit for group {group_id!r} ({type(exc).__name__}): a "
            "consumer joined the group after the check. Stop it and run again."
        ) from exc
    finally:
        await consumer.stop()
    confirmed = await committed_offsets(settings, group_id, list(commits))
    wrong = [tp for tp, (offset, _) in commits.items() if confirmed[tp] != offset]
    if wrong:
        raise ReplayError(
            "the commit returned but the group's offsets differ for "
            + ", ".join(f"{tp.topic}/{tp.partition}" for tp in wrong)
            + "; a member may have committed meanwhile: check the group and run again"
        )


async def reset(
    settings: KafkaConnection, group_id: str, topics: list[str], target: ResetTarget, *,
    execute: bool,
) -> int:
    plan = await plan_reset(settings, group_id, topics, target)
    print(f"group {group_id!r} (state {plan.group.state}); target: {target.describe()}")
    print(f"{'topic':<30} {'part':>4}  {'current':>10} -> {'new':<10}{'':<12} log range")
    for move in plan.moves:
        print(move.line())
    changing = [m for m in plan.moves if m.changes]
    refuse_if_live(plan.group, "offsets can be reset")
    if not execute:
        print(f"dry run: {len(changing)} partition(s) would change; nothing was committed "
              "(add --execute to commit)")
        return 0
    await execute_reset(settings, group_id, plan.moves)
    committed = sum(1 for m in plan.moves if not m.skip)
    print(f"committed {committed} partition offset(s) for group {group_id!r} "
          f"({len(changing)} changed)")
    return 0
