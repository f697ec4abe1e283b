"""Settings come from OCR_* variables, and CLI flags override them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumer.config import (
    EngineName,
    Settings,
    add_settings_arguments,
    env_name,
    flag_name,
    markdown_table,
    settings_from_args,
)

pytestmark = pytest.mark.usefixtures("clean_env")


def parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_defaults_are_the_local_stack() -> None:
    settings = Settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.topic_requests == "ocr.requests"
    assert settings.topic_dlq == "ocr.requests.dlq"
    assert settings.engine is EngineName.AUTO
    assert settings.allowed_schemes == ["file", "http", "https", "s3", "inline"]


def test_environment_variables_are_typed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OCR_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    clean_env.setenv("OCR_MAX_PAGES", "5")
    clean_env.setenv("OCR_FETCH_TIMEOUT_S", "2.5")
    clean_env.setenv("OCR_ENFORCE_EAGER", "true")
    clean_env.setenv("OCR_ENGINE", "rapidocr")
    clean_env.setenv("OCR_REDIS_PASSWORD", "s3cret")
    settings = Settings()
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.max_pages == 5
    assert settings.fetch_timeout_s == 2.5
    assert settings.enforce_eager is True
    assert settings.engine is EngineName.RAPIDOCR
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_variables_without_the_prefix_are_ignored(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MAX_PAGES", "5")
    assert Settings().max_pages == 2000


def test_comma_lists(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OCR_ALLOWED_SCHEMES", " file, https ,, ")
    clean_env.setenv("OCR_FILE_ROOTS", "/srv/a,/srv/b")
    settings = Settings()
    assert settings.allowed_schemes == ["file", "https"]
    assert settings.file_roots == [Path("/srv/a"), Path("/srv/b")]


def test_comma_list_with_one_item(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OCR_FILE_ROOTS", "/data/blobs")
    assert Settings().file_roots == [Path("/data/blobs")]


@pytest.mark.parametrize(
    ("name", "value", "location", "message"),
    [
        ("OCR_MAX_PAGES", "0", "max_pages", "Input should be greater than or equal to 1"),
        ("OCR_MAX_PAGES", "many", "max_pages",
         "Input should be a valid integer, unable to parse string as an integer"),
        ("OCR_ENGINE", "gpu", "engine", "Input should be 'auto', 'vllm' or 'rapidocr'"),
        ("OCR_KAFKA_BOOTSTRAP", "  ", "kafka_bootstrap", "Value error, must not be empty"),
        ("OCR_GPU_MEMORY_UTILIZATION", "1.5", "gpu_memory_utilization",
         "Input should be less than or equal to 1"),
    ],
)
def test_bad_values_name_the_setting(
    clean_env: pytest.MonkeyPatch, name: str, value: str, location: str, message: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [(e["loc"], e["msg"]) for e in info.value.errors(include_url=False)] == [
        ((location,), message)
    ]


@pytest.mark.parametrize(
    ("size", "window", "message"),
    [
        ("1", "90", "ngram_size 1 would ban nothing: use 0 to disable, or >= 2"),
        ("30", "20", "ngram_window (20) must be at least ngram_size (30)"),
    ],
)
def test_ngram_rule_must_be_able_to_ban(
    clean_env: pytest.MonkeyPatch, size: str, window: str, message: str
) -> None:
    clean_env.setenv("OCR_NGRAM_SIZE", size)
    clean_env.setenv("OCR_NGRAM_WINDOW", window)
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings()
    clean_env.setenv("OCR_NGRAM_SIZE", "0")  # off: any window will do
    assert Settings().ngram_size == 0


def test_flags_override_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OCR_GROUP_ID", "from-env")
    clean_env.setenv("OCR_MAX_PAGES", "7")
    settings = parse("--group-id", "from-flag", "--engine", "rapidocr", "--file-roots", "/a,/b")
    assert settings.group_id == "from-flag"
    assert settings.engine is EngineName.RAPIDOCR
    assert settings.file_roots == [Path("/a"), Path("/b")]
    assert settings.max_pages == 7  # no flag: the environment still counts


def test_no_flags_means_environment_and_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OCR_TOPIC_RESULTS", "custom.results")
    settings = parse()
    assert settings.topic_results == "custom.results"
    assert settings.topic_requests == "ocr.requests"


def test_flag_values_are_validated() -> None:
    with pytest.raises(ValidationError) as info:
        parse("--max-inflight-tasks", "0")
    assert info.value.errors(include_url=False)[0]["loc"] == ("max_inflight_tasks",)


def test_every_setting_has_a_variable_and_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    table = markdown_table()
    for name in Settings.model_fields:
        assert flag_name(name) in flags
        assert f"`{env_name(name)}`" in table
    assert env_name("kafka_bootstrap") == "OCR_KAFKA_BOOTSTRAP"
    assert flag_name("kafka_bootstrap") == "--kafka-bootstrap"


def test_relative_roots_are_made_absolute_when_settings_load(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each process reads them in its own working directory: fixed there, once, so that a
    # file:// URI and the roots it is checked against name the same folders.
    clean_env.chdir(tmp_path)
    clean_env.setenv("OCR_FILE_ROOTS", "blobs, ../shared/./docs,/srv/abs")
    clean_env.setenv("HOME", str(tmp_path / "home"))
    settings = Settings()
    assert settings.file_roots == [
        tmp_path / "blobs", tmp_path.parent / "shared" / "docs", Path("/srv/abs")
    ]
    assert settings.blob_root == tmp_path / ".run" / "blobs"  # the default, anchored here
    assert parse("--blob-root", "~/hand-over").blob_root == tmp_path / "home" / "hand-over"
    # Moving elsewhere later changes nothing.
    clean_env.chdir("/")
    assert settings.blob_root == tmp_path / ".run" / "blobs"


def test_the_model_card_token_cap_is_the_default_and_fits_the_context() -> None:
    settings = Settings()
    assert (settings.max_tokens, settings.max_model_len) == (8192, 8192)
    with pytest.raises(ValidationError, match="OCR_MAX_TOKENS=9000 is more than "
                       "OCR_MAX_MODEL_LEN=8192"):
        Settings(max_tokens=9000)
    assert Settings(max_tokens=9000, max_model_len=10240).max_tokens == 9000


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("", None),
        ("  ", None),
        ("s3://ocr-artifacts", "s3://ocr-artifacts"),
        ("s3://ocr-artifacts//figures/2026/", "s3://ocr-artifacts/figures/2026"),
        ("file:///srv/ocr-artifacts/", "file:///srv/ocr-artifacts"),
        ("file://localhost/srv/a%20b", "file:///srv/a%20b"),
        ("/srv/ocr artifacts", "file:///srv/ocr%20artifacts"),
    ],
)
def test_artifact_store_uri_forms(given: str, canonical: str | None) -> None:
    assert Settings(artifacts_uri=given).artifacts_uri == canonical


def test_relative_artifact_folder_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings(artifacts_uri=".run/artifacts").artifacts_uri == (
        tmp_path / ".run" / "artifacts"
    ).as_uri()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("http://cdn.example/figures", "is not an artifact store: use s3://bucket/prefix"),
        ("file://srv/figures", "names no absolute folder: use file:///folder"),
        ("s3://Not_A_Bucket/x", "names no valid S3 bucket"),
        ("s3://ocr-artifacts/a/../b", "may not hold '.' or '..' segments"),
        ("s3://ocr-artifacts/my figures", "the key prefix may hold only"),
    ],
)
def test_bad_artifact_stores_are_refused(given: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(artifacts_uri=given)
