"""CloudEvents 1.0 binary-mode headers for Kafka records (the value stays the plain event)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

CE_SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"

# One `ce_type` per event kind; the version suffix changes with the contract.
CE_TYPE_RESULT = "ocr.page.result.v1"
CE_TYPE_PROGRESS = "ocr.task.progress.v1"
CE_TYPE_TIMING = "ocr.task.timing.v1"
CE_TYPE_DLQ = "ocr.request.deadletter.v1"
CE_TYPE_REQUEST = "ocr.request.v1"
CE_TYPE_CANCEL = "ocr.task.cancel.v1"

Headers = list[tuple[str, bytes]]

# CloudEvents attribute names: lower-case ASCII letters and digits, at most 20 characters
# recommended (spec 1.0, "Attribute Naming Convention"); in Kafka each is a `ce_` header.
EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
# The consumer that published an event, as an extension: `ce_source` names the deployment
# and stays the same whichever consumer re-sends an event, so (source, id) identifies it.
CE_EXTENSION_CONSUMER = "ocrconsumer"

# W3C Trace Context, carried as plain Kafka headers (OpenTelemetry's Kafka convention): a
# request's are copied onto every output of its task and its dead letter.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
MAX_TRACESTATE = 512  # the W3C limit a vendor may keep to


def trace_context(headers: Iterable[tuple[str, bytes]]) -> Headers:
    """The request's trace headers worth passing on: a valid version-00 `traceparent` and,
    only with one, its `tracestate`. A malformed traceparent is dropped (W3C: restart the
    trace), never an error: tracing must not fail a request."""
    wanted = (TRACEPARENT, TRACESTATE)
    found = {key.lower(): value for key, value in headers if key.lower() in wanted}
    parent = found.get(TRACEPARENT)
    if parent is None or _TRACEPARENT.fullmatch(parent.decode("ascii", "replace")) is None:
        return []
    out: Headers = [(TRACEPARENT, parent)]
    state = found.get(TRACESTATE)
    if state is not None and len(state) <= MAX_TRACESTATE and state.isascii():
        out.append((TRACESTATE, state))
    return out


@dataclass(frozen=True, slots=True)
class CloudEvent:
    id: str
    type: str
    source: str
    time: datetime
    subject: str | None = None
    content_type: str = CONTENT_TYPE


def ce_headers(
    *, event_id: str, event_type: str, source: str, subject: str | None = None,
    time: datetime | None = None, extensions: Mapping[str, str] | None = None,
) -> Headers:
    """Kafka headers for one event; `event_id` should be deterministic for idempotency.
    `extensions` are CloudEvents extension attributes (names checked against the spec)."""
    when = (time or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    headers: Headers = [
        ("ce_specversion", CE_SPECVERSION.encode()),
        ("ce_id", event_id.encode()),
        ("ce_type", event_type.encode()),
        ("ce_source", source.encode()),
        ("ce_time", when.encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    if subject is not None:
        headers.append(("ce_subject", subject.encode()))
    for name, value in (extensions or {}).items():
        if EXTENSION_NAME.fullmatch(name) is None:
            raise ValueError(
                f"CloudEvents extension name {name!r}: use 1-20 lower-case letters or digits"
            )
        headers.append((f"ce_{name}", value.encode()))
    return headers


class CloudEventHeaderError(ValueError):
    pass


def parse_ce_headers(
    headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...],
) -> CloudEvent:
    """Read the CloudEvents attributes back; raises CloudEventHeaderError naming what is wrong."""
    found = {key: value.decode("utf-8", "replace") for key, value in headers}
    required = ("ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time")
    missing = [k for k in required if k not in found]
    if missing:
        raise CloudEventHeaderError(f"missing CloudEvents headers: {', '.join(missing)}")
    if found["ce_specversion"] != CE_SPECVERSION:
        raise CloudEventHeaderError(
            f"ce_specversion {found['ce_specversion']!r} is not {CE_SPECVERSION!r}"
        )
    try:
        when = datetime.fromisoformat(found["ce_time"].replace("Z", "+00:00"))
    except ValueError as exc:
        raise CloudEventHeaderError(f"ce_time {found['ce_time']!r} is not RFC 3339") from exc
    return CloudEvent(
        id=found["ce_id"],
        type=found["ce_type"],
        source=found["ce_source"],
        time=when,
        subject=found.get("ce_subject"),
        content_type=found.get("content-type", CONTENT_TYPE),
    )
