"""Which topics: their names, and the partitions and replication `ocr-topics` creates."""

from __future__ import annotations

from typing import Self

from pydantic import Field

from consumer.settings.base import SettingsPart
from consumer.settings.kafka import KafkaConnection
from schemas.topics import TopicNames, TopicSpec, topic_specs

_DEFAULT = TopicNames()


class Topics(SettingsPart):
    part_title = "Topics"

    topic_requests: str = Field(_DEFAULT.requests, description="Requests topic.")
    topic_results: str = Field(_DEFAULT.results, description="Per-page results topic (compacted).")
    topic_progress: str = Field(_DEFAULT.progress, description="Task progress topic.")
    topic_timing: str = Field(_DEFAULT.timing, description="Timing topic.")
    topic_dlq: str = Field(_DEFAULT.dlq, description="Dead-letter topic for bad requests.")

    @property
    def topic_names(self) -> TopicNames:
        return TopicNames(
            requests=self.topic_requests, results=self.topic_results,
            progress=self.topic_progress, timing=self.topic_timing, dlq=self.topic_dlq,
        )

    def with_topic_names(self, names: TopicNames) -> Self:
        """These settings naming other topics (e.g. `names.with_prefix(...)`)."""
        return self.model_copy(update=topic_fields(names))


def topic_fields(names: TopicNames) -> dict[str, str]:
    """`names` as the Topics fields they set (`topic_requests`, ...), for Settings(**...)."""
    return {
        "topic_requests": names.requests, "topic_results": names.results,
        "topic_progress": names.progress, "topic_timing": names.timing, "topic_dlq": names.dlq,
    }


class TopicLayout(Topics):
    part_title = "Topic layout"

    topic_partitions: int = Field(6, ge=1, description="Partitions when ocr-topics creates topics.")
    topic_replication: int = Field(1, ge=1, description="Replication factor for ocr-topics.")

    def topic_specs(self) -> list[TopicSpec]:
        """The five topics of the contract, named and sized by these settings."""
        return topic_specs(self.topic_names, self.topic_partitions, self.topic_replication)


class TopicClient(KafkaConnection, Topics):
    """A Kafka client of the ocr-stream topics: the connection and the topic names (what
    the tools that read or write the topics share)."""
