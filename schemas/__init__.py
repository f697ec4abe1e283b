"""The v1 event contract of ocr-stream: pydantic models, CloudEvents headers, JSON Schema.

Everything a producer or a downstream consumer needs to speak to ocr-stream lives here and
nothing else does: no Kafka clients, no I/O beyond the optional schema export.
"""

from schemas.cloudevents import CloudEvent, ce_headers, parse_ce_headers
from schemas.common import SCHEMA_VERSION, ErrorCode, ErrorInfo, TaskId
from schemas.control import CancelRequest, ControlAction
from schemas.decode import RequestDecodeError, decode_record, decode_request
from schemas.dlq import DlqEnvelope
from schemas.keys import TaskPartitioner, parse_key, result_key, task_partition
from schemas.progress import ProgressEvent, TaskStatus
from schemas.request import OcrRequest, PageRange, PromptKind, Source, parse_page_ranges
from schemas.result import (
    Artifact,
    Block,
    EngineIdentity,
    FinishReason,
    PageImageInfo,
    PageResult,
    PageStatus,
    TokenCounts,
)
from schemas.timing import StageDurations, TimingEvent, TimingKind
from schemas.topics import TopicNames

__all__ = [
    "SCHEMA_VERSION",
    "Artifact",
    "Block",
    "CancelRequest",
    "CloudEvent",
    "ControlAction",
    "DlqEnvelope",
    "EngineIdentity",
    "ErrorCode",
    "ErrorInfo",
    "FinishReason",
    "OcrRequest",
    "PageImageInfo",
    "PageRange",
    "PageResult",
    "PageStatus",
    "ProgressEvent",
    "PromptKind",
    "RequestDecodeError",
    "Source",
    "StageDurations",
    "TaskId",
    "TaskPartitioner",
    "TaskStatus",
    "TimingEvent",
    "TimingKind",
    "TokenCounts",
    "TopicNames",
    "ce_headers",
    "decode_record",
    "decode_request",
    "parse_ce_headers",
    "parse_key",
    "parse_page_ranges",
    "result_key",
    "task_partition",
]
