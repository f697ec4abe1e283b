"""The gateway's own settings (`OCR_GATEWAY_*`), and which shared settings it reads.

`GatewaySettings` holds only what nothing else uses: where the HTTP server listens, access,
upload and open-task limits, the view's consumer group and expiry. The shared `OCR_*`
settings it reads are `GatewayShared`, composed of the settings parts (consumer.settings)
with their names, so one environment configures the consumer and the gateway alike:
Kafka and topics (TopicClient), group timeouts (GroupMembership), Redis and its key prefix
(RedisConnection, TaskState), the hand-over folder (HandOver), the document limits
(Documents), the figure store for result.zip (ArtifactStoreSettings) and logging.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.settings import (
    ArtifactStoreSettings,
    Documents,
    GroupMembership,
    HandOver,
    Logging,
    RedisConnection,
    TaskState,
    TopicClient,
    add_settings_arguments,
    settings_from_args,
)

ENV_PREFIX = "OCR_GATEWAY_"


class GatewaySettings(BaseSettings):
    # hide_input_in_errors: a refused value could be an API key.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    host: str = Field(
        "127.0.0.1",
        description="Bind address; loopback unless set (set API keys before opening it up).",
    )
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0: any free port).")
    api_keys: SecretStr | None = Field(
        None, description="Comma list of accepted API keys (unset with no file: no keys asked)."
    )
    api_keys_file: Path | None = Field(
        None, description="File of accepted API keys, one a line ('#' starts a comment)."
    )
    max_upload_bytes: int = Field(
        50 * 1024 * 1024, ge=1024,
        description="Largest upload; never more than the consumer's OCR_MAX_DOCUMENT_BYTES.",
    )
    max_open_tasks_per_key: int = Field(
        64, ge=1, description="Tasks one API key may have submitted and not yet final."
    )
    view_group: str = Field(
        "ocr-gateway-view", description="Consumer group of the view (progress + results)."
    )
    view_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, description="Expiry of the view's task entries in Redis."
    )
    sync_timeout_max_s: float = Field(
        300.0, gt=0, description="Longest wait POST /v1/ocr?timeout= may ask for."
    )
    render_workers: int = Field(
        1, ge=1, le=16, description="Processes that inspect uploads and draw page images."
    )

    @field_validator("api_keys", "api_keys_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _keys_file_exists(self) -> GatewaySettings:
        path = self.api_keys_file
        if path is not None and not path.is_file():
            raise ValueError(
                f"{ENV_PREFIX}API_KEYS_FILE={path} is not a file; mount the keys file or "
                "unset the variable"
            )
        return self

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class ViewSettings(TopicClient, GroupMembership):
    """What the view's consumer reads: Kafka, topic names, group timeouts."""


class GatewayShared(
    ViewSettings, RedisConnection, TaskState, HandOver, Documents, ArtifactStoreSettings, Logging,
):
    """The shared OCR_* settings the gateway reads (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway reads: the shared settings and its own."""

    core: GatewayShared
    gateway: GatewaySettings

    @property
    def max_upload_bytes(self) -> int:
        # An upload the consumer would refuse to fetch is refused here, before it is stored.
        return min(self.gateway.max_upload_bytes, self.core.max_document_bytes)


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def flag_name(field: str) -> str:
    # --gateway-port for OCR_GATEWAY_PORT: the shared settings' flags have no such prefix.
    return "--gateway-" + field.replace("_", "-")


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gateway settings (each also an OCR_GATEWAY_* variable)")
    for name, info in GatewaySettings.model_fields.items():
        group.add_argument(
            flag_name(name), dest=f"gateway_{name}", default=None, metavar="V",
            help=f"{info.description} [{env_name(name)}]".replace("%", "%%"),
        )
    add_settings_arguments(parser, GatewayShared)


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    overrides = {
        name: getattr(args, f"gateway_{name}")
        for name in GatewaySettings.model_fields
        if getattr(args, f"gateway_{name}", None) is not None
    }
    return GatewayConfig(
        core=settings_from_args(args, GatewayShared), gateway=GatewaySettings(**overrides)
    )


def markdown_table() -> str:
    """The gateway's rows of the README settings table."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for name, info in GatewaySettings.model_fields.items():
        default = info.default
        shown = "" if default is None else str(default)
        rows.append(
            f"| `{env_name(name)}` | `{flag_name(name)}` | `{shown}` | {info.description} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
