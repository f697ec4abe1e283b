"""Settings parts: the public way for ocr-stream's programs to read `OCR_*` configuration.

Each part is a small pydantic-settings class for one concern; a program composes the parts
it uses by inheritance, so each field has one name, one `OCR_<FIELD>` variable and one
`--flag` wherever it appears, and each program's `--help` lists only its own:

    class SubmitSettings(TopicClient, HandOver, Logging):
        '''What ocr-submit reads.'''

    parser = argparse.ArgumentParser(prog="ocr-submit")
    add_settings_arguments(parser, SubmitSettings)
    settings = settings_from_args(parser.parse_args())   # a SubmitSettings

`consumer.config.Settings` composes every part: the consumer's settings.

Guarantee: this package imports nothing from the rest of `consumer` (a test checks), so
tools (`producer_tools/`, `bench/`) depend on it without depending on the service.
Checks that span fields (SASL needs a user name, TLS files must exist) belong to the part
that holds those fields and run wherever that part is used.
"""

from consumer.settings.artifacts import (
    ArtifactOutput,
    Artifacts,
    ArtifactStoreSettings,
    artifact_store_uri,
)
from consumer.settings.base import (
    SettingsPart,
    add_settings_arguments,
    add_version_argument,
    env_name,
    flag_name,
    markdown_table,
    markdown_tables,
    parts_of,
    settings_from_args,
)
from consumer.settings.documents import (
    Documents,
    HandOver,
    RemoteStorage,
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
from consumer.settings.kafka import (
    CompressionType,
    KafkaConnection,
    KafkaSecurityProtocol,
    KafkaTlsError,
    SaslMechanism,
    client_kwargs,
    producer_kwargs,
)
from consumer.settings.redis import RedisConnection, TaskState
from consumer.settings.service import (
    ConsumerGroup,
    GroupMembership,
    LogFormat,
    Logging,
    RequestLimits,
    Scheduling,
    Service,
)
from consumer.settings.topics import TopicClient, TopicLayout, Topics, topic_fields

__all__ = [
    "ArtifactOutput",
    "ArtifactStoreSettings",
    "Artifacts",
    "CompressionType",
    "ConsumerGroup",
    "Detokenize",
    "Documents",
    "EngineName",
    "EngineSettings",
    "GroupMembership",
    "HandOver",
    "KafkaConnection",
    "KafkaSecurityProtocol",
    "KafkaTlsError",
    "LogFormat",
    "Logging",
    "NgramProcessor",
    "RedisConnection",
    "RemoteStorage",
    "RequestLimits",
    "ResolutionMode",
    "S3AddressingStyle",
    "SaslMechanism",
    "Scheduling",
    "Service",
    "SettingsPart",
    "TaskState",
    "TopicClient",
    "TopicLayout",
    "Topics",
    "add_settings_arguments",
    "add_version_argument",
    "artifact_store_uri",
    "client_kwargs",
    "env_name",
    "flag_name",
    "is_s3_bucket_name",
    "markdown_table",
    "markdown_tables",
    "parts_of",
    "producer_kwargs",
    "settings_from_args",
    "topic_fields",
]
