"""Export the contract: JSON Schema per event and an AsyncAPI 3 document.

`ocr-schemas` (or `python -m schemas.export`) rewrites the committed files; `--check` exits 1
when they differ from the models, which is how the test suite catches drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from schemas import headers as header_names
from schemas.cloudevents import (
    CE_EXTENSION_CONSUMER,
    CE_TYPE_CANCEL,
    CE_TYPE_DLQ,
    CE_TYPE_PROGRESS,
    CE_TYPE_REQUEST,
    CE_TYPE_RESULT,
    CE_TYPE_TIMING,
)
from schemas.control import CancelRequest
from schemas.dlq import DlqEnvelope
from schemas.progress import ProgressEvent
from schemas.request import OcrRequest
from schemas.result import PageResult
from schemas.timing import TimingEvent

HERE = Path(__file__).resolve().parent
JSON_DIR = HERE / "json"
ASYNCAPI_FILE = HERE / "asyncapi.yaml"

# (file stem, model, default topic, key description, ce_type)
EVENTS: list[tuple[str, type[BaseModel], str, str, str]] = [
    ("request", OcrRequest, "ocr.requests", "task_id", CE_TYPE_REQUEST),
    ("page_result", PageResult, "ocr.results", "task_id/page (compacted)", CE_TYPE_RESULT),
    ("progress", ProgressEvent, "ocr.progress", "task_id", CE_TYPE_PROGRESS),
    ("timing", TimingEvent, "ocr.timing", "task_id", CE_TYPE_TIMING),
    ("dlq", DlqEnvelope, "ocr.requests.dlq", "task_id when readable, else the original key",
     CE_TYPE_DLQ),
]
# Further messages on the channel of an event above: (file stem, model, channel stem,
# ce_type). A requests-topic record with `action` is a control record, not an OcrRequest.
CONTROL_MESSAGES: list[tuple[str, type[BaseModel], str, str]] = [
    ("cancel", CancelRequest, "request", CE_TYPE_CANCEL),
]


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_id(stem: str) -> str:
    """A stable name for each schema, independent of where the file is served from."""
    return f"urn:ocr-stream:schema:v1:{stem}"


# Matches a newline as the last character: see _strict_end_anchors.
_TRAILING_NEWLINE = {"not": {"pattern": "\n$"}}


def _strict_end_anchors(node: Any) -> Any:
    """`$` is the end of the text in ECMA-262, the regex dialect of JSON Schema, and in the
    decoder (pydantic's Rust regex); but Python's re, used by the `jsonschema` package, and
    Java's java.util.regex also let it match before a final newline, so "doc-1\n" would
    pass those validators as a task id. Every pattern anchored with `$` gets a sibling rule
    refusing a trailing newline, which every dialect reads alike."""
    if isinstance(node, list):
        return [_strict_end_anchors(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict_end_anchors(value) for key, value in node.items()}
    pattern = node.get("pattern")
    if isinstance(pattern, str) and pattern.endswith("$") and not pattern.endswith("\\$"):
        out["allOf"] = [*out.get("allOf", []), _TRAILING_NEWLINE]
    return out


def json_schema(stem: str, model: type[BaseModel]) -> dict[str, Any]:
    schema = _strict_end_anchors(model.model_json_schema(mode="validation"))
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": schema_id(stem), **schema}


def json_schemas() -> dict[str, dict[str, Any]]:
    models = [(stem, model) for stem, model, *_ in EVENTS]
    models += [(stem, model) for stem, model, *_ in CONTROL_MESSAGES]
    return {stem: json_schema(stem, model) for stem, model in models}


def _message(
    stem: str, model: type[BaseModel], headers: dict[str, Any], key: str
) -> dict[str, Any]:
    name = "".join(part.title() for part in stem.split("_"))
    return {
        "name": name,
        "title": model.__name__,
        "summary": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else stem,
        "contentType": "application/json",
        "headers": headers,
        "payload": {"$ref": f"./json/{stem}.schema.json"},
        "bindings": {"kafka": {"key": {"type": "string", "description": key}}},
    }


# W3C Trace Context headers (schemas/cloudevents.py trace_context): read on requests,
# copied onto every output of the task and its dead letter.
TRACE_HEADERS: dict[str, Any] = {
    header_names.TRACEPARENT: {
        "type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        "description": "W3C traceparent (version 00) of the request this answers; absent "
        "when the request had none or an invalid one.",
    },
    header_names.TRACESTATE: {
        "type": "string", "maxLength": 512,
        "description": "W3C tracestate of the request, only together with its traceparent.",
    },
}
# The reasons a dead letter carries as headers, so tools filter without parsing the value.
DLQ_HEADERS: dict[str, Any] = {
    header_names.DLQ_ERROR_CODE: {"type": "string", "description": "ErrorCode of the refusal."},
    header_names.DLQ_ERROR_MESSAGE: {
        "type": "string", "description": "The error message, cut to 1024 bytes."
    },
    header_names.DLQ_ORIGINAL_TOPIC: {"type": "string", "description": "Topic of the record."},
    header_names.DLQ_ORIGINAL_PARTITION: {
        "type": "string", "description": "Its partition, in decimal."
    },
    header_names.DLQ_ORIGINAL_OFFSET: {"type": "string", "description": "Its offset, in decimal."},
}


def _output_headers(ce_type: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Kafka headers of a record the consumer publishes: CloudEvents binary mode, the
    consumer extension, the request's trace context, and `extra`."""
    required = ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type"]
    return {
        "type": "object",
        "required": [*required, f"ce_{CE_EXTENSION_CONSUMER}", *extra],
        "properties": {
            "ce_specversion": {"type": "string", "const": "1.0"},
            "ce_id": {"type": "string", "description": "Deterministic per event, for dedup."},
            "ce_type": {"type": "string", "const": ce_type},
            "ce_source": {
                "type": "string", "format": "uri-reference",
                "description": "The deployment (OCR_EVENT_SOURCE, default ocr-stream/<group "
                "id>): the same from every consumer, so (ce_source, ce_id) names one event.",
            },
            "ce_time": {"type": "string", "format": "date-time"},
            "ce_subject": {"type": "string", "description": "The task id."},
            "content-type": {"type": "string", "const": "application/json"},
            f"ce_{CE_EXTENSION_CONSUMER}": {
                "type": "string",
                "description": "CloudEvents extension attribute: the consumer that published "
                "it (OCR_CONSUMER_ID).",
            },
            **TRACE_HEADERS,
            **extra,
        },
    }


def _request_headers() -> dict[str, Any]:
    """Headers of a request record the consumer reads; any others are allowed and ignored."""
    return {
        "type": "object",
        "properties": {
            **TRACE_HEADERS,
            header_names.REPLAY_OF: {
                "type": "string",
                "description": "Set by ocr-replay: topic/partition/offset of the record it "
                "sent again.",
            },
        },
    }


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for stem, model, topic, key, ce_type in EVENTS:
        name = "".join(part.title() for part in stem.split("_"))
        if stem == "request":
            headers = _request_headers()
        else:
            headers = _output_headers(ce_type, DLQ_HEADERS if stem == "dlq" else {})
        messages[name] = _message(stem, model, headers, key)
        channels[stem] = {
            "address": topic,
            "description": f"Default topic {topic}; keyed by {key}.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        action = "receive" if stem == "request" else "send"
        operations[f"{action}{name}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{stem}"},
        }
    for stem, model, channel, _ce_type in CONTROL_MESSAGES:
        name = "".join(part.title() for part in stem.split("_"))
        messages[name] = _message(stem, model, _request_headers(), "task_id")
        channels[channel]["messages"][name] = {"$ref": f"#/components/messages/{name}"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "ocr-stream",
            "version": "1.0.0",
            "description": "Kafka stream processor for document OCR. Event contract v1; "
            "outputs carry CloudEvents binary-mode headers.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "127.0.0.1:9092", "protocol": "kafka",
                      "description": "The local stack of `make up`."}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def rendered() -> dict[Path, str]:
    files = {
        JSON_DIR / f"{stem}.schema.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for stem, schema in json_schemas().items()
    }
    files[ASYNCAPI_FILE] = yaml.safe_dump(asyncapi_document(), sort_keys=False, width=100)
    return files


def _package_version() -> str:
    try:
        return metadata.version("ocr-stream")
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ocr-schemas", description=__doc__)
    # schemas/ imports nothing of the consumer: the version comes from the installed package.
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s (ocr-stream {_package_version()})"
    )
    parser.add_argument("--check", action="store_true", help="fail if committed files drift")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        current = path.read_text() if path.exists() else None
        if current != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if args.check and stale:
        names = ", ".join(str(p.relative_to(HERE.parent)) for p in stale)
        print(f"schema files out of date: {names}; run `ocr-schemas`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
