"""The fault scenarios. Each draws its round plans from the harness's seeded generator at
the start of the round, in a fixed order, so a seed always gives the same plans; only the
moments the plans refer to ("after k pages of the batch") depend on the machine's speed."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka import codec as aiokafka_codec

from consumer.documents.render import shutdown_renderers
from consumer.engines.rapidocr import RapidOcrEngine
from consumer.settings.kafka import client_kwargs
from schemas.common import ErrorCode
from schemas.keys import task_partition
from tests.chaos.harness import (
    EXIT_MARGIN_S,
    GRACE_S,
    MID_BATCH_TIMEOUT_S,
    ROUND_TIMEOUT_S,
    Harness,
)
from tests.chaos.observe import ExpectedTask
from tests.chaos.procs import ConsumerProcess
from tests.support.apps import running_app
from tests.support.documents import stroked_pdf
from tests.support.engines import FaultyEngine

Scenario = Callable[[Harness], Awaitable[None]]


@dataclass(frozen=True)
class Plan:
    pages: list[int]  # page count of each task of the batch
    target: int  # the fault hits while this task (index in the batch) ...
    after_pages: int  # ... has this many pages published (and at least two left) ...
    extra_s: float  # ... plus this long
    pause_s: float  # how long the killed part stays down
    fallback: float  # picks the victim when the target's worker is gone already


def draw_plan(h: Harness, tasks: int, low: int = 1, high: int = 4) -> Plan:
    pages = [h.rng.randint(low, high) for _ in range(tasks)]
    # At least one document of three pages or more, so that there is a middle to hit.
    if max(pages) < 3:
        pages[h.rng.randrange(tasks)] = h.rng.randint(3, 4)
    target = pages.index(max(pages))
    return Plan(
        pages=pages,
        target=target,
        after_pages=h.rng.randint(1, pages[target] - 2),
        # Short: the engine finishes a page every ~0.5 s, so a long wait would often see
        # the target document done.
        extra_s=h.rng.uniform(0.0, 0.15),
        pause_s=h.rng.uniform(0.5, 4.0),
        fallback=h.rng.random(),
    )


async def sigkill(h: Harness) -> None:
    """Two static members, as deployed (pod name = consumer id = group instance id); each
    round SIGKILLs the one working on a half-done document, then either restarts it in
    place (same id: a container restart, which rejoins without a rebalance and takes its
    own task lease back at once) or replaces it (a new id: a new pod, which waits for the
    dead member's session and lease to expire)."""
    in_place_rounds = 0
    for _ in range(2):
        await h.start_consumer(static=True)
    for round_no in range(h.rounds):
        plan = draw_plan(h, 4)
        in_place = h.rng.random() < 0.5
        started = time.monotonic()
        batch = await h.submit(round_no, plan.pages)
        victim = await _sigkill_mid_document(h, round_no, batch, plan)
        if in_place:
            in_place_rounds += 1
            await h.start_consumer(victim.consumer_id, static=True)
        else:
            await h.start_consumer(static=True)
        await h.wait_round(batch, started)
    h.extra["restarts_in_place"] = in_place_rounds
    h.extra["replacements"] = h.rounds - in_place_rounds


async def transactions(h: Harness) -> None:
    """Two static members read requests published in Kafka transactions, as an
    exactly-once upstream writes them: each round's tasks in one committed transaction,
    with an aborted transaction of two more requests before it on the partitions of the
    first two tasks; a
    member is SIGKILLed mid-document and restarted. No aborted request may run (a result of
    one is a result for an unknown task), every committed one completes, and the round
    ends only once the group's commits reach the log end, commit markers included."""
    for _ in range(2):
        await h.start_consumer(static=True)
    producer = AIOKafkaProducer(
        **client_kwargs(h.settings), transactional_id=f"chaos-{h.suite.run_id}",
        enable_idempotence=True, acks="all",
    )
    await producer.start()
    try:
        for round_no in range(h.rounds):
            plan = draw_plan(h, 4)
            started = time.monotonic()
            batch = [
                ExpectedTask(h.task_id(round_no, index), pages, round=round_no + 1)
                for index, pages in enumerate(plan.pages)
            ]
            aborted = [f"{h.task_id(round_no, 90 + n)}-aborted" for n in range(2)]
            await producer.begin_transaction()
            for n, task_id in enumerate(aborted):
                # On the partitions of committed tasks: aborted batches and their markers
                # sit right before records the consumer must run.
                home = task_partition(batch[n].task_id.encode(), h.settings.topic_partitions)
                await _send_request(h, producer, task_id, 1, partition=home)
            await producer.abort_transaction()
            async with producer.transaction():
                for task in batch:
                    await _send_request(h, producer, task.task_id, task.pages)
                    h.expected[task.task_id] = task
            h.note(f"round {round_no + 1}: {len(aborted)} requests aborted, "
                   f"{len(batch)} tasks ({sum(plan.pages)} pages) committed")
            victim = await _sigkill_mid_document(h, round_no, batch, plan)
            await h.start_consumer(victim.consumer_id, static=True)
            await h.wait_round(batch, started)
    finally:
        await producer.stop()


async def _sigkill_mid_document(
    h: Harness, round_no: int, batch: list[ExpectedTask], plan: Plan
) -> ConsumerProcess:
    """SIGKILL the member working on the plan's document once it is half done, reap what
    it left, and wait the plan's pause; returns the dead member."""
    busy, where = await h.until_mid_document(batch, plan.target, plan.after_pages, plan.extra_s)
    victim = h.pick_victim(busy, plan.fallback)
    h.note(f"round {round_no + 1}: SIGKILL {victim.consumer_id} (pid {victim.pid}), {where}")
    victim.kill()
    await victim.wait_exit(10.0)
    victim.reap_children()
    h.kills += 1
    h.faults += 1
    await asyncio.sleep(plan.pause_s)
    return victim


async def _send_request(
    h: Harness, producer: AIOKafkaProducer, task_id: str, pages: int,
    partition: int | None = None,
) -> None:
    await producer.send_and_wait(
        h.settings.topic_requests, value=h.request_value(task_id, pages),
        key=task_id.encode(), partition=partition,
    )


async def sigterm(h: Harness) -> None:
    """One member; each round SIGTERMs it mid-document: it must drain (pages in the engine
    finish and are recorded, the rest stays resumable) and exit within the grace plus a
    margin; its replacement then resumes without recomputing a finished page."""
    h.expect_no_duplicates = True
    exits: list[float | None] = []
    h.extra["sigterm_exit_s"] = exits
    h.extra["exit_limit_s"] = GRACE_S + EXIT_MARGIN_S
    await h.start_consumer()
    for round_no in range(h.rounds):
        plan = draw_plan(h, 4)
        started = time.monotonic()
        batch = await h.submit(round_no, plan.pages)
        busy, where = await h.until_mid_document(
            batch, plan.target, plan.after_pages, plan.extra_s
        )
        victim = h.pick_victim(busy, plan.fallback)
        h.note(f"round {round_no + 1}: SIGTERM {victim.consumer_id} (pid {victim.pid}), {where}")
        took = await h.stop_consumer(victim)
        exits.append(None if took is None else round(took, 2))
        shown = "late" if took is None else f"after {took:.1f} s"
        h.note(f"{victim.consumer_id} exited {shown} with code {victim.returncode}")
        h.kills += 1
        h.faults += 1
        await asyncio.sleep(plan.pause_s)
        await h.start_consumer()
        await h.wait_round(batch, started)


async def kafka(h: Harness) -> None:
    """Two members; each round SIGKILLs the broker mid-batch and restarts it from its data
    directory (the last round after more than 30 s); clients (consumers, their producers,
    the group) must reconnect."""
    restarts: list[float] = []
    h.extra["kafka_restart_s"] = restarts
    for _ in range(2):
        await h.start_consumer()
    for round_no in range(h.rounds):
        plan = draw_plan(h, 4)
        # The last round's outage outlasts the producers' 30 s request timeout and the
        # session timeout, so the publisher's own retry loop and a full group rejoin run.
        long_outage = round_no == h.rounds - 1
        pause_s = h.rng.uniform(32.0, 40.0) if long_outage else plan.pause_s
        started = time.monotonic()
        batch = await h.submit(round_no, plan.pages)
        _, where = await h.until_mid_document(
            batch, plan.target, plan.after_pages, plan.extra_s
        )
        h.note(f"round {round_no + 1}: SIGKILL the broker for {pause_s:.1f} s, {where}")
        await h.suite.stack.call("kill-kafka")
        h.kills += 1
        h.faults += 1
        await asyncio.sleep(pause_s)
        took = await h.suite.stack.call("start-kafka")
        restarts.append(round(took, 1))
        h.note(f"broker back after {pause_s:.1f} s down + {took:.1f} s start-up")
        await h.wait_round(batch, started)


async def redis(h: Harness) -> None:
    """Two members; each round SIGKILLs Redis mid-batch, deletes its data and restarts it
    empty: task state, page records and leases are gone. In rounds 1, 3, ... the member
    working on the half-done document is SIGKILLed at the same moment, so another member
    resumes its tasks from the emptied state (and recomputes their pages). Tasks must
    still complete: pages may be computed twice, none may be lost."""
    crashes = 0
    for _ in range(2):
        await h.start_consumer()
    for round_no in range(h.rounds):
        plan = draw_plan(h, 4)
        crash_too = round_no % 2 == 0
        started = time.monotonic()
        batch = await h.submit(round_no, plan.pages)
        busy, where = await h.until_mid_document(
            batch, plan.target, plan.after_pages, plan.extra_s
        )
        victim = h.pick_victim(busy, plan.fallback) if crash_too else None
        if victim is not None:
            h.note(f"round {round_no + 1}: SIGKILL {victim.consumer_id} (pid {victim.pid}) "
                   f"and Redis, delete Redis's data; {where}")
            victim.kill()
            h.kills += 1
            crashes += 1
        else:
            h.note(f"round {round_no + 1}: SIGKILL Redis and delete its data, {where}")
        await h.suite.stack.call("wipe-redis")
        h.kills += 1
        h.faults += 1
        await asyncio.sleep(plan.pause_s)
        await h.suite.stack.call("start-redis")
        h.note(f"Redis back, empty, after {plan.pause_s:.1f} s")
        if victim is not None:
            await victim.wait_exit(10.0)
            victim.reap_children()
            await h.start_consumer()
        await h.wait_round(batch, started)
    h.extra["consumer_kills"] = crashes


async def rebalance(h: Harness) -> None:
    """Members join and leave (SIGTERM) a group of one to three while a batch runs; every
    change is an eager rebalance that revokes and reassigns all six partitions."""
    joins = 0
    leaves = 0
    await h.start_consumer(wait_joined=True)
    for round_no in range(h.rounds):
        pages = [h.rng.randint(1, 4) for _ in range(8)]
        changes = [(h.rng.uniform(0.5, 3.0), h.rng.random()) for _ in range(4)]
        started = time.monotonic()
        batch = await h.submit(round_no, pages)
        for index, (delay, draw) in enumerate(changes):
            await asyncio.sleep(delay)
            finished = all(h.done(t) for t in batch)
            if index == 0:
                h.aim(missed=finished, what=f"round {round_no + 1}: the batch finished before "
                      "its first membership change")
            if finished:
                h.note(f"round {round_no + 1}: batch finished before change {index + 1}; "
                       "the remaining changes are skipped")
                break
            members = h.alive()
            join = len(members) <= 1 or (len(members) < 3 and draw < 0.5)
            if join:
                await h.start_consumer(wait_joined=True)
                joins += 1
            else:
                victim = members[int(draw * 1000) % len(members)]
                h.note(f"round {round_no + 1}: {victim.consumer_id} leaves (SIGTERM)")
                took = await h.stop_consumer(victim)
                h.note(
                    f"{victim.consumer_id} left after {took:.1f} s" if took is not None else
                    f"{victim.consumer_id} did not exit within {GRACE_S + EXIT_MARGIN_S:.0f} s "
                    "of SIGTERM and was SIGKILLed"
                )
                leaves += 1
                h.kills += 1
            h.faults += 1
        await h.wait_round(batch, started)
    h.extra["joins"] = joins
    h.extra["leaves"] = leaves


async def engine(h: Harness) -> None:
    """An in-process App whose engine (RapidOCR behind FaultyEngine) raises on one page and
    hangs on another of every document; the page timeout turns the hang into PAGE_TIMEOUT
    and each task completes with its other pages."""
    # The limit counts a page's wait behind the page RapidOCR is busy with: 3 s made real
    # pages time out on a busy 2-core host (seen 2026-12-02), 8 s leaves room for that.
    page_timeout_s = 8.0
    h.extra["page_timeout_s"] = page_timeout_s
    log_path = h.log_dir / f"{h.settings.consumer_id}.log"
    h.inprocess_log = log_path
    faulty = FaultyEngine(RapidOcrEngine())
    settings = h.settings.model_copy(update={"page_timeout_s": page_timeout_s})
    with log_path.open("a") as log:
        log_in_process_to(log)
        try:
            async with running_app(settings, faulty, ready_timeout=120.0):
                h.note("in-process App ready")
                for round_no in range(h.rounds):
                    fail, hang = h.rng.sample(range(1, 4), 2)
                    pages = [h.rng.randint(3, 4) for _ in range(3)]
                    faulty.fail_pages = {fail}
                    faulty.hang_pages = {hang}
                    h.note(f"round {round_no + 1}: engine raises on page {fail}, hangs on "
                           f"page {hang}")
                    started = time.monotonic()
                    batch = await h.submit(
                        round_no, pages,
                        failed={fail: ErrorCode.ENGINE_ERROR, hang: ErrorCode.PAGE_TIMEOUT},
                    )
                    h.faults += 2 * len(batch)
                    await h.wait_round(batch, started)
        finally:
            await faulty.close()
            await asyncio.to_thread(shutdown_renderers)
            log_in_process_to(h.suite.log_stream)


# -- issue 16: outages longer than a task, poison records, a slow-rendering document ------

# A 1-page task takes 2-20 s on the 2-CPU VM depending on its load (2026-12-07: up to 30 s
# for 2 pages with two consumers): the timeout must leave room for that.
OUTAGE_TASK_TIMEOUT_S = 60.0
OUTAGE_S = 70.0  # longer than the task timeout


async def redis_outage(h: Harness) -> None:
    """One member with OCR_TASK_TIMEOUT_S=60; Redis is SIGKILLed (its data kept) for 70 s,
    longer than a task may take: in round 1 before the batch is submitted, in round 2 once
    a task has started (its page in progress). Every task must complete once Redis is
    back: an outage is waited out, never turned into a failed task. 1-page documents, so
    that a loaded 2-CPU host finishes them well within the task timeout otherwise."""
    h.consumer_overrides["OCR_TASK_TIMEOUT_S"] = f"{OUTAGE_TASK_TIMEOUT_S:g}"
    h.extra.update(task_timeout_s=OUTAGE_TASK_TIMEOUT_S, outage_s=OUTAGE_S)
    await h.start_consumer(wait_joined=True)
    for round_no in range(min(h.rounds, 2)):
        pages = [1, 1, 1]
        started = time.monotonic()
        if round_no == 0:
            h.note(f"round 1: SIGKILL Redis for {OUTAGE_S:.0f} s, then submit")
            await h.suite.stack.call("kill-redis")
            batch = await h.submit(round_no, pages)
        else:
            batch = await h.submit(round_no, pages)
            running = await h.wait_started(batch[0], MID_BATCH_TIMEOUT_S)
            h.aim(missed=not running or h.done(batch[0]),
                  what=f"{batch[0].task_id} had not started or had finished")
            h.note(f"round {round_no + 1}: SIGKILL Redis for {OUTAGE_S:.0f} s, "
                   f"{batch[0].task_id} started")
            await h.suite.stack.call("kill-redis")
        h.kills += 1
        h.faults += 1
        await asyncio.sleep(OUTAGE_S)
        await h.suite.stack.call("start-redis")
        h.note(f"Redis back after {OUTAGE_S:.0f} s (data kept)")
        await h.wait_round(batch, started)


PoisonCase = tuple[str, bytes | None, bytes | None, frozenset[str]]  # label, key, value, codes


async def _poison_round(
    h: Harness, cases: Sequence[PoisonCase],
    *, extra_valid: list[tuple[str, str | None]] | None = None,
) -> None:
    """One consumer; each case is a record followed, on its partition, by a valid 1-page
    request that must complete; each poison record must end as a dead letter with one of
    its codes, and the group must commit to the end. A consumer that exits is restarted
    (as Kubernetes would) and reported: a crash loop is the failure these look for."""
    await h.start_consumer()
    started = time.monotonic()
    batch = []
    for index, (label, key, value, codes) in enumerate(cases):
        partition = await h.send_raw(value, key)
        h.dead_letters.append(codes)
        batch.append(await h.send_request(0, index, 1, partition=partition))
        h.note(f"sent {label} to partition {partition}, then {batch[-1].task_id}")
        h.faults += 1
    for offset, (label, compression) in enumerate(extra_valid or []):
        batch.append(await h.send_request(0, len(cases) + offset, 1, compression=compression))
        h.note(f"sent {batch[-1].task_id} {label}")
        h.faults += 1
    await h.wait_round(batch, started, timeout_s=120.0, restarts=2)


def _request_json(task_id: str, **fields: object) -> dict[str, object]:
    return {"schema_version": 1, "task_id": task_id, "source": {"uri": "file:///x.pdf"},
            **fields}


async def poison(h: Harness) -> None:
    """Records a foreign or broken producer sends, each followed by a valid request on its
    partition: not JSON, valid JSON the schema refuses, a Confluent Schema Registry frame
    (magic byte 0 and a schema id before the JSON), a 5,000-digit integer, and valid
    requests compressed with each codec aiokafka can write here (gzip always; snappy, lz4
    and zstd with cramjam). Each bad record is dead-lettered with its code, every valid
    request completes, nothing crash-loops."""
    invalid = json.dumps(_request_json("poison-invalid", dpi=5, prompt="poem")).encode()
    huge = ('{"schema_version": 1, "task_id": "poison-int", "source": {"uri": '
            '"file:///x.pdf"}, "metadata": {"n": 1' + "0" * 5000 + "}}").encode()
    framed = b"\x00" + struct.pack(">I", 42) + json.dumps(_request_json("poison-framed")).encode()
    cases = [
        ("a record that is not JSON", b"poison-text", b"this is not JSON {",
         frozenset({ErrorCode.REQUEST_NOT_JSON.value})),
        ("a schema-invalid request (dpi 5, unknown prompt)", b"poison-invalid", invalid,
         frozenset({ErrorCode.REQUEST_INVALID.value})),
        ("a Confluent-framed request (magic byte 0, schema id 42)", b"poison-framed", framed,
         frozenset({ErrorCode.REQUEST_SCHEMA_REGISTRY_FRAMED.value})),
        # json.loads refuses more than 4,300 digits with a ValueError, which crash-looped
        # the consumer before the decoder caught it (issue 16, defect 1).
        ("a request with a 5,000-digit integer", b"poison-int", huge,
         frozenset({ErrorCode.REQUEST_INVALID.value})),
    ]
    codecs = [name for name in ("gzip", "snappy", "lz4", "zstd")
              if getattr(aiokafka_codec, f"has_{name}")()]
    h.extra["codecs"] = codecs
    h.extra["codecs_not_installed"] = [
        name for name in ("snappy", "lz4", "zstd") if name not in codecs
    ]
    await _poison_round(
        h, cases, extra_valid=[(f"compressed with {codec}", codec) for codec in codecs]
    )


async def poison_huge_dlq(h: Harness) -> None:
    """A non-JSON record with a 1.9 MiB key (its dead letter, carrying key and value,
    would pass the broker's limit), then a valid request on its partition: the bad record
    must end dead-lettered (cut to fit) or skipped with a metric, the valid one complete,
    and the partition's commits must reach its end."""
    key = b"k" * (1900 * 1024)
    await _poison_round(h, [(
        "a non-JSON record with a 1.9 MiB key", key, b"not JSON either",
        frozenset({ErrorCode.REQUEST_NOT_JSON.value, ErrorCode.REQUEST_TOO_LARGE.value}),
    )])


SLOW_PAGES = 4
SLOW_LINES = 4000  # about 4 s a page at 144 dpi on an idle 2-CPU VM (~1 ms a stroked line)
SMALL_TASKS = 3
# A small task beside the slow PDF may take this much longer than one alone (measured at
# the start of the round: on a loaded 2-CPU host a 1-page task alone takes 2-20 s), or
# SMALL_FLOOR_S: it may wait for a page in progress, never for the slow PDF's queue.
SMALL_FACTOR = 2.5
SMALL_FLOOR_S = 30.0


async def slow_render(h: Harness) -> None:
    """One member with two render workers; each round times a 1-page text document alone,
    then starts a 4-page PDF of 4,000 stroked lines a page (seconds a page to render) and
    sends three 1-page documents one by one beside it: each must complete within 2.5 times
    the time alone (at least 30 s), and the slow one must complete too."""
    h.consumer_overrides["OCR_RENDER_WORKERS"] = "2"
    slow_path = h.suite.blob_dir / "slow-render.pdf"
    slow_path.write_bytes(stroked_pdf(SLOW_PAGES, SLOW_LINES))
    alone: list[float] = []
    beside: list[float] = []
    h.extra.update(slow_pages=SLOW_PAGES, slow_lines=SLOW_LINES, small_alone_s=alone,
                   small_beside_slow_s=beside)
    await h.start_consumer(wait_joined=True)
    for round_no in range(min(h.rounds, 2)):
        started = time.monotonic()
        sent = time.monotonic()
        [baseline] = await h.submit(round_no, [1])
        await h.wait_done(baseline, ROUND_TIMEOUT_S)
        alone.append(round(time.monotonic() - sent, 1))
        limit = max(SMALL_FLOOR_S, SMALL_FACTOR * alone[-1])
        [slow_task] = await h.submit(
            round_no, [SLOW_PAGES], documents={SLOW_PAGES: slow_path}, first_index=1
        )
        await h.wait_started(slow_task, MID_BATCH_TIMEOUT_S)
        batch = [baseline, slow_task]
        for index in range(2, SMALL_TASKS + 2):
            sent = time.monotonic()
            overlapping = not h.done(slow_task)
            h.aim(missed=not overlapping, what=f"the slow PDF had finished before small "
                  f"document {index - 1}")
            [small] = await h.submit(round_no, [1], first_index=index)
            batch.append(small)
            await h.wait_done(small, 2 * limit)
            took = time.monotonic() - sent
            beside.append(round(took, 1))
            h.faults += 1
            if took > limit:
                h.problem(f"{small.task_id} took {took:.1f} s beside the slow PDF, more than "
                          f"{limit:.0f} s ({SMALL_FACTOR:g} x {alone[-1]:.1f} s alone)")
        await h.wait_round(batch, started)


def log_in_process_to(stream: TextIO) -> None:
    """Consumer code running in the suite's process (the engine scenario's App, topic
    admin) logs JSON lines to a file, as the subprocesses do, instead of interleaving with
    the suite's report."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def silence_in_process_logs() -> None:
    """After the suite's log file is closed: nothing may print after the summary line."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        logger_factory=structlog.ReturnLoggerFactory(),
    )


SCENARIOS: dict[str, Scenario] = {
    "sigkill": sigkill,
    "sigterm": sigterm,
    "transactions": transactions,
    "kafka": kafka,
    "redis": redis,
    "rebalance": rebalance,
    "engine": engine,
    "redis-outage": redis_outage,
    "poison": poison,
    "poison-huge-dlq": poison_huge_dlq,
    "slow-render": slow_render,
}
