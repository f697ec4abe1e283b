"""Every Kafka header name of the contract, in one place.

Values are UTF-8 bytes. Readers must ignore headers they do not know: new ones may be
added within v1.
"""

from __future__ import annotations

# CloudEvents 1.0, Kafka protocol binding, binary content mode (schemas/cloudevents.py).
CE_SPECVERSION = "ce_specversion"
CE_ID = "ce_id"
CE_TYPE = "ce_type"
CE_SOURCE = "ce_source"
CE_TIME = "ce_time"
CE_SUBJECT = "ce_subject"
CONTENT_TYPE = "content-type"  # the binding maps datacontenttype to this, not to ce_*

# On every dead letter, so tools can filter without parsing the value (schemas/dlq.py).
DLQ_ERROR_CODE = "ocr_error_code"
DLQ_ERROR_MESSAGE = "ocr_error_message"
DLQ_ORIGINAL_TOPIC = "ocr_original_topic"
DLQ_ORIGINAL_PARTITION = "ocr_original_partition"
DLQ_ORIGINAL_OFFSET = "ocr_original_offset"

# On a request `ocr-replay` sent again: the record it came from (topic/partition/offset),
# for audits and loop detection.
REPLAY_OF = "ocr_replay_of"

# W3C Trace Context, as plain headers (OpenTelemetry's Kafka convention): a request's are
# copied onto every output of its task (schemas/cloudevents.py trace_context).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
