"""The v1 contract refuses what it must, with messages a producer can act on."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from consumer.publisher import dead_letter_envelope
from schemas import export
from schemas.cloudevents import (
    CE_TYPE_RESULT,
    CloudEventHeaderError,
    ce_headers,
    parse_ce_headers,
)
from schemas.common import ErrorCode
from schemas.control import CancelRequest
from schemas.decode import RequestDecodeError, decode_record, decode_request
from schemas.dlq import (
    MAX_DLQ_KEY_CHARS,
    MAX_DLQ_RECORD_BYTES,
    MAX_ORIGINAL_BASE64,
    DlqEnvelope,
    dead_letter_key,
)
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import MAX_REQUEST_RECORD_BYTES, OcrRequest, PageRange, parse_page_ranges
from schemas.result import PageResult
from schemas.timing import TimingEvent
from schemas.topics import LARGE_RECORD_BYTES, REQUEST_RECORD_BYTES

NOW = "2026-11-24T10:00:00Z"
VERSION_MESSAGE = (
    "Value error, unsupported schema_version 2: this release understands only 1; "
    "upgrade the consumer or publish a v1 event"
)
TASK_ID_MESSAGE = "String should match pattern '^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$'"
ENGINE = {"name": "rapidocr", "model": "PP-OCRv4"}

# A minimal valid event of each kind, as it travels: JSON.
VALID: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
    "request": (OcrRequest, {"task_id": "doc-1", "source": {"uri": "file:///srv/a.pdf"}}),
    "page_result": (
        PageResult,
        {
            "task_id": "doc-1", "page": 1, "page_count": 2, "status": "ok",
            "finish_reason": "stop", "engine": ENGINE,
            "image": {"width_px": 1190, "height_px": 1684, "dpi": 144},
            "blocks": [{"label": "text", "text": "hi", "bbox_px": [0, 0, 10, 10]}],
            "produced_at": NOW,
        },
    ),
    "progress": (
        ProgressEvent,
        {"task_id": "doc-1", "status": "started", "pages_total": 2, "emitted_at": NOW},
    ),
    "timing": (
        TimingEvent,
        {
            "task_id": "doc-1", "kind": "task", "pages": 2, "queued_at": NOW,
            "started_at": NOW, "finished_at": NOW, "stages": {"infer_ms": 12.5},
        },
    ),
    "dlq": (
        DlqEnvelope,
        {
            "error_code": "REQUEST_NOT_JSON", "error_message": "request is not JSON",
            "original_topic": "ocr.requests", "original_partition": 0, "original_offset": 7,
            "original_value_base64": "bm9wZQ==", "failed_at": NOW,
        },
    ),
    "cancel": (
        CancelRequest,
        {"action": "cancel", "task_id": "doc-1", "reason": "sent by mistake"},
    ),
}
KINDS = list(VALID)

# (kind, field, wrong value, message)
WRONG_TYPES = [
    ("request", "dpi", "144", "Input should be a valid integer"),
    ("page_result", "page", "1", "Input should be a valid integer"),
    ("progress", "status", "running",
     "Input should be 'queued', 'started', 'page_done', 'completed', 'failed' or "
     "'cancelled'"),
    ("progress", "percent", "50", "Input should be a valid number"),
    ("cancel", "action", "stop", "Input should be <ControlAction.CANCEL: 'cancel'>"),
    ("timing", "started_at", 1700000000.5, "Input should be a valid datetime"),
    ("dlq", "original_offset", "7", "Input should be a valid integer"),
]
# (kind, field, too large value, message)
OVERSIZED = [
    ("request", "locate_text", "x" * 513, "String should have at most 512 characters"),
    ("page_result", "markdown", "x" * (512 * 1024 + 1),
     "String should have at most 524288 characters"),
    ("progress", "consumer_id", "c" * 129, "String should have at most 128 characters"),
    ("timing", "consumer_id", "c" * 129, "String should have at most 128 characters"),
    ("page_result", "raw_text", "x" * (512 * 1024 + 1),
     "String should have at most 524288 characters"),
    ("progress", "message", "m" * 257, "String should have at most 256 characters"),
    ("cancel", "reason", "r" * 513, "String should have at most 512 characters"),
    ("dlq", "error_message", "m" * 4097, "String should have at most 4096 characters"),
    ("dlq", "task_id", "t" * 129, "String should have at most 128 characters"),
    ("dlq", "original_key_base64", "A" * (MAX_ORIGINAL_BASE64 + 4),
     f"String should have at most {MAX_ORIGINAL_BASE64} characters"),
    ("dlq", "original_value_base64", "A" * (MAX_ORIGINAL_BASE64 + 4),
     f"String should have at most {MAX_ORIGINAL_BASE64} characters"),
]
# The fields that identify an event: the task, or for a dead letter the original record.
ID_FIELDS = [
    ("request", "task_id"),
    ("page_result", "task_id"),
    ("progress", "task_id"),
    ("timing", "task_id"),
    ("dlq", "original_topic"),
    ("dlq", "original_partition"),
    ("dlq", "original_offset"),
    ("cancel", "task_id"),
    ("cancel", "action"),
]


def errors(model: type[BaseModel], payload: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(json.dumps(payload))
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors(include_url=False)]


def event(kind: str, **changes: Any) -> tuple[type[BaseModel], dict[str, Any]]:
    model, payload = VALID[kind]
    return model, {**payload, **changes}


@pytest.mark.parametrize("kind", KINDS)
def test_valid_event_round_trips_through_json(kind: str) -> None:
    model, payload = VALID[kind]
    parsed = model.model_validate_json(json.dumps(payload))
    assert model.model_validate_json(parsed.model_dump_json()) == parsed
    assert json.loads(parsed.model_dump_json())["schema_version"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_version_is_refused(kind: str) -> None:
    assert errors(*event(kind, schema_version=2)) == [(("schema_version",), VERSION_MESSAGE)]


@pytest.mark.parametrize("kind", KINDS)
def test_version_must_be_an_integer(kind: str) -> None:
    assert errors(*event(kind, schema_version="1")) == [
        (("schema_version",), "Input should be a valid integer")
    ]


@pytest.mark.parametrize(("kind", "field", "value", "message"), WRONG_TYPES)
def test_wrong_types_are_not_coerced(kind: str, field: str, value: Any, message: str) -> None:
    assert errors(*event(kind, **{field: value})) == [((field,), message)]


@pytest.mark.parametrize(("kind", "field", "value", "message"), OVERSIZED)
def test_oversized_fields_are_refused(kind: str, field: str, value: str, message: str) -> None:
    assert errors(*event(kind, **{field: value})) == [((field,), message)]


@pytest.mark.parametrize(("kind", "field"), ID_FIELDS)
def test_missing_ids_are_refused(kind: str, field: str) -> None:
    model, payload = VALID[kind]
    without = {k: v for k, v in payload.items() if k != field}
    assert errors(model, without) == [((field,), "Field required")]


@pytest.mark.parametrize("kind", [k for k, _ in ID_FIELDS if k != "dlq"])
@pytest.mark.parametrize("task_id", ["a/b", "", "-leading-dash", "x" * 129, "sp ace"])
def test_task_ids_that_cannot_be_keys_are_refused(kind: str, task_id: str) -> None:
    [(where, message)] = errors(*event(kind, task_id=task_id))
    assert where == ("task_id",)
    assert message in (
        TASK_ID_MESSAGE,
        "String should have at least 1 character",
        "String should have at most 128 characters",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_fields_are_refused(kind: str) -> None:
    assert errors(*event(kind, colour="blue")) == [(("colour",), "Extra inputs are not permitted")]


def test_request_source_needs_exactly_one_location() -> None:
    both = {"uri": "file:///srv/a.pdf", "inline_base64": "AA=="}
    message = "Value error, source needs exactly one of 'uri' or 'inline_base64'"
    assert errors(*event("request", source=both)) == [(("source",), message)]
    assert errors(*event("request", source={})) == [(("source",), message)]


def test_request_rules_across_fields() -> None:
    assert errors(*event("request", prompt="locate")) == [
        ((), "Value error, prompt 'locate' needs 'locate_text'")
    ]
    # Not a decoding rule (JSON Schema cannot compare two fields): the task fails instead,
    # tests/unit/test_render.py::test_a_reversed_range_fails_the_task.
    assert OcrRequest.model_validate({**VALID["request"][1], "pages": [{"first": 3, "last": 2}]})
    assert errors(*event("request", source={"uri": "file:///a", "sha256": "ABC"})) == [
        (("source", "sha256"), "String should match pattern '^[0-9a-f]{64}$'")
    ]


def test_metadata_stays_small() -> None:
    assert errors(*event("request", metadata={"k": "v" * 1025})) == [
        (("metadata",), "Value error, metadata value of 'k' has 1025 characters; at most 1024")
    ]
    assert errors(*event("progress", metadata={f"k{i}": i for i in range(33)})) == [
        (("metadata",), "Value error, metadata has 33 entries; at most 32")
    ]


def test_page_result_page_must_be_in_the_document() -> None:
    assert errors(*event("page_result", page=3, page_count=2)) == [
        ((), "Value error, page 3 is beyond page_count 2")
    ]


def test_page_result_boxes_have_four_numbers() -> None:
    blocks = [{"label": "text", "bbox_px": [0, 0, 10]}]
    assert errors(*event("page_result", blocks=blocks)) == [
        (("blocks", 0, "bbox_px"), "List should have at least 4 items after validation, not 3")
    ]


def test_final_statuses() -> None:
    assert {s for s in TaskStatus if s.is_final} == {
        TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED
    }


def test_progress_percent_and_eta_are_bounded() -> None:
    assert errors(*event("progress", percent=100.5)) == [
        (("percent",), "Input should be less than or equal to 100")
    ]
    assert errors(*event("progress", eta_s=-1.0)) == [
        (("eta_s",), "Input should be greater than or equal to 0")
    ]
    model, payload = event("progress", percent=41.7, eta_s=12.5, message="5 of 12 pages")
    parsed = model.model_validate_json(json.dumps(payload))
    assert (parsed.percent, parsed.eta_s, parsed.message) == (41.7, 12.5, "5 of 12 pages")


ARTIFACT = {
    "uri": "s3://ocr-artifacts/figures/doc-1/page-1-fig-1.png", "media_type": "image/png",
    "bytes": 2048, "width_px": 300, "height_px": 200,
}


def test_figure_blocks_and_page_images_carry_artifacts() -> None:
    figure = {"label": "image", "bbox_px": [0, 0, 300, 200], "artifact": ARTIFACT}
    image = {**VALID["page_result"][1]["image"], "artifact": {**ARTIFACT, "uri": "file:///a"}}
    model, payload = event("page_result", blocks=[figure], image=image, raw_text="<|ref|>")
    parsed = model.model_validate_json(json.dumps(payload))
    assert isinstance(parsed, PageResult)
    assert parsed.blocks[0].artifact is not None
    assert parsed.blocks[0].artifact.uri == ARTIFACT["uri"]
    assert parsed.raw_text == "<|ref|>"
    assert errors(*event("page_result", blocks=[{**figure, "artifact": {**ARTIFACT, "uri": ""}}]))[
        0
    ] == (("blocks", 0, "artifact", "uri"), "String should have at least 1 character")


# --- decode_request: every refusal has its own code ------------------------------------------


def refusal(raw: bytes | None, max_bytes: int = 1024 * 1024) -> RequestDecodeError:
    with pytest.raises(RequestDecodeError) as info:
        decode_request(raw, max_bytes=max_bytes)
    return info.value


def test_decode_accepts_a_valid_request() -> None:
    request = decode_request(json.dumps(VALID["request"][1]).encode())
    assert request.task_id == "doc-1" and request.dpi == 144


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        (b"\xff\xfe{}", ErrorCode.REQUEST_NOT_UTF8, "request is not UTF-8 (byte 0)"),
        (b'{"task_id": "\xe9"}', ErrorCode.REQUEST_NOT_UTF8, "request is not UTF-8 (byte 13)"),
        (b"not json", ErrorCode.REQUEST_NOT_JSON, "request is not JSON: Expecting value at char 0"),
        (b"[1, 2]", ErrorCode.REQUEST_INVALID, "request must be a JSON object, got list"),
        (b'"text"', ErrorCode.REQUEST_INVALID, "request must be a JSON object, got str"),
        (None, ErrorCode.REQUEST_INVALID, "record has no value (tombstone)"),
    ],
)
def test_decode_refusals(raw: bytes | None, code: ErrorCode, message: str) -> None:
    error = refusal(raw)
    assert (error.code, error.message, error.task_id) == (code, message, None)


def test_decode_refuses_too_large_before_reading() -> None:
    error = refusal(b"\xff" * 2000, max_bytes=1024)  # not UTF-8 either: size is checked first
    assert error.code is ErrorCode.REQUEST_TOO_LARGE
    assert error.message == (
        "request is 2000 bytes; the limit is 1024: send large documents by URI "
        "(claim check), not inline"
    )


def test_decode_refuses_unsupported_version_and_keeps_the_task_id() -> None:
    error = refusal(b'{"schema_version": 9, "task_id": "v9"}')
    assert error.code is ErrorCode.REQUEST_UNSUPPORTED_VERSION
    assert error.message == "schema_version 9 is not supported; this consumer speaks 1"
    assert error.task_id == "v9"


def test_decode_keeps_no_task_id_longer_than_a_task_id() -> None:
    error = refusal(b'{"task_id": "%s", "dpi": 10}' % (b"x" * 129))
    assert error.code is ErrorCode.REQUEST_INVALID and error.task_id is None
    assert refusal(b'{"task_id": "%s", "dpi": 10}' % (b"x" * 128)).task_id == "x" * 128


# -- decode_record: a record with `action` is a control record -----------------------------


def test_a_record_with_an_action_is_a_control_record() -> None:
    cancel = decode_record(b'{"action": "cancel", "task_id": "doc-1", "reason": "oops"}')
    assert isinstance(cancel, CancelRequest)
    assert (cancel.task_id, cancel.reason) == ("doc-1", "oops")
    request = decode_record(json.dumps(VALID["request"][1]).encode())
    assert isinstance(request, OcrRequest)


@pytest.mark.parametrize(
    ("raw", "message", "task_id"),
    [
        (b'{"action": "pause", "task_id": "doc-1"}',
         "action 'pause' is not one this consumer knows (cancel); a request names no action",
         "doc-1"),
        (b'{"action": null, "task_id": "doc-1"}',
         "action None is not one this consumer knows (cancel); a request names no action",
         "doc-1"),
        (b'{"action": "cancel"}', "task_id: Field required", None),
        (b'{"action": "cancel", "task_id": "a", "force": true}',
         "force: Extra inputs are not permitted", "a"),
    ],
)
def test_control_record_refusals(raw: bytes, message: str, task_id: str | None) -> None:
    with pytest.raises(RequestDecodeError) as refused:
        decode_record(raw)
    assert (refused.value.code, refused.value.message, refused.value.task_id) == (
        ErrorCode.REQUEST_INVALID, message, task_id,
    )


def test_decode_request_refuses_a_control_record() -> None:
    error = refusal(b'{"action": "cancel", "task_id": "doc-1"}')
    assert (error.code, error.task_id) == (ErrorCode.REQUEST_INVALID, "doc-1")
    assert error.message == "record is a control record (action 'cancel'), not a request"


@given(
    st.dictionaries(
        st.sampled_from(["action", "task_id", "reason", "schema_version", "source"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=20)
        | st.sampled_from(["cancel", "doc-1"]),
    )
)
def test_any_object_decodes_to_a_request_a_control_record_or_a_refusal(
    document: dict[str, Any],
) -> None:
    raw = json.dumps(document).encode()
    try:
        decoded = decode_record(raw)
    except RequestDecodeError:
        return
    assert isinstance(decoded, CancelRequest) == ("action" in document)


# -- dead letters hold at most one request record ------------------------------------------


def test_a_dead_letter_holds_the_largest_request_record() -> None:
    # The requests topic that ocr-topics creates takes records of up to this size.
    assert REQUEST_RECORD_BYTES == MAX_REQUEST_RECORD_BYTES
    for size in (MAX_REQUEST_RECORD_BYTES - 2, MAX_REQUEST_RECORD_BYTES - 1,
                 MAX_REQUEST_RECORD_BYTES):
        encoded = base64.b64encode(b"\xff" * size).decode()
        assert len(encoded) <= MAX_ORIGINAL_BASE64
    model, payload = event("dlq", original_value_base64=encoded, original_key_base64=encoded,
                           task_id="t" * 128)
    assert model.model_validate_json(json.dumps(payload))


def envelope(**changes: Any) -> DlqEnvelope:
    values: dict[str, Any] = {
        "code": ErrorCode.REQUEST_TOO_LARGE, "message": "request is too large",
        "topic": "ocr.requests", "partition": 1, "offset": 2, "timestamp_ms": None,
        "key": b"k", "value": b"{}", "task_id": None, "consumer_id": "ocr-stream/c1",
    }
    return dead_letter_envelope(**{**values, **changes})


def test_a_dead_letter_keeps_the_record_whole_when_it_fits() -> None:
    value = b"x" * MAX_REQUEST_RECORD_BYTES
    made = envelope(value=value, task_id="t" * 128)
    assert base64.b64decode(made.original_value_base64) == value
    assert made.error_message == "request is too large" and made.task_id == "t" * 128


def test_a_record_beyond_the_bound_is_cut_and_the_message_says_so() -> None:
    # Only a requests topic configured beyond what ocr-topics sets can deliver this; the
    # envelope must still be valid, or its offset would never finish.
    value = b"y" * (MAX_REQUEST_RECORD_BYTES + 10)
    key = b"k" * (MAX_REQUEST_RECORD_BYTES + 1)
    made = envelope(value=value, key=key, message="m" * 5000, task_id="t" * 129)
    assert base64.b64decode(made.original_value_base64) == value[:MAX_REQUEST_RECORD_BYTES]
    assert made.original_key_base64 is not None
    kept_key = len(base64.b64decode(made.original_key_base64))
    assert made.task_id is None
    assert len(made.error_message) == 4096
    assert made.error_message.endswith(
        f"[dead letter: key cut to its first {kept_key} of {MAX_REQUEST_RECORD_BYTES + 1} "
        f"bytes; value cut to its first {MAX_REQUEST_RECORD_BYTES} of "
        f"{MAX_REQUEST_RECORD_BYTES + 10} bytes]"
    )
    assert DlqEnvelope.model_validate_json(made.model_dump_json()) == made


def dlq_record_bytes(made: DlqEnvelope, key: bytes | None) -> int:
    """What the DLQ record weighs: its key, the envelope, and (at most) its headers."""
    record_key = dead_letter_key(made.task_id, key, made.original_partition,
                                 made.original_offset).encode()
    return len(record_key) + len(made.model_dump_json().encode()) + 4096


@pytest.mark.parametrize(("key_bytes", "value_bytes"), [
    (1_900_000, MAX_REQUEST_RECORD_BYTES),  # issue 16, defect 2: 6.5 MB before
    (MAX_REQUEST_RECORD_BYTES, MAX_REQUEST_RECORD_BYTES),
    (MAX_REQUEST_RECORD_BYTES + 10**6, 0),
    (0, MAX_REQUEST_RECORD_BYTES + 10**6),
    (3, 3),
])
def test_a_dead_letter_record_fits_what_the_dlq_topic_takes(
    key_bytes: int, value_bytes: int
) -> None:
    key, value = b"\xfe" * key_bytes, b"\xff" * value_bytes
    made = envelope(key=key, value=value, code=ErrorCode.REQUEST_NOT_UTF8)
    assert dlq_record_bytes(made, key) <= MAX_DLQ_RECORD_BYTES < LARGE_RECORD_BYTES
    # The value is kept whole whenever a request record can hold it.
    kept = base64.b64decode(made.original_value_base64)
    assert kept == value[:MAX_REQUEST_RECORD_BYTES]
    assert DlqEnvelope.model_validate_json(made.model_dump_json()) == made


def test_a_dead_letter_key_is_the_task_id_or_a_bounded_original_key() -> None:
    assert dead_letter_key("t-1", b"x" * 10, 1, 2) == "t-1"
    assert dead_letter_key(None, b"x" * 10_000, 1, 2) == "x" * MAX_DLQ_KEY_CHARS
    assert dead_letter_key(None, None, 1, 2) == "1:2"


def test_a_timestamp_no_datetime_holds_is_left_out() -> None:
    """Issue 16, defect 9: a far-future record timestamp ended the task INTERNAL."""
    assert envelope(timestamp_ms=2**62).original_timestamp is None
    assert envelope(timestamp_ms=253_402_300_800_000).original_timestamp is None


def test_decode_describes_invalid_fields() -> None:
    error = refusal(b'{"task_id": "a", "dpi": 10}')
    assert error.code is ErrorCode.REQUEST_INVALID
    assert error.message == (
        "source: Field required; dpi: Input should be greater than or equal to 36"
    )
    assert error.task_id == "a"


def test_decode_caps_the_list_of_problems() -> None:
    payload = {f"x{i}": i for i in range(10)} | {"task_id": "a"}
    error = refusal(json.dumps(payload).encode())
    assert error.message.count("Extra inputs are not permitted") == 7
    assert error.message.endswith("; ... and 3 more")


# --- committed JSON Schema / AsyncAPI ----------------------------------------------------------


def test_committed_schema_files_match_the_models() -> None:
    assert export.main(["--check"]) == 0


# --- CloudEvents -----------------------------------------------------------------------------


def test_cloudevents_headers_round_trip() -> None:
    when = datetime(2026, 11, 24, 10, 0, 0, 123000, tzinfo=UTC)
    headers = ce_headers(
        event_id="doc-1/1/0", event_type=CE_TYPE_RESULT, source="ocr-stream/c1",
        subject="doc-1", time=when,
    )
    as_dict = dict(headers)
    assert as_dict["ce_specversion"] == b"1.0"
    assert as_dict["ce_time"] == b"2026-11-24T10:00:00.123000Z"
    assert as_dict["content-type"] == b"application/json"
    parsed = parse_ce_headers(tuple(headers))  # aiokafka hands headers over as a tuple
    assert (parsed.id, parsed.type, parsed.source, parsed.subject, parsed.time) == (
        "doc-1/1/0", CE_TYPE_RESULT, "ocr-stream/c1", "doc-1", when,
    )
    assert parse_ce_headers(ce_headers(event_id="x", event_type="t", source="s")).subject is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ce_id": None, "ce_time": None}, "missing CloudEvents headers: ce_id, ce_time"),
        ({"ce_specversion": b"0.3"}, "ce_specversion '0.3' is not '1.0'"),
        ({"ce_time": b"yesterday"}, "ce_time 'yesterday' is not RFC 3339"),
    ],
)
def test_cloudevents_header_errors(change: dict[str, bytes | None], message: str) -> None:
    headers = dict(ce_headers(event_id="x", event_type="t", source="s"))
    for key, value in change.items():
        if value is None:
            del headers[key]
        else:
            headers[key] = value
    with pytest.raises(CloudEventHeaderError) as info:
        parse_ce_headers(list(headers.items()))
    assert str(info.value) == message


# --- page ranges ---------------------------------------------------------------------------


def test_parse_page_ranges() -> None:
    assert parse_page_ranges("1-3,5, 9 - ") == [
        PageRange(first=1, last=3), PageRange(first=5, last=5), PageRange(first=9),
    ]
    assert parse_page_ranges("7") == [PageRange(first=7, last=7)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1-3,x", "bad page range item 'x': use N, N-M or N-"),
        ("", "bad page range item '': use N, N-M or N-"),
        ("1,,2", "bad page range item '': use N, N-M or N-"),
        ("-4", "bad page range item '-4': use N, N-M or N-"),
        ("5-2", "page range 5-2 ends before it starts"),
        ("0", "Input should be greater than or equal to 1"),
    ],
)
def test_parse_page_ranges_refusals(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_page_ranges(text)
    assert message in str(info.value)


@given(
    st.lists(
        st.tuples(st.integers(1, 10_000), st.one_of(st.none(), st.integers(0, 10_000))),
        min_size=1, max_size=20,
    )
)
def test_parse_page_ranges_round_trips(items: list[tuple[int, int | None]]) -> None:
    ranges = [PageRange(first=f, last=None if extra is None else f + extra) for f, extra in items]
    text = ",".join(f"{r.first}-{'' if r.last is None else r.last}" for r in ranges)
    assert parse_page_ranges(text) == ranges


# --- the exported JSON Schema agrees with the models (a validator we did not write) ---------

# (kind, changes) that the models refuse; the committed JSON Schema must refuse them too.
SCHEMA_REFUSALS = [
    ("cancel", {"action": "stop"}),
    ("cancel", {"task_id": "a/b"}),
    ("cancel", {"source": {"uri": "file:///a"}}),
    ("request", {"action": "cancel"}),
    ("progress", {"percent": 100.1}),
    ("progress", {"status": "cancelled", "eta_s": -0.5}),
    ("page_result", {"blocks": [{"label": "image", "bbox_px": [0, 0, 1, 1],
                                 "artifact": {**ARTIFACT, "bytes": -1}}]}),
]


def committed_validator(kind: str) -> Any:
    import jsonschema

    schema = json.loads((export.JSON_DIR / f"{kind}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("kind", KINDS)
def test_json_schema_accepts_the_valid_events(kind: str) -> None:
    extras: dict[str, dict[str, Any]] = {
        "progress": {"status": "cancelled", "percent": 41.7, "eta_s": None, "message": "m"},
        "page_result": {"raw_text": "<|ref|>x<|/ref|>", "blocks": [
            {"label": "image", "bbox_px": [0, 0, 1, 1], "artifact": ARTIFACT}]},
    }
    extra = extras.get(kind, {})
    model, payload = event(kind, **extra)
    model.model_validate_json(json.dumps(payload))
    assert list(committed_validator(kind).iter_errors(payload)) == []


@pytest.mark.parametrize(("kind", "changes"), SCHEMA_REFUSALS)
def test_json_schema_refuses_what_the_models_refuse(kind: str, changes: dict[str, Any]) -> None:
    model, payload = event(kind, **changes)
    with pytest.raises(ValidationError):
        model.model_validate_json(json.dumps(payload))
    assert list(committed_validator(kind).iter_errors(payload)) != []


def test_asyncapi_lists_the_cancel_record_on_the_requests_channel() -> None:
    document = export.asyncapi_document()
    assert set(document["channels"]["request"]["messages"]) == {"Request", "Cancel"}
    cancel = document["components"]["messages"]["Cancel"]
    assert cancel["payload"] == {"$ref": "./json/cancel.schema.json"}
    assert cancel["title"] == "CancelRequest"


# -- CloudEvents extension and trace context (issue 15, item 6: the contract's side) -------

PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_consumer_extension_is_a_valid_cloudevents_attribute_name() -> None:
    from schemas.cloudevents import CE_EXTENSION_CONSUMER, EXTENSION_NAME

    assert EXTENSION_NAME.fullmatch(CE_EXTENSION_CONSUMER)
    headers = ce_headers(event_id="t/1/0", event_type=CE_TYPE_RESULT, source="ocr-stream/prod",
                         extensions={CE_EXTENSION_CONSUMER: "host-7"})
    assert ("ce_ocrconsumer", b"host-7") in headers
    for bad in ("consumer_id", "Consumer", "a" * 21, ""):
        with pytest.raises(ValueError, match="lower-case letters or digits"):
            ce_headers(event_id="i", event_type="t", source="s", extensions={bad: "x"})


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ([("traceparent", PARENT), ("tracestate", b"vendor=abc"), ("x", b"y")],
         [("traceparent", PARENT), ("tracestate", b"vendor=abc")]),
        ([("TraceParent", PARENT)], [("traceparent", PARENT)]),
        ([("tracestate", b"vendor=abc")], []),  # no parent: nothing to continue
        ([("traceparent", PARENT.upper())], []),  # W3C: lower-case hex only
        ([("traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")], []),  # invalid id
        ([("traceparent", b"\xff\xfe")], []),
        ([("traceparent", PARENT), ("tracestate", b"k=" + b"v" * 600)], [("traceparent", PARENT)]),
        ([], []),
    ],
)
def test_trace_context_passes_on_only_valid_w3c_headers(
    headers: list[tuple[str, bytes]], kept: list[tuple[str, bytes]]
) -> None:
    from schemas.cloudevents import trace_context

    assert trace_context(headers) == kept


# -- ce_source: a URI-reference (RFC 3986), checked against a validator we did not write ----

URI_ALPHABET = "aZ09-._~!$&'()*+,;=:@/?#[]%eF é\\\"<>{}|^`"


def _standard_uri_reference(value: str) -> bool:
    from rfc3986_validator import validate_rfc3986  # jsonschema's "uri-reference" checker

    return bool(value) and bool(validate_rfc3986(value, rule="URI_reference"))


@given(st.text(alphabet=URI_ALPHABET, max_size=40))
def test_the_source_check_agrees_with_a_standard_validator(value: str) -> None:
    from schemas.cloudevents import is_source

    assert is_source(value) == _standard_uri_reference(value), value


@given(st.text(alphabet="0123456789abcdefABCDEF:.v", max_size=45),
       st.sampled_from(["http://[{}]/x", "//[{}]:80", "urn:x#[{}]"]))
def test_the_source_check_agrees_on_ip_literals(inner: str, shape: str) -> None:
    from schemas.cloudevents import is_source

    value = shape.format(inner)
    assert is_source(value) == _standard_uri_reference(value), value


@given(st.ip_addresses(v=6))
def test_every_ipv6_address_is_a_host(address: Any) -> None:
    from schemas.cloudevents import is_source

    assert is_source(f"https://[{address.compressed}]:8443/ocr")
    assert is_source(f"https://[{address.exploded}]/")


@given(st.text(max_size=60))
def test_the_default_source_of_any_group_is_valid(group_id: str) -> None:
    from schemas.cloudevents import deployment_source, is_source

    source = deployment_source(group_id)
    assert is_source(source) and source.startswith("ocr-stream/")
