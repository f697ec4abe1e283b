"""CloudEvents 1.0 binary-mode headers for Kafka records (the value stays the plain event)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from schemas import headers as names

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


# RFC 3986 URI-reference (section 4.1), the type of `ce_source`, written from its ABNF.
_UNRESERVED_SUB = r"A-Za-z0-9\-._~!$&'()*+,;="  # unreserved and sub-delims
_PCT = "%[0-9A-Fa-f]{2}"
_PCHAR = f"(?:[{_UNRESERVED_SUB}:@]|{_PCT})"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"


def _ipv6() -> str:
    """The nine forms of IPv6address: n groups, "::", then the rest."""
    h16 = "[0-9A-Fa-f]{1,4}"
    ls32 = f"(?:{h16}:{h16}|{_IPV4})"
    forms = [f"(?:{h16}:){{6}}{ls32}", f"::(?:{h16}:){{5}}{ls32}"]
    for most_before, after in ((0, 4), (1, 3), (2, 2), (3, 1), (4, 0)):
        forms.append(f"(?:(?:{h16}:){{0,{most_before}}}{h16})?::(?:{h16}:){{{after}}}{ls32}")
    forms.append(f"(?:(?:{h16}:){{0,5}}{h16})?::{h16}")
    forms.append(f"(?:(?:{h16}:){{0,6}}{h16})?::")
    return "|".join(forms)


_HOST = (
    rf"(?:\[(?:{_ipv6()}|v[0-9A-Fa-f]+\.[{_UNRESERVED_SUB}:]+)\]"
    f"|{_IPV4}|(?:[{_UNRESERVED_SUB}]|{_PCT})*)"
)
_AUTHORITY = f"(?:(?:[{_UNRESERVED_SUB}:]|{_PCT})*@)?{_HOST}(?::[0-9]*)?"
_SEGMENTS = f"(?:/{_PCHAR}*)*"
_PATH_ABSOLUTE = f"/(?:{_PCHAR}+{_SEGMENTS})?"
_FIRST_SEGMENT_NO_COLON = f"(?:[{_UNRESERVED_SUB}@]|{_PCT})+"  # else it reads as a scheme
_QUERY = f"(?:{_PCHAR}|[/?])*"
_QUERY_FRAGMENT = rf"(?:\?{_QUERY})?(?:#{_QUERY})?"
_URI = (
    rf"[A-Za-z][A-Za-z0-9+\-.]*:"
    f"(?://{_AUTHORITY}{_SEGMENTS}|{_PATH_ABSOLUTE}|{_PCHAR}+{_SEGMENTS}|){_QUERY_FRAGMENT}"
)
_RELATIVE_REF = (
    f"(?://{_AUTHORITY}{_SEGMENTS}|{_PATH_ABSOLUTE}|{_FIRST_SEGMENT_NO_COLON}{_SEGMENTS}|)"
    f"{_QUERY_FRAGMENT}"
)
_URI_REFERENCE = re.compile(f"(?:{_URI})|(?:{_RELATIVE_REF})")


def is_source(value: str) -> bool:
    """A valid `ce_source`: a non-empty URI-reference (CloudEvents 1.0), so ASCII with
    anything else percent-encoded; SDKs parse it as a URI (the Java SDK's getSource() is a
    java.net.URI), and one that does not parse costs a reader the event."""
    return bool(value) and _URI_REFERENCE.fullmatch(value) is not None


def deployment_source(group_id: str) -> str:
    """The default `ce_source` of a deployment: `ocr-stream/<group id>`, percent-encoded.
    Every consumer of a group says the same, so a page re-sent by another consumer after a
    rebalance keeps its (source, id): the same event, as CloudEvents counts them."""
    return f"ocr-stream/{quote(group_id, safe='')}"


# W3C Trace Context, carried as plain Kafka headers (OpenTelemetry's Kafka convention): a
# request's are copied onto every output of its task and its dead letter.
TRACEPARENT = names.TRACEPARENT
TRACESTATE = names.TRACESTATE
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
        (names.CE_SPECVERSION, CE_SPECVERSION.encode()),
        (names.CE_ID, event_id.encode()),
        (names.CE_TYPE, event_type.encode()),
        (names.CE_SOURCE, source.encode()),
        (names.CE_TIME, when.encode()),
        (names.CONTENT_TYPE, CONTENT_TYPE.encode()),
    ]
    if subject is not None:
        headers.append((names.CE_SUBJECT, subject.encode()))
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
    required = (names.CE_SPECVERSION, names.CE_ID, names.CE_TYPE, names.CE_SOURCE, names.CE_TIME)
    missing = [k for k in required if k not in found]
    if missing:
        raise CloudEventHeaderError(f"missing CloudEvents headers: {', '.join(missing)}")
    if found[names.CE_SPECVERSION] != CE_SPECVERSION:
        raise CloudEventHeaderError(
            f"ce_specversion {found[names.CE_SPECVERSION]!r} is not {CE_SPECVERSION!r}"
        )
    try:
        when = datetime.fromisoformat(found[names.CE_TIME].replace("Z", "+00:00"))
    except ValueError as exc:
        raise CloudEventHeaderError(f"ce_time {found[names.CE_TIME]!r} is not RFC 3339") from exc
    return CloudEvent(
        id=found[names.CE_ID],
        type=found[names.CE_TYPE],
        source=found[names.CE_SOURCE],
        time=when,
        subject=found.get(names.CE_SUBJECT),
        content_type=found.get(names.CONTENT_TYPE, CONTENT_TYPE),
    )
