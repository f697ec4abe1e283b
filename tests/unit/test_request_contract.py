"""The JSON Schema is the contract: a standard validator and our decoder agree on requests.

A producer in Java, Go or JavaScript checks its requests against `schemas/json/` with its
own validator, never with our decoder; a request that one accepts and the other refuses is
either dead-lettered although its producer validated it, or accepted although the contract
says it is wrong. So one corpus goes through both, the `jsonschema` package (with format
assertion on, as the 2020-12 format-assertion vocabulary allows) on the value read as
I-JSON (RFC 7493: UTF-8, no duplicate names, no lone surrogates, no NaN), and
`decode_request`; they must give the same verdict on every entry.

What no JSON Schema can say is outside this comparison and said in the schema instead: the
record size limit (OCR_MAX_REQUEST_BYTES, checked before parsing) and the order of a page
range's ends (a reversed range fails its task, test_render.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator

from schemas.decode import RequestDecodeError, decode_request
from schemas.export import JSON_DIR, JSON_SCHEMA_DIALECT, schema_id
from tests.unit.test_fuzz_decode import mutated_requests, valid_requests

README = Path(__file__).resolve().parents[2] / "README.md"
SCHEMA = json.loads((JSON_DIR / "request.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)

URI = {"uri": "file:///srv/ocr-blobs/a.pdf"}
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def body(**fields: Any) -> bytes:
    return json.dumps({"task_id": "doc-1", "source": URI, **fields}).encode()


def raw_body(members: str) -> bytes:
    """A request written by hand, for what json.dumps cannot write (duplicates, NaN)."""
    return ('{"task_id": "doc-1", "source": {"uri": "file:///a.pdf"}, ' + members + "}").encode()


# (name, record value, True when the contract accepts it). The verdict column is what the
# contract means; the test checks both validators against it, so a rule that both forgot
# also fails here.
CORPUS: list[tuple[str, bytes, bool]] = [
    # -- accepted ----------------------------------------------------------------------
    ("minimal uri", body(), True),
    ("minimal inline", json.dumps({"task_id": "t", "source": {"inline_base64": "JVBE"}}).encode(),
     True),
    ("every field", body(
        schema_version=1, pages=[{"first": 1, "last": 3}, {"first": 7}], prompt="markdown",
        dpi=200, force=True, attempt=2, metadata={"tenant": "acme", "n": 3, "ok": True,
                                                  "x": None, "f": 1.5},
        submitted_at="2026-11-24T10:00:00Z",
        source={**URI, "sha256": SHA, "media_type": "application/pdf", "filename": "a.pdf"},
    ), True),
    ("the other location null", body(source={**URI, "inline_base64": None}), True),
    ("locate with its text", body(prompt="locate", locate_text="Total"), True),
    ("locate_text without locate", body(prompt="ocr", locate_text="Total"), True),
    ("open-ended range", body(pages=[{"first": 4}, {"first": 9, "last": None}]), True),
    ("reversed range: the task fails, not the decoding", body(pages=[{"first": 5, "last": 2}]),
     True),
    ("no page ranges: the task fails, not the decoding", body(pages=[]), True),
    ("integral float for an integer", body(dpi=144.0, attempt=1e2), True),
    ("schema_version 1.0", body(schema_version=1.0), True),
    ("offset and fraction", body(submitted_at="2026-11-24T10:00:00.123456789+05:30"), True),
    ("lower-case t and z", body(submitted_at="2026-11-24t10:00:00z"), True),
    ("32 metadata entries", body(metadata={f"k{i}": i for i in range(32)}), True),
    ("large metadata numbers", body(metadata={"i": 2**62, "f": 1.7e308, "g": -1e-300}), True),
    ("a 128-character task id", json.dumps({"task_id": "a" * 128, "source": URI}).encode(), True),
    ("task id punctuation", json.dumps({"task_id": "A9._:@+=-x", "source": URI}).encode(), True),
    ("unicode text", body(source={**URI, "filename": "Rechnung-März-€.pdf"},
                          metadata={"name": "日本語"}), True),
    ("explicit nulls", body(pages=None, locate_text=None, submitted_at=None), True),
    ("every prompt kind", body(prompt="describe"), True),
    ("highest attempt", body(attempt=1_000_000), True),
    # -- refused -----------------------------------------------------------------------
    ("no task id (the issue's example)", json.dumps({"source": {}}).encode(), False),
    ("empty source", body(source={}), False),
    ("uri and inline data", body(source={**URI, "inline_base64": "JVBE"}), False),
    ("both locations null", body(source={"uri": None, "inline_base64": None}), False),
    ("locate without locate_text", body(prompt="locate"), False),
    ("locate with empty text", body(prompt="locate", locate_text=""), False),
    ("locate with null text", body(prompt="locate", locate_text=None), False),
    ("upper-case sha256", body(source={**URI, "sha256": SHA.upper()}), False),
    ("short sha256", body(source={**URI, "sha256": SHA[:-1]}), False),
    ("abridged sha256", body(source={**URI, "sha256": "9f86d0..."}), False),
    ("sha256 with a trailing newline", body(source={**URI, "sha256": SHA + "\n"}), False),
    ("task id with a trailing newline",
     json.dumps({"task_id": "doc-1\n", "source": URI}).encode(), False),
    ("task id with a slash", json.dumps({"task_id": "a/b", "source": URI}).encode(), False),
    ("129-character task id", json.dumps({"task_id": "a" * 129, "source": URI}).encode(), False),
    ("dpi below range", body(dpi=35), False),
    ("dpi above range", body(dpi=601), False),
    ("fractional dpi", body(dpi=144.5), False),
    ("dpi as a string", body(dpi="144"), False),
    ("dpi as a boolean", body(dpi=True), False),
    ("schema_version 2", body(schema_version=2), False),
    ("schema_version as a string", body(schema_version="1"), False),
    ("unknown field", body(colour="blue"), False),
    ("unknown source field", body(source={**URI, "bucket": "b"}), False),
    ("unknown prompt", body(prompt="summary"), False),
    ("page 0", body(pages=[{"first": 0}]), False),
    ("page range with an extra member", body(pages=[{"first": 1, "to": 3}]), False),
    ("257 page ranges", body(pages=[{"first": 1}] * 257), False),
    ("33 metadata entries", body(metadata={f"k{i}": i for i in range(33)}), False),
    ("65-character metadata key", body(metadata={"k" * 65: 1}), False),
    ("1025-character metadata value", body(metadata={"k": "v" * 1025}), False),
    ("nested metadata", body(metadata={"k": {"a": 1}}), False),
    ("metadata list", body(metadata={"k": [1]}), False),
    ("metadata number beyond a double", raw_body('"metadata": {"k": 1e400}'), False),
    ("metadata integer beyond a double", body(metadata={"k": 10**400}), False),
    ("a 5,000-digit integer (issue 16)", raw_body('"metadata": {"k": ' + "7" * 5000 + "}"),
     False),
    ("NaN", raw_body('"metadata": {"k": NaN}'), False),
    ("duplicate member", raw_body('"dpi": 144, "dpi": 200'), False),
    ("lone surrogate", raw_body('"metadata": {"k": "\\ud800"}'), False),
    ("naive submitted_at", body(submitted_at="2026-11-24T10:00:00"), False),
    ("submitted_at with a space", body(submitted_at="2026-11-24 10:00:00Z"), False),
    ("submitted_at without seconds", body(submitted_at="2026-11-24T10:00Z"), False),
    ("February 30th", body(submitted_at="2026-02-30T10:00:00Z"), False),
    ("year 0", body(submitted_at="0000-01-01T10:00:00Z"), False),
    ("submitted_at as epoch seconds", body(submitted_at=1700000000), False),
    ("negative attempt", body(attempt=-1), False),
    ("force as a string", body(force="yes"), False),
    ("2049-character uri", body(source={"uri": "file:///" + "a" * 2041}), False),
    ("an array", b"[]", False),
    ("a string", b'"doc-1"', False),
    ("null", b"null", False),
    ("empty value", b"", False),
    ("byte order mark", b"\xef\xbb\xbf" + body(), False),
    ("not UTF-8", body(metadata={"k": "\xe9"}).replace(b"\\u00e9", b"\xe9"), False),
    ("Schema Registry framing", b"\x00\x00\x00\x00\x07" + body(), False),
]


def decoder_accepts(raw: bytes) -> tuple[bool, str]:
    try:
        decode_request(raw, max_bytes=len(raw) + 1)
    except RequestDecodeError as exc:
        return False, f"{exc.code.value}: {exc.message}"
    return True, "accepted"


class NotIJson(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise NotIJson("duplicate member name")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise NotIJson(f"{name} is not JSON")


def _encodable(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # a lone surrogate raises
    elif isinstance(value, dict):
        for key, item in value.items():
            _encodable(key)
            _encodable(item)
    elif isinstance(value, list):
        for item in value:
            _encodable(item)


def read_ijson(raw: bytes) -> Any:
    """The value as any strict reader sees it (RFC 7493); raises on what is not I-JSON."""
    document = json.loads(
        raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
    )
    _encodable(document)
    return document


def schema_accepts(raw: bytes) -> tuple[bool, str]:
    try:
        document = read_ijson(raw)
    except (ValueError, RecursionError) as exc:
        return False, f"not I-JSON: {exc}"
    errors = sorted(VALIDATOR.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        return False, "; ".join(
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:120]}"
            for e in errors[:3]
        )
    return True, "accepted"


def test_the_corpus_is_large_and_balanced() -> None:
    assert len(CORPUS) >= 40
    assert sum(ok for *_, ok in CORPUS) >= 15
    assert sum(not ok for *_, ok in CORPUS) >= 25
    assert len({name for name, *_ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("name", "raw", "accepted"), CORPUS, ids=[c[0] for c in CORPUS])
def test_validator_and_decoder_agree(name: str, raw: bytes, accepted: bool) -> None:
    by_schema, schema_says = schema_accepts(raw)
    by_decoder, decoder_says = decoder_accepts(raw)
    assert (by_schema, by_decoder) == (accepted, accepted), (
        f"{name}: contract says {'valid' if accepted else 'invalid'}; "
        f"jsonschema: {schema_says}; decoder: {decoder_says}"
    )


AGREE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@AGREE
@given(valid_requests())
def test_generated_valid_requests_pass_both(document: dict[str, Any]) -> None:
    raw = json.dumps(document).encode()
    assert schema_accepts(raw) == (True, "accepted"), document
    assert decoder_accepts(raw) == (True, "accepted"), document


@AGREE
@given(mutated_requests())
def test_mutated_requests_get_one_verdict(document: Any) -> None:
    """Random edits anywhere in a valid request: whatever the verdict, both give it."""
    raw = json.dumps(document).encode()
    (by_schema, schema_says), (by_decoder, decoder_says) = (
        schema_accepts(raw), decoder_accepts(raw)
    )
    assert by_schema == by_decoder, f"jsonschema: {schema_says}; decoder: {decoder_says}"


def readme_request() -> bytes:
    text = README.read_text()
    match = re.search(r"A request:\s*```json\n(.*?)```", text, re.DOTALL)
    assert match, "README has no 'A request:' JSON block"
    return match.group(1).encode()


def test_the_readme_example_request_passes_both() -> None:
    raw = readme_request()
    assert schema_accepts(raw) == (True, "accepted")
    assert decoder_accepts(raw) == (True, "accepted")


def test_the_schema_is_a_valid_2020_12_schema_with_an_id() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == JSON_SCHEMA_DIALECT
    assert SCHEMA["$id"] == schema_id("request")


# Keywords whose subschemas state rules about fields declared elsewhere (the oneOf of a
# source's location, the if/then of locate), not fields of their own.
RULE_KEYWORDS = {"oneOf", "anyOf", "allOf", "not", "if", "then", "else"}


def _undescribed(node: Any, path: str) -> list[str]:
    missing: list[str] = []
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict):
            missing += [
                f"{path}.{name}" for name, prop in properties.items()
                if isinstance(prop, dict) and not prop.get("description")
            ]
        for key, value in node.items():
            if key not in RULE_KEYWORDS:
                missing += _undescribed(value, f"{path}/{key}")
    return missing


@pytest.mark.parametrize("stem", ["request", "page_result", "progress", "timing", "dlq"])
def test_every_schema_field_has_a_description(stem: str) -> None:
    schema = json.loads((JSON_DIR / f"{stem}.schema.json").read_text())
    assert _undescribed(schema, stem) == []
