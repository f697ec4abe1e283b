"""What an error from reading the requests topic means, and what the consumer does about it.

Everything aiokafka raises while the consumer fetches, decompresses and parses a batch, or
while it keeps its group membership, falls in one of three classes:

- UNREADABLE: the bytes the broker handed over cannot be read: a checksum that does not
  match (CorruptRecordException), a codec this process cannot decompress
  (UnsupportedCodecError), a payload that does not decompress (lz4, zstd, snappy and gzip
  raise their own exceptions, not Kafka's), a record larger than the fetch size, a
  transaction marker batch with no record in it. Reading
  again gives the same error: the offset is skipped (dead-lettered without its bytes, see
  consumer/batches.py) and reading goes on.
- FATAL: Kafka refuses this consumer, and no retry changes that: authorization or
  authentication failed, another live consumer uses our static membership id (fenced), the
  requests topic does not exist, the group settings are refused. The process exits with
  status 5 and a message saying what to fix (`KafkaRefused`).
- TRANSIENT: anything else Kafka raises (a coordinator moving, a rebalance, a request
  timing out): read again after a short backoff.

This module decides and holds no state; consumer/batches.py acts on its answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiokafka import errors as kafka_errors

# The consumer's exit status when Kafka refuses it for good (the table is in README.md).
EXIT_KAFKA_REFUSED = 5


class FencedInstanceIdError(kafka_errors.BrokerResponseError):  # type: ignore[misc]
    """FENCED_INSTANCE_ID (82): another consumer joined with our group.instance.id.

    aiokafka 0.14 has no class for this code: it read as UnknownError, which cannot be told
    apart from any other unknown code. Registered below, the broker's answer names it (the
    JoinGroup path still wraps it in a KafkaError whose message holds the class name)."""

    errno = 82
    message = "FENCED_INSTANCE_ID"
    description = "The broker fenced this member: another one uses its group.instance.id."


kafka_errors.kafka_errors.setdefault(FencedInstanceIdError.errno, FencedInstanceIdError)


class ReadErrorKind(StrEnum):
    UNREADABLE = "unreadable"
    TRANSIENT = "transient"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class ReadError:
    kind: ReadErrorKind
    cause: str  # short and stable, for logs and DLQ messages: "corrupt_record", ...
    message: str  # what happened and, for FATAL, what to change


class KafkaRefused(Exception):
    """Kafka refuses this consumer for good: the process exits with EXIT_KAFKA_REFUSED."""

    def __init__(self, error: ReadError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class Identity:
    """Who we are to the broker, for messages that say what to fix."""

    topic: str
    group: str
    instance_id: str | None = None


_AUTHORIZATION = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
)
# Raised by aiokafka as fatal when the group refuses our join settings.
_GROUP_SETTINGS = (
    kafka_errors.InconsistentGroupProtocolError,
    kafka_errors.InvalidSessionTimeoutError,
    kafka_errors.InvalidGroupIdError,
)
_EMPTY_CONTROL_BATCH = "Control batch did not contain any records"
_UNREADABLE = (
    kafka_errors.CorruptRecordException,
    kafka_errors.UnsupportedCodecError,
    kafka_errors.RecordTooLargeError,
)


def classify(exc: BaseException, who: Identity) -> ReadError:
    """The class of an exception raised while reading the requests topic."""
    name = type(exc).__name__
    if isinstance(exc, _AUTHORIZATION):
        return ReadError(
            ReadErrorKind.FATAL, "authorization",
            f"Kafka refused {name} ({exc}): grant this consumer's principal Read and "
            f"Describe on topic {who.topic!r} and Read on group {who.group!r} "
            "(OCR_KAFKA_SASL_USERNAME names it), then restart",
        )
    if isinstance(exc, kafka_errors.AuthenticationFailedError):
        return ReadError(
            ReadErrorKind.FATAL, "authentication",
            f"Kafka refused our credentials ({exc}): check OCR_KAFKA_SASL_MECHANISM, "
            "OCR_KAFKA_SASL_USERNAME and OCR_KAFKA_SASL_PASSWORD",
        )
    if isinstance(exc, FencedInstanceIdError) or (
        isinstance(exc, kafka_errors.KafkaError) and FencedInstanceIdError.__name__ in str(exc)
    ):
        return ReadError(
            ReadErrorKind.FATAL, "fenced",
            f"another consumer joined group {who.group!r} with our static membership id "
            f"OCR_GROUP_INSTANCE_ID={who.instance_id!r}: each consumer needs its own (the "
            "k8s manifests use the pod name)",
        )
    if isinstance(exc, _GROUP_SETTINGS):
        return ReadError(
            ReadErrorKind.FATAL, "group_settings",
            f"the group coordinator refused our membership settings ({name}: {exc}): "
            "check OCR_SESSION_TIMEOUT_MS against the broker's group.min/max.session."
            "timeout.ms, and OCR_GROUP_ID",
        )
    if isinstance(exc, _UNREADABLE):
        cause = {
            kafka_errors.CorruptRecordException: "corrupt_record",
            kafka_errors.UnsupportedCodecError: "unsupported_codec",
            kafka_errors.RecordTooLargeError: "record_too_large",
        }[next(kind for kind in _UNREADABLE if isinstance(exc, kind))]
        return ReadError(ReadErrorKind.UNREADABLE, cause, f"{name}: {exc}"[:512])
    if type(exc) is kafka_errors.KafkaError and _EMPTY_CONTROL_BATCH in str(exc):
        # aiokafka's plain KafkaError for a transaction marker batch without its record
        # (read_committed parses them): the same bytes fail every read, as a corrupt batch
        # does, and it is raised after other partitions were drained (their records lost
        # unless the reader rewinds, which it does for UNREADABLE).
        return ReadError(ReadErrorKind.UNREADABLE, "malformed_control_batch",
                         f"{name}: {exc}"[:512])
    if isinstance(exc, kafka_errors.KafkaError):
        return ReadError(ReadErrorKind.TRANSIENT, "kafka", f"{name}: {exc}"[:512])
    # Not Kafka's own: raised while decompressing or parsing records (lz4's RuntimeError,
    # zlib.error, OSError, ValueError, struct.error ...).
    return ReadError(ReadErrorKind.UNREADABLE, "undecodable_batch", f"{name}: {exc}"[:512])


def topic_missing(who: Identity) -> ReadError:
    return ReadError(
        ReadErrorKind.FATAL, "topic_missing",
        f"topic {who.topic!r} does not exist (or this consumer's principal may not describe "
        "it): create it with `ocr-topics create` (or check OCR_TOPIC_REQUESTS and "
        "OCR_TOPIC_PREFIX), then restart",
    )
