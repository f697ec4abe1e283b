"""Every error from reading the requests topic gets a class (consumer/read_errors.py)."""

from __future__ import annotations

import zlib

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors

from consumer.read_errors import (
    FencedInstanceIdError,
    Identity,
    ReadErrorKind,
    classify,
    topic_missing,
)

WHO = Identity("ocr.requests", "ocr-stream", "ocr-0")


@pytest.mark.parametrize(
    ("exc", "kind", "cause"),
    [
        (kafka_errors.TopicAuthorizationFailedError("ocr.requests"), "fatal", "authorization"),
        (kafka_errors.GroupAuthorizationFailedError("ocr-stream"), "fatal", "authorization"),
        (kafka_errors.ClusterAuthorizationFailedError(), "fatal", "authorization"),
        (kafka_errors.AuthenticationFailedError("bad password"), "fatal", "authentication"),
        (FencedInstanceIdError(), "fatal", "fenced"),
        # aiokafka's JoinGroup path wraps the broker's error in a plain KafkaError.
        (kafka_errors.KafkaError("FencedInstanceIdError()"), "fatal", "fenced"),
        (kafka_errors.InvalidSessionTimeoutError(), "fatal", "group_settings"),
        (kafka_errors.CorruptRecordException("Invalid CRC - tp"), "unreadable", "corrupt_record"),
        (kafka_errors.UnsupportedCodecError("Libraries for lz4 compression codec not found"),
         "unreadable", "unsupported_codec"),
        (kafka_errors.RecordTooLargeError("m", TopicPartition("t", 0), 5, 1024),
         "unreadable", "record_too_large"),
        (RuntimeError("lz4: ERROR_contentChecksum_invalid"), "unreadable", "undecodable_batch"),
        (zlib.error("Error -3 while decompressing data"), "unreadable", "undecodable_batch"),
        (OSError("Not a gzipped file"), "unreadable", "undecodable_batch"),
        # read_committed parses markers; an empty marker batch fails every read alike.
        (kafka_errors.KafkaError("Control batch did not contain any records"),
         "unreadable", "malformed_control_batch"),
        (kafka_errors.KafkaError("Unexpected exception in heartbeat task: UnknownError()"),
         "transient", "kafka"),
        (kafka_errors.CommitFailedError(), "transient", "kafka"),
        (kafka_errors.RequestTimedOutError(), "transient", "kafka"),
    ],
)
def test_each_error_has_a_class(exc: BaseException, kind: str, cause: str) -> None:
    error = classify(exc, WHO)
    assert (error.kind, error.cause) == (ReadErrorKind(kind), cause)


def test_fatal_messages_say_what_to_change() -> None:
    denied = classify(kafka_errors.TopicAuthorizationFailedError("ocr.requests"), WHO)
    assert "Read and Describe on topic 'ocr.requests'" in denied.message
    assert "Read on group 'ocr-stream'" in denied.message
    fenced = classify(FencedInstanceIdError(), WHO)
    assert "OCR_GROUP_INSTANCE_ID='ocr-0'" in fenced.message
    assert "ocr-topics create" in topic_missing(WHO).message


def test_the_fenced_code_is_known_to_aiokafka() -> None:
    """aiokafka 0.14 maps code 82 to UnknownError, which says nothing."""
    assert kafka_errors.for_code(82) is FencedInstanceIdError
