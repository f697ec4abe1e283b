"""`ocr-replay republish` and `ocr-replay side-by-side`: send requests again.

republish   reads the DLQ (envelopes holding the refused request bytes) or the requests topic
            in a time range, and sends each still-valid request back to the requests topic
            with attempt + 1 (and force=true with --force), keyed by task id, with the
            W3C trace context of the record it came from (a dead letter carries its
            request's), so the replay shows in the same trace.
side-by-side copies requests to `<prefix>.<requests topic>` (headers and all) and prints the
            settings of a second consumer group that writes to `<prefix>.*` topics, for
            comparing a model or resolution mode on real traffic without touching
            production outputs.

Both are dry runs unless --execute: they print what would be sent and change nothing.
"""

from __future__ import annotations

import base64
import binascii
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from consumer.settings import KafkaConnection, ResolutionMode, Topics, producer_kwargs
from producer_tools import UsageError
from producer_tools.replay_common import ReplaySettings, TopicRecord, read_range
from producer_tools.topic_admin import ensure_topics
from schemas.cloudevents import CE_TYPE_REQUEST, Headers, ce_headers, trace_context
from schemas.control import CancelRequest
from schemas.decode import RequestDecodeError, decode_record, decode_request
from schemas.dlq import DlqEnvelope
from schemas.event_ids import replayed_request_event_id
from schemas.headers import REPLAY_OF
from schemas.request import OcrRequest
from schemas.topics import REQUEST_RECORD_BYTES, TopicNames

REPLAY_SOURCE = "ocr-replay"
# What the requests topic accepts (schemas/topics.py).
MAX_SEND_BYTES = REQUEST_RECORD_BYTES


@dataclass(frozen=True, slots=True)
class Candidate:
    """One request to send, and where it was found."""

    request: OcrRequest
    origin: str
    raw: bytes  # the request bytes as found (side-by-side copies these unchanged)
    key: bytes | None
    # The request's headers; from a dead letter, only its trace context (the others are
    # the dead letter's own: its ce_* and ocr_error_*).
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class Selection:
    candidates: dict[str, Candidate] = field(default_factory=dict)  # task_id -> latest
    skipped: list[str] = field(default_factory=list)  # human lines: origin and why
    superseded: int = 0  # older copies of a task replaced by a later one
    scanned: int = 0

    def add(self, candidate: Candidate) -> None:
        # One send per task: older copies in the range (an earlier replay, a client retry)
        # would only be answered as duplicates after the first one ran.
        if candidate.request.task_id in self.candidates:
            self.superseded += 1
        self.candidates[candidate.request.task_id] = candidate


def _wanted(task_id: str | None, tasks: set[str]) -> bool:
    return not tasks or (task_id is not None and task_id in tasks)


def _from_dlq_record(
    record: TopicRecord, settings: ReplaySettings, tasks: set[str], codes: set[str],
    selection: Selection,
) -> None:
    if record.value is None:
        return  # a tombstone is not an envelope
    try:
        envelope = DlqEnvelope.model_validate_json(record.value)
    except ValidationError as exc:
        selection.skipped.append(f"{record.origin}: not a DLQ envelope ({exc.error_count()} "
                                 "error(s))")
        return
    if codes and envelope.error_code.value not in codes:
        return
    # An envelope names the task when the request was readable at all; without it, the
    # decoded request (below) decides.
    if envelope.task_id is not None and not _wanted(envelope.task_id, tasks):
        return
    try:
        raw = base64.b64decode(envelope.original_value_base64, validate=True)
        key = (
            base64.b64decode(envelope.original_key_base64, validate=True)
            if envelope.original_key_base64 is not None else None
        )
    except (binascii.Error, ValueError):
        selection.skipped.append(f"{record.origin}: original bytes are not valid base64")
        return
    where = (f"{record.origin} (from {envelope.original_topic}/{envelope.original_partition}/"
             f"{envelope.original_offset}, {envelope.error_code.value})")
    try:
        request = decode_request(raw, max_bytes=settings.max_request_bytes)
    except RequestDecodeError as exc:
        if _wanted(exc.task_id or envelope.task_id, tasks):
            selection.skipped.append(f"{where}: still invalid: {exc.code.value}: {exc.message}")
        return
    if not _wanted(request.task_id, tasks):
        return
    selection.add(Candidate(request, where, raw, key, tuple(trace_context(record.headers))))


def _from_request_record(
    record: TopicRecord, settings: ReplaySettings, tasks: set[str], selection: Selection
) -> None:
    try:
        request = decode_record(record.value, max_bytes=settings.max_request_bytes)
    except RequestDecodeError as exc:
        if _wanted(exc.task_id, tasks):
            selection.skipped.append(
                f"{record.origin}: invalid ({exc.code.value}: {exc.message}); the consumer "
                "dead-letters it, so only its producer can fix it"
            )
        return
    if isinstance(request, CancelRequest):
        if _wanted(request.task_id, tasks):
            # Replaying is for computing again; a cancel is sent anew with ocr-cancel.
            selection.skipped.append(f"{record.origin}: a cancel of {request.task_id}, not sent")
        return
    if _wanted(request.task_id, tasks):
        selection.add(Candidate(request, record.origin, record.value or b"", record.key,
                                record.headers))


async def select_from_dlq(
    settings: ReplaySettings, *, since_ms: int | None, until_ms: int | None,
    tasks: Iterable[str] = (), codes: Iterable[str] = (),
) -> Selection:
    selection = Selection()
    wanted, wanted_codes = set(tasks), set(codes)
    async for record in read_range(settings, settings.topic_dlq, since_ms=since_ms,
                                   until_ms=until_ms):
        selection.scanned += 1
        _from_dlq_record(record, settings, wanted, wanted_codes, selection)
    return selection


async def select_from_requests(
    settings: ReplaySettings, *, since_ms: int | None, until_ms: int | None,
    tasks: Iterable[str] = (),
) -> Selection:
    selection = Selection()
    wanted = set(tasks)
    async for record in read_range(settings, settings.topic_requests, since_ms=since_ms,
                                   until_ms=until_ms):
        selection.scanned += 1
        _from_request_record(record, settings, wanted, selection)
    return selection


def rebuilt(request: OcrRequest, *, force: bool) -> OcrRequest:
    """The request as republished: attempt + 1 (echoed on outputs), force when asked."""
    update: dict[str, object] = {"attempt": request.attempt + 1}
    if force:
        update["force"] = True
    # model_copy skips validation; validating the dump again keeps the contract's checks
    # (attempt's upper bound) in force for what we send.
    return OcrRequest.model_validate_json(request.model_copy(update=update).model_dump_json())


def _request_headers(request: OcrRequest, candidate: Candidate) -> Headers:
    headers = ce_headers(
        event_id=replayed_request_event_id(request), event_type=CE_TYPE_REQUEST,
        source=REPLAY_SOURCE, subject=request.task_id,
    )
    headers.append((REPLAY_OF, candidate.origin.encode()))
    headers.extend(trace_context(candidate.headers))
    return headers


def _producer(settings: KafkaConnection) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **producer_kwargs(settings), client_id=REPLAY_SOURCE, acks="all",
        enable_idempotence=settings.kafka_idempotence, max_request_size=MAX_SEND_BYTES,
        linger_ms=5,
    )


def print_selection(selection: Selection, source: str) -> None:
    print(f"scanned {selection.scanned} record(s) of {source}: {len(selection.candidates)} "
          f"request(s) to send, {len(selection.skipped)} skipped, {selection.superseded} "
          "older copies superseded")
    for line in selection.skipped:
        print(f"  skip {line}")


async def republish(
    settings: ReplaySettings, selection: Selection, *, force: bool, execute: bool
) -> list[OcrRequest]:
    """Send (or, in a dry run, list) every selected request; returns what was/would be sent."""
    outgoing: list[tuple[OcrRequest, Candidate]] = []
    for candidate in selection.candidates.values():
        try:
            outgoing.append((rebuilt(candidate.request, force=force), candidate))
        except ValidationError as exc:  # attempt at its contract bound: replayed too often
            print(f"  skip {candidate.origin}: cannot raise attempt: {exc.errors()[0]['msg']}")
    for request, candidate in outgoing:
        print(f"  {'send' if execute else 'would send'} {request.task_id} attempt "
              f"{request.attempt}{' force' if request.force else ''} -> "
              f"{settings.topic_requests}  (from {candidate.origin})")
    if not execute:
        print(f"dry run: {len(outgoing)} request(s) would be republished; nothing was sent "
              "(add --execute to send)")
        return [r for r, _ in outgoing]
    producer = _producer(settings)
    await producer.start()
    try:
        for request, candidate in outgoing:
            await producer.send_and_wait(
                settings.topic_requests, value=request.model_dump_json().encode(),
                key=request.task_id.encode(), headers=_request_headers(request, candidate),
            )
    finally:
        await producer.stop()
    print(f"republished {len(outgoing)} request(s) to {settings.topic_requests}")
    return [r for r, _ in outgoing]


# side-by-side -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SidePipeline:
    """The comparison consumer: production's settings with every topic, the group and the
    Redis keys prefixed, and optionally another model or resolution mode."""

    settings: ReplaySettings
    model: str | None = None
    resolution_mode: ResolutionMode | None = None

    @property
    def topic_names(self) -> TopicNames:
        return self.settings.topic_names

    def env(self) -> dict[str, str]:
        """The OCR_* overrides that start the comparison consumer."""
        side = self.settings
        values: dict[str, object] = {
            **{name: getattr(side, name) for name in Topics.model_fields},
            "group_id": side.group_id,
            # Its own ce_source: the same (source, id) as production's would make its
            # events duplicates of production's to any reader that sees both.
            "event_source": side.ce_source,
            "redis_key_prefix": side.redis_key_prefix,
            "model": self.model,
            "resolution_mode": self.resolution_mode,
        }
        return {
            f"OCR_{name.upper()}": str(getattr(value, "value", value))
            for name, value in values.items()
            if value is not None
        }


def side_pipeline(
    settings: ReplaySettings, prefix: str, *, model: str | None, resolution_mode: str | None,
    group_id: str | None = None,
) -> SidePipeline:
    """The comparison consumer of `prefix`; UsageError for a prefix or mode that cannot be."""
    try:
        names = settings.topic_names.with_prefix(prefix)
    except ValueError as exc:
        raise UsageError(f"--target-prefix: {exc}") from exc
    mode = None
    if resolution_mode is not None:
        try:
            mode = ResolutionMode(resolution_mode)
        except ValueError as exc:
            modes = ", ".join(m.value for m in ResolutionMode)
            raise UsageError(
                f"resolution mode {resolution_mode!r} is not one of {modes}"
            ) from exc
    side = settings.with_topic_names(names).model_copy(update={
        "group_id": group_id or f"{prefix}.{settings.group_id}",
        "event_source": None,  # the side group's default: ocr-stream/<side group id>
        # Task state in Redis is keyed by task id: sharing the prefix with production would
        # make the comparison consumer see every copied task as already completed.
        "redis_key_prefix": f"{prefix}:{settings.redis_key_prefix}",
    })
    return SidePipeline(side, model=model, resolution_mode=mode)


async def side_by_side(
    settings: ReplaySettings, pipeline: SidePipeline, selection: Selection, *, execute: bool
) -> dict[str, str]:
    side = pipeline.settings
    outgoing = list(selection.candidates.values())
    specs = side.topic_specs()
    print(f"side-by-side: {len(outgoing)} request(s) from {settings.topic_requests} -> "
          f"{side.topic_requests}")
    if not execute:
        print("dry run: would create " + ", ".join(s.name for s in specs) + " and copy the "
              "requests; nothing was changed (add --execute)")
    else:
        created = await ensure_topics(side, specs)
        print("created topics: " + (", ".join(created) if created else "none (all existed)"))
        producer = _producer(side)
        await producer.start()
        try:
            for candidate in outgoing:
                # The bytes are copied as they are (same attempt, same force): the comparison
                # group has its own Redis prefix, so every task is new to it anyway.
                headers = [(k, v) for k, v in candidate.headers if k != REPLAY_OF]
                headers.append((REPLAY_OF, candidate.origin.encode()))
                await producer.send_and_wait(
                    side.topic_requests, value=candidate.raw,
                    key=candidate.key or candidate.request.task_id.encode(), headers=headers,
                )
        finally:
            await producer.stop()
        print(f"copied {len(outgoing)} request(s) to {side.topic_requests}")
    env = pipeline.env()
    print("\n# Start the comparison consumer with these overrides (same Kafka and Redis):")
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    print("# then: ocr-consumer   (on a shared host also set OCR_METRICS_PORT to a free port)")
    print(f"# compare: ocr-collect / ocr-watch on {settings.topic_results} and "
          f"{side.topic_results}")
    return env
