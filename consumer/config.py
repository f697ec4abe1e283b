"""The consumer's settings: every part of `consumer.settings` composed into one object.

Every field is an `OCR_*` environment variable and a CLI flag. Tools compose only the parts
they use (see consumer/settings/__init__.py). The README's configuration tables are
generated from the parts (`python -m consumer.config`) and a test fails when they disagree.
"""

from __future__ import annotations

import argparse

from consumer.settings import base
from consumer.settings.artifacts import ArtifactOutput, ArtifactStoreSettings, artifact_store_uri
from consumer.settings.documents import (
    Documents,
    HandOver,
    S3AddressingStyle,
    is_s3_bucket_name,
)
from consumer.settings.engine import (
    Detokenize,
    EngineName,
    EngineSettings,
    NgramProcessor,
    ResolutionMode,
)
from consumer.settings.kafka import CompressionType, KafkaSecurityProtocol, SaslMechanism
from consumer.settings.redis import RedisConnection, TaskState
from consumer.settings.service import (
    ConsumerGroup,
    LogFormat,
    Logging,
    RequestLimits,
    Scheduling,
    Service,
)
from consumer.settings.topics import TopicClient, TopicLayout

env_name = base.env_name
flag_name = base.flag_name

__all__ = [
    "CompressionType",
    "Detokenize",
    "EngineName",
    "KafkaSecurityProtocol",
    "LogFormat",
    "NgramProcessor",
    "ResolutionMode",
    "S3AddressingStyle",
    "SaslMechanism",
    "Settings",
    "add_settings_arguments",
    "artifact_store_uri",
    "env_name",
    "flag_name",
    "is_s3_bucket_name",
    "markdown_table",
    "settings_from_args",
]


class Settings(
    TopicClient, ConsumerGroup, RequestLimits, TopicLayout, RedisConnection, TaskState,
    Scheduling, Documents, ArtifactStoreSettings, HandOver, EngineSettings, ArtifactOutput,
    Service, Logging,
):
    """Everything ocr-consumer reads (and, for the tests and the stack, every other part).
    It derives from every composite of consumer.settings too (TopicClient,
    ArtifactStoreSettings), so it goes wherever one of those is asked for."""


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings_type: type[base.SettingsPart] = Settings
) -> None:
    base.add_settings_arguments(parser, settings_type, by_part=True)


def settings_from_args(args: argparse.Namespace) -> Settings:
    return base.settings_from_args(args, Settings)


def markdown_table() -> str:
    """The README's configuration tables: one per part of the consumer's settings."""
    return base.markdown_tables(Settings)


if __name__ == "__main__":
    print(markdown_table())
