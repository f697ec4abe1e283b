"""How to reach Redis, and how task state is kept there."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from consumer.settings import secret_files
from consumer.settings.base import (
    Secrets,
    SettingsPart,
    check_tls_files,
    empty_is_unset,
    env_name,
    not_empty,
    refuse_unused,
)


class RedisConnection(Secrets):
    part_title = "Redis connection"

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (rediss:// for TLS).")
    redis_password: SecretStr | None = Field(None, description="Redis password (AUTH).")
    redis_ssl_cafile: Path | None = Field(
        None, description="CA bundle for rediss:// (unset: the system's CAs)."
    )
    redis_ssl_certfile: Path | None = Field(
        None, description="Client certificate for rediss:// (mTLS; may hold the key too)."
    )
    redis_ssl_keyfile: Path | None = Field(
        None, description="Client key for rediss:// (mTLS), when not in the certificate file."
    )

    @field_validator("redis_ssl_cafile", "redis_ssl_certfile", "redis_ssl_keyfile", mode="before")
    @classmethod
    def _redis_empty_is_unset(cls, value: Any) -> Any:
        return empty_is_unset(value)

    @field_validator("redis_password", mode="before")
    @classmethod
    def _redis_secret_file_problem(cls, value: Any) -> Any:
        return secret_files.check_secret(value)

    @field_validator("redis_url")
    @classmethod
    def _url_not_empty(cls, value: str) -> str:
        return not_empty(value)

    @model_validator(mode="after")
    def _redis_tls(self) -> Self:
        if not self.redis_url.lower().startswith("rediss://"):
            refuse_unused(
                self, ("redis_ssl_cafile", "redis_ssl_certfile", "redis_ssl_keyfile"),
                f"{env_name('redis_url')} is not a rediss:// URL, so Redis would be reached "
                "without TLS; use rediss:// or unset {them}",
            )
        check_tls_files(self, "redis")
        return self


class TaskState(SettingsPart):
    part_title = "Task state"

    redis_key_prefix: str = Field("ocr:", description="Prefix of every Redis key.")
    state_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="Expiry of task state keys.")
    lease_ttl_s: int = Field(60, ge=5, description="Ownership lease of a running task.")
