"""Settings parts compose: the consumer's Settings is every part, field names and variables
unchanged, and the public package stands alone."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from consumer.config import Settings
from consumer.settings import (
    HandOver,
    KafkaConnection,
    Logging,
    SettingsPart,
    TopicLayout,
    Topics,
    add_settings_arguments,
    parts_of,
    settings_from_args,
)
from consumer.settings.base import Secrets

pytestmark = pytest.mark.usefixtures("clean_env")


class Narrow(KafkaConnection, Topics, HandOver, Logging):
    """A tool's settings: four parts."""


def test_the_settings_package_imports_nothing_else_of_the_consumer() -> None:
    # Tools import it; it must not drag the service (aiokafka, redis, engines) along.
    code = (
        "import json, sys, consumer.settings; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'consumer')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if not m.startswith("consumer.settings")] == ["consumer"]
    assert "aiokafka" not in done.stdout


def test_every_field_of_the_consumer_belongs_to_exactly_one_part() -> None:
    owners: dict[str, list[str]] = {}
    for part in parts_of(Settings):
        for name in part.model_fields:
            if name in part.__annotations__:
                owners.setdefault(name, []).append(part.__name__)
    assert set(owners) == set(Settings.model_fields)
    assert {name: parts for name, parts in owners.items() if len(parts) > 1} == {}


def test_a_part_extending_another_comes_after_it() -> None:
    class Layout(KafkaConnection, TopicLayout):
        pass

    # KafkaConnection extends Secrets (where secret files are mounted): it comes first.
    assert parts_of(Layout) == [Secrets, KafkaConnection, Topics, TopicLayout]


def test_a_narrow_settings_type_reads_its_own_flags_and_variables(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("OCR_TOPIC_PROGRESS", "p.env")
    clean_env.setenv("OCR_MAX_PAGES", "oops")  # not a field of Narrow: ignored
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, Narrow)
    flags = {o for action in parser._actions for o in action.option_strings}
    assert "--kafka-bootstrap" in flags and "--blob-root" in flags
    assert "--max-pages" not in flags and "--gpu-memory-utilization" not in flags
    settings = settings_from_args(parser.parse_args(["--topic-dlq", "d.flag"]))
    assert isinstance(settings, Narrow)
    assert (settings.topic_dlq, settings.topic_progress) == ("d.flag", "p.env")


def test_parts_carry_their_checks_along() -> None:
    # The SASL rule belongs to KafkaConnection, so any tool composing it refuses alike.
    with pytest.raises(ValueError, match="OCR_KAFKA_SASL_USERNAME and OCR_KAFKA_SASL_PASSWORD"):
        Narrow(kafka_security_protocol="SASL_SSL")


def test_the_topic_names_value_object_round_trips() -> None:
    settings = Settings()
    side = settings.with_topic_names(settings.topic_names.with_prefix("cmp"))
    assert side.topic_requests == "cmp.ocr.requests"
    assert list(side.topic_names) == [f"cmp.{name}" for name in settings.topic_names]
    assert isinstance(side, SettingsPart)


def test_a_composition_that_would_hide_a_validator_is_refused() -> None:
    # Validators are methods: the second part's would silently replace the first's.
    from pydantic import field_validator

    class One(SettingsPart):
        a: int = 0

        @field_validator("a")
        @classmethod
        def _check(cls, value: int) -> int:
            return value

    class Two(SettingsPart):
        b: int = 0

        @field_validator("b")
        @classmethod
        def _check(cls, value: int) -> int:
            return value

    with pytest.raises(TypeError, match="'_check' is defined by both One and Two"):
        type("Both", (One, Two), {"__module__": __name__})


# -- the deployment's name in events (OCR_EVENT_SOURCE) -------------------------------------


def test_the_event_source_defaults_to_the_group_and_follows_a_copy_of_it(
    clean_env: pytest.MonkeyPatch,
) -> None:
    assert Settings().ce_source == "ocr-stream/ocr-stream"
    assert Settings(group_id="ocr eu/1").ce_source == "ocr-stream/ocr%20eu%2F1"
    clean_env.setenv("OCR_EVENT_SOURCE", "")  # a blank ConfigMap key: unset
    settings = Settings(group_id="prod")
    # A copy for another group (ocr-replay side-by-side, tests) names that group.
    assert settings.model_copy(update={"group_id": "cmp.prod"}).ce_source == "ocr-stream/cmp.prod"
    clean_env.setenv("OCR_EVENT_SOURCE", "https://ocr.example.com/eu")
    assert Settings(group_id="prod").ce_source == "https://ocr.example.com/eu"


@pytest.mark.parametrize("source", ["has space", "é/x", "a:b c", "ht tp://x",
                                    "http://[1::2::3]/", "%zz"])
def test_an_event_source_that_is_no_uri_reference_is_refused_at_load(
    clean_env: pytest.MonkeyPatch, source: str,
) -> None:
    clean_env.setenv("OCR_EVENT_SOURCE", source)
    with pytest.raises(ValueError, match="event_source") as caught:
        Settings()
    assert "is not a URI-reference (RFC 3986)" in str(caught.value)


def test_the_start_deadline_is_positive(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings().start_timeout_s == 300
    clean_env.setenv("OCR_START_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="start_timeout_s"):
        Settings()
