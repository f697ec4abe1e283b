"""The consumer as a group member and a process: group, intake, scheduling, identity,
metrics and logs."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator

from consumer.settings.base import SettingsPart, empty_is_unset
from schemas.cloudevents import deployment_source, is_source


class GroupMembership(SettingsPart):
    """What any member of a consumer group (the consumer, ocr-collect) is judged by."""

    part_title = "Group membership"

    session_timeout_ms: int = Field(30_000, ge=6_000, description="Kafka group session timeout.")
    max_poll_interval_ms: int = Field(
        300_000, ge=10_000, description="Max time between polls before the group evicts us."
    )


class IsolationLevel(StrEnum):
    """Kafka's `isolation.level` for reading requests."""

    READ_COMMITTED = "read_committed"
    READ_UNCOMMITTED = "read_uncommitted"


class ConsumerGroup(GroupMembership):
    """The group, which is the deployment: its members share its work and its name in events."""

    part_title = "Consumer group"

    group_id: str = Field("ocr-stream", description="Consumer group id.")
    group_instance_id: str | None = Field(
        None, description="Static membership id: a quick restart causes no rebalance."
    )
    commit_interval_s: float = Field(1.0, gt=0, description="How often finished offsets commit.")
    # Kafka's own default is read_uncommitted. Ours is not: a request whose transaction its
    # producer aborted was rolled back, and OCR-ing it spends a GPU on a document that, to
    # its sender, was never sent (and is sent again when the transaction is retried).
    isolation_level: IsolationLevel = Field(
        IsolationLevel.READ_COMMITTED,
        description="Requests read: read_committed skips those of aborted transactions and "
        "waits for open ones (Kafka's isolation.level); read_uncommitted reads them all.",
        json_schema_extra={"short": "read_committed (skips aborted transactions) or "
                           "read_uncommitted."},
    )
    event_source: str | None = Field(
        None,
        description="CloudEvents `ce_source` of every output: the deployment's name, the same "
        "on every consumer of the group (a URI-reference); default `ocr-stream/<group id>`.",
        json_schema_extra={"short": "ce_source of every output; default ocr-stream/<group id>."},
    )

    @field_validator("event_source", mode="before")
    @classmethod
    def _event_source(cls, value: Any) -> Any:
        value = empty_is_unset(value)
        if isinstance(value, str) and not is_source(value):
            # CloudEvents readers refuse an event whose source is no URI-reference; better
            # one clear refusal at start than every output unreadable downstream.
            raise ValueError(
                f"{value[:80]!r} is not a URI-reference (RFC 3986); use e.g. "
                "`urn:example:ocr:prod`, `https://ocr.example.com/eu` or `ocr-stream/prod`, "
                "with spaces and non-ASCII characters percent-encoded"
            )
        return value

    @property
    def ce_source(self) -> str:
        """What outputs carry as `ce_source`: the setting, or the group's default (derived
        when asked, so a copy with another group id gets its own)."""
        return self.event_source or deployment_source(self.group_id)


class RequestLimits(SettingsPart):
    part_title = "Request limits"

    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request record accepted; bigger go to DLQ."
    )


class Scheduling(SettingsPart):
    part_title = "Scheduling"

    max_inflight_pages: int = Field(
        0, ge=0,
        description="Pages rendered or in the engine at once (the in-flight budget); "
        "0 sizes it from the engine (vLLM: max_num_seqs + 25%).",
    )
    max_inflight_megapixels: int = Field(
        4000, ge=1,
        description="Rendered pixels in flight at once, in millions (3.5-6 bytes each in "
        "memory; bench/page_memory.py); a page larger than this still runs, alone.",
    )
    max_inflight_tasks: int = Field(
        64, ge=1, description="Tasks open at once; partitions pause beyond it."
    )
    shutdown_grace_s: float = Field(
        20.0, ge=0, description="On SIGTERM, time for in-flight pages to finish."
    )
    task_timeout_s: float = Field(3600.0, gt=0, description="One task's total time limit.")


class Service(SettingsPart):
    part_title = "Service"

    consumer_id: str | None = Field(
        None,
        description="This process's name in events (the `ce_ocrconsumer` extension, "
        "`consumer_id` fields) and Redis ownership; default host-pid.",
        json_schema_extra={"short": "Name in events and Redis ownership; default host-pid."},
    )
    start_timeout_s: float = Field(
        300.0, gt=0,
        description="How long Kafka and Redis are waited for at start before the consumer "
        "exits with status 4 (a supervisor then sees a crash loop, not a silent hang).",
        json_schema_extra={"short": "Wait for Kafka and Redis at start, then exit 4."},
    )
    metrics_host: str = Field("127.0.0.1", description="Metrics/health HTTP bind address.")
    metrics_port: int = Field(9400, ge=0, le=65535, description="Metrics/health port (0: off).")


class LogFormat(StrEnum):
    AUTO = "auto"  # console on a terminal, JSON otherwise
    JSON = "json"
    CONSOLE = "console"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Logging(SettingsPart):
    part_title = "Logging"

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_format: LogFormat = Field(LogFormat.AUTO, description="auto, json or console.")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        # A typo must not quietly become INFO (or hide the DEBUG lines asked for).
        name = value.strip().upper()
        if name not in LOG_LEVELS:
            raise ValueError(f"not a log level; use one of {', '.join(LOG_LEVELS)}")
        return name
