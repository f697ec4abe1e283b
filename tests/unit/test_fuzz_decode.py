"""Fuzzing the request decoder (and the grounding parser on raw engine bytes).

`decode_request` (through `decode_record`, which it wraps and the consumer loop calls, so
fuzzing one covers both) sits in the consumer loop's hot path: whatever it raises besides
RequestDecodeError escapes the loop and kills the consumer, and because the record is then
never committed, every consumer that reads it next dies too. So the property is absolute:
for any bytes, it returns an OcrRequest or raises RequestDecodeError. And what it accepts
must survive the consumer's own serialisation (replays republish requests; results echo
their metadata): re-serialised, it decodes to an equal request.
"""

from __future__ import annotations

import json
import math
import os
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from consumer.postprocess.grounding import parse_boxes, parse_grounded, strip_tags
from schemas.common import ErrorCode
from schemas.decode import MAX_REQUEST_BYTES, RequestDecodeError, decode_request
from schemas.request import MAX_INLINE_BASE64, OcrRequest, PromptKind

# FUZZ_EXAMPLES=5000 for a longer hunt than `make test` affords.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def decode_or_refuse(raw: bytes | None, max_bytes: int = MAX_REQUEST_BYTES) -> OcrRequest | None:
    """The property itself: a request, or a coded refusal; anything else fails the test."""
    try:
        request = decode_request(raw, max_bytes=max_bytes)
    except RequestDecodeError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert exc.message
        assert exc.task_id is None or isinstance(exc.task_id, str)
        return None
    assert isinstance(request, OcrRequest)
    assert all(math.isfinite(v) for v in request.metadata.values() if isinstance(v, float))
    assert_round_trips(request)
    return request


def assert_round_trips(request: OcrRequest) -> None:
    encoded = request.model_dump_json().encode()
    again = decode_request(encoded, max_bytes=max(len(encoded), MAX_REQUEST_BYTES))
    assert again == request
    assert again.content_fingerprint() == request.content_fingerprint()
    # The same through plain json (what a non-pydantic producer would write).
    plain = json.dumps(request.model_dump(mode="json")).encode()
    assert decode_request(plain, max_bytes=max(len(plain), MAX_REQUEST_BYTES)) == request


# -- strategies ---------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=20,
)
TASK_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,40}", fullmatch=True)
METADATA_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
)
# RFC 3339 needs an offset: a naive time is refused (test_request_contract.py).
TIMEZONES = st.one_of(
    st.just(UTC),
    st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)


@st.composite
def sources(draw: st.DrawFn) -> dict[str, Any]:
    source: dict[str, Any] = {}
    if draw(st.booleans()):
        source["uri"] = draw(st.one_of(
            st.just("file:///srv/ocr-blobs/a.pdf"),
            st.text(min_size=1, max_size=60).map(lambda t: "https://example.com/" + t),
            st.text(max_size=60),
        ))
    else:
        source["inline_base64"] = draw(st.from_regex(r"[A-Za-z0-9+/]{0,64}={0,2}",
                                                     fullmatch=True))
    if draw(st.booleans()):
        source["sha256"] = draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
    if draw(st.booleans()):
        source["media_type"] = draw(st.sampled_from(
            ["application/pdf", "image/png", "application/octet-stream", "text/plain"]
        ))
    if draw(st.booleans()):
        source["filename"] = draw(st.text(max_size=30))
    return source


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Request documents that must be accepted."""
    body: dict[str, Any] = {"task_id": draw(TASK_IDS), "source": draw(sources())}
    if draw(st.booleans()):
        body["schema_version"] = 1
    if draw(st.booleans()):
        ranges = []
        for _ in range(draw(st.integers(0, 4))):
            first = draw(st.integers(1, 1000))
            last = draw(st.one_of(st.none(), st.integers(first, 2000)))
            ranges.append({"first": first} if last is None and draw(st.booleans())
                          else {"first": first, "last": last})
        body["pages"] = ranges
    prompt = draw(st.sampled_from([None, *PromptKind]))
    if prompt is not None:
        body["prompt"] = prompt.value
    if prompt is PromptKind.LOCATE or draw(st.booleans()):
        body["locate_text"] = draw(st.text(min_size=1, max_size=40))
    if draw(st.booleans()):
        body["dpi"] = draw(st.integers(36, 600))
    if draw(st.booleans()):
        body["force"] = draw(st.booleans())
    if draw(st.booleans()):
        body["attempt"] = draw(st.integers(0, 1_000_000))
    if draw(st.booleans()):
        body["metadata"] = draw(st.dictionaries(st.text(max_size=16), METADATA_VALUES,
                                                max_size=8))
    if draw(st.booleans()):
        moment = draw(st.datetimes(min_value=datetime(1970, 1, 2),
                                   max_value=datetime(2200, 1, 1), timezones=TIMEZONES))
        body["submitted_at"] = moment.isoformat()
    return body


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a JSON document."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def _replace(document: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[head] = _replace(document[head], rest, new)  # type: ignore[index]
    return copy


def _delete(document: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        copy = dict(document) if isinstance(document, dict) else list(document)
        del copy[path[0]]  # type: ignore[arg-type]
        return copy
    return _replace(document, path[:1], _delete(document[path[0]], path[1:]))


TRICKY_VALUES = st.sampled_from([
    None, True, 0, -1, 1.0, 1.5, 2**63, -(2**63) - 1, "", " ", "0", "null", "\x00",
    "a" * 600, "ﾠ", "\u202e", [], {}, [None], {"": None}, 10**400,
])


@st.composite
def mutated_requests(draw: st.DrawFn) -> Any:
    """A valid request with a few random edits: replace, delete or add anywhere."""
    document: Any = draw(valid_requests())
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            document = _replace(document, path, draw(st.one_of(TRICKY_VALUES, JSON_VALUES)))
        elif action == "delete" and path:
            document = _delete(document, path)
        else:
            target = document
            for step in path:
                target = target[step]
            if isinstance(target, dict):
                key = draw(st.one_of(st.sampled_from(["task_id", "uri", "extra", "schema_version",
                                                      "inline_base64", "metadata"]),
                                     st.text(max_size=8)))
                document = _replace(document, path,
                                    {**target, key: draw(st.one_of(TRICKY_VALUES, JSON_VALUES))})
    return document


# -- the decoder --------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048), st.integers(1, 4096))
@example(b"", 10)
@example(b"[" * 30_000, MAX_REQUEST_BYTES)
@example(b'{"a":' * 5_000, MAX_REQUEST_BYTES)
@example(b"\xef\xbb\xbf{}", 100)  # a UTF-8 byte order mark
@example(b'{"a": ' + b"9" * 5000 + b"}", MAX_REQUEST_BYTES)  # int() refuses > 4,300 digits
@example(b"\x00\x00\x00\x00\x01{}", 100)  # Schema Registry framing
@example(b'"\\ud800"', 100)  # a lone surrogate, escaped
def test_arbitrary_bytes(raw: bytes, max_bytes: int) -> None:
    decode_or_refuse(raw, max_bytes)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_unicode(text: str) -> None:
    decode_or_refuse(text.encode("utf-8"))
    # Lone surrogates written raw (not escaped) are invalid UTF-8 on the wire.
    decode_or_refuse(text.encode("utf-8", "surrogatepass") + b"\xed\xa0\x80")


@FUZZ
@given(JSON_VALUES)
def test_arbitrary_json_values(value: Any) -> None:
    assert decode_or_refuse(json.dumps(value).encode()) is None or isinstance(value, dict)


@FUZZ
@given(valid_requests())
def test_valid_requests_are_accepted_and_round_trip(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    request = decode_or_refuse(raw)
    assert request is not None, body
    assert request.task_id == body["task_id"]


@FUZZ
@given(mutated_requests())
def test_mutated_requests(document: Any) -> None:
    decode_or_refuse(json.dumps(document).encode())


@FUZZ
@given(valid_requests(), st.data())
def test_byte_level_mutations(body: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(json.dumps(body, ensure_ascii=data.draw(st.booleans())).encode())
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(raw)))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip" and position < len(raw):
            raw[position] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            raw[position:position] = data.draw(st.sampled_from(
                [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\x00", b"\xff", b"NaN",
                 b"1e999", b"null", b" "]
            ))
        elif kind == "delete" and position < len(raw):
            del raw[position]
        elif kind == "truncate":
            del raw[position:]
    decode_or_refuse(bytes(raw))


# -- hostile JSON: valid syntax or nearly, built to break parsers (issue 16) ------------

HOSTILE_PIECES = st.one_of(
    st.integers(300, 6000).map(lambda n: "9" * n),  # Python's int() stops at 4,300 digits
    st.integers(300, 6000).map(lambda n: "-" + "1" * n + ".5e" + "9" * 4),
    st.sampled_from(["NaN", "-Infinity", "1e999", "-0", "0.0e-99999", "1E+2", "true"]),
    st.sampled_from(['"\\ud800"', '"\\udc00\\ud800"', '"\\u0000"', '"\\x"', '"\u2028"']),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.just('{"k": 1, "k": 2}'),
    JSON_VALUES.map(json.dumps),
)
FIELDS = st.sampled_from(
    ["task_id", "source", "uri", "dpi", "attempt", "pages", "first", "last", "metadata",
     "schema_version", "submitted_at", "prompt", "locate_text", "force", "k"]
)


@st.composite
def hostile_json(draw: st.DrawFn) -> bytes:
    """A request-shaped object whose values (at any depth) are hostile pieces."""
    def value(depth: int) -> str:
        if depth > 2 or draw(st.booleans()):
            return draw(HOSTILE_PIECES)
        members = [f'"{draw(FIELDS)}": {value(depth + 1)}' for _ in range(draw(st.integers(0, 4)))]
        return "{" + ", ".join(members) + "}"

    members = [f'"{draw(FIELDS)}": {value(0)}' for _ in range(draw(st.integers(1, 6)))]
    text = "{" + ", ".join(members) + "}"
    prefix = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf", b"\x00\x00\x00\x00\x02"]))
    return prefix + text.encode("utf-8", "surrogatepass")


@FUZZ
@given(hostile_json())
@example(b'{"task_id": "n", "source": {"uri": "file:///a"}, "metadata": {"k": '
         + b"7" * 5000 + b"}}")
def test_hostile_json(raw: bytes) -> None:
    decode_or_refuse(raw)


def test_a_5000_digit_integer_is_a_coded_refusal() -> None:
    """Issue 16: json.loads raised a plain ValueError, which crash-looped the consumer."""
    raw = b'{"task_id": "n", "source": {"uri": "file:///a"}, "dpi": ' + b"1" * 5000 + b"}"
    with pytest.raises(RequestDecodeError) as caught:
        decode_request(raw)
    assert caught.value.code is ErrorCode.REQUEST_INVALID
    assert "5000 digits" in caught.value.message and "string" in caught.value.message


def test_an_unforeseen_parser_error_is_still_a_coded_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever a parser raises, the loop gets a RequestDecodeError, never the exception."""

    def broken(*args: object, **kwargs: object) -> object:
        raise LookupError("a failure nobody listed")

    monkeypatch.setattr(OcrRequest, "model_validate_json", broken)
    raw = b'{"task_id": "n", "source": {"uri": "file:///a"}}'
    with pytest.raises(RequestDecodeError) as caught:
        decode_request(raw)
    assert caught.value.code is ErrorCode.REQUEST_INVALID
    assert "LookupError: a failure nobody listed" in caught.value.message


def test_schema_registry_framing_has_its_own_code() -> None:
    raw = b"\x00\x00\x00\x01\x00" + b'{"task_id": "n", "source": {"uri": "file:///a"}}'
    with pytest.raises(RequestDecodeError) as caught:
        decode_request(raw)
    assert caught.value.code is ErrorCode.REQUEST_SCHEMA_REGISTRY_FRAMED
    assert "schema id 256" in caught.value.message
    assert "StringSerializer" in caught.value.message


def test_a_duplicate_member_is_refused() -> None:
    with pytest.raises(RequestDecodeError) as caught:
        decode_request(b'{"task_id": "a", "task_id": "b", "source": {"uri": "file:///a"}}')
    assert caught.value.code is ErrorCode.REQUEST_NOT_JSON
    assert "'task_id' twice" in caught.value.message


@given(st.integers(1, 200_000), st.sampled_from([b"[", b'{"a":', b'{"metadata":[']))
@settings(max_examples=40, deadline=None)
def test_deep_nesting_is_refused_not_crashed(depth: int, opener: bytes) -> None:
    raw = opener * depth
    assume(len(raw) <= 1024 * 1024)
    with pytest.raises(RequestDecodeError):
        decode_request(raw)


def test_size_limit_is_checked_before_parsing() -> None:
    raw = b" " * (MAX_INLINE_BASE64 + 10) + b"{"
    with pytest.raises(RequestDecodeError) as caught:
        decode_request(raw, max_bytes=1024)
    assert caught.value.code is ErrorCode.REQUEST_TOO_LARGE


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_metadata_is_refused(number: str) -> None:
    """Echoed back as null, such a value would not round-trip: refused, naming the key."""
    raw = (
        '{"task_id": "nan-1", "source": {"uri": "file:///srv/ocr-blobs/a.pdf"}, '
        f'"metadata": {{"ok": 1.5, "score": {number}}}}}'
    ).encode()
    with pytest.raises(RequestDecodeError) as caught:
        decode_request(raw)
    assert caught.value.code is ErrorCode.REQUEST_INVALID
    assert "score" in caught.value.message and "string" in caught.value.message


def test_finite_metadata_round_trips() -> None:
    raw = (
        b'{"task_id": "num-1", "source": {"uri": "file:///srv/ocr-blobs/a.pdf"}, '
        b'"metadata": {"score": 1e300, "small": -2.5e-300}}'
    )
    request = decode_request(raw)
    assert request.metadata == {"score": 1e300, "small": -2.5e-300}
    assert_round_trips(request)


# -- the grounding parser on raw engine bytes ---------------------------------------------
# test_grounding.py fuzzes with tag fragments and short text; engines hand over whatever
# the detokeniser made of the bytes, replacement characters included, and long outputs.

TAG_BYTES = [s.encode() for s in ["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "[[",
                                   "]]", ", ", "<｜end▁of▁sentence｜>", "＜｜", "｜＞"]]


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(TAG_BYTES)), max_size=60))
def test_grounding_parser_on_raw_bytes(pieces: list[bytes]) -> None:
    raw = b"".join(pieces).decode("utf-8", errors="replace")
    for span in parse_grounded(raw):
        for x1, y1, x2, y2 in span.boxes:
            assert 0 <= x1 <= x2 <= 999 and 0 <= y1 <= y2 <= 999
        assert strip_tags(span.text) == span.text


@FUZZ
@given(st.text(alphabet=string.digits + string.punctuation + " ,.eE+-\u00a0\uff10\uff0c",
               max_size=200))
def test_box_parser_on_number_soup(det: str) -> None:
    for box in parse_boxes(det):
        assert all(0 <= value <= 999 for value in box)
