"""Secrets from files (OCR_<NAME>_FILE, OCR_SECRETS_DIR) and secret flags refused."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from consumer.app import main as consumer_main
from consumer.config import Settings
from consumer.settings import add_settings_arguments, settings_from_args
from consumer.settings.secret_files import SECRET_FIELDS, SECRET_FLAG_FIELDS

SASL = {"OCR_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def test_every_secret_setting_can_come_from_a_file() -> None:
    secret_typed = {
        name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
    }
    assert secret_typed <= set(SECRET_FIELDS)
    assert secret_typed == set(SECRET_FLAG_FIELDS)


def test_file_variables(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "user").write_text("ocr-stream\n")
    (tmp_path / "kafka").write_text("kafka pass with spaces \n")  # one newline dropped only
    (tmp_path / "redis").write_text("r3dis")
    for key, value in SASL.items():
        clean_env.setenv(key, value)
    clean_env.setenv("OCR_KAFKA_SASL_USERNAME_FILE", str(tmp_path / "user"))
    clean_env.setenv("OCR_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "kafka"))
    clean_env.setenv("OCR_REDIS_PASSWORD_FILE", str(tmp_path / "redis"))
    settings = Settings()
    assert settings.kafka_sasl_username == "ocr-stream"
    assert _secret(settings.kafka_sasl_password) == "kafka pass with spaces "
    assert _secret(settings.redis_password) == "r3dis"


def test_secrets_dir_as_kubernetes_mounts_a_secret(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A Secret volume: one file per key, keys named like the variables (secret.example.yaml),
    # plus the ..data symlinks kubelet adds, which must not matter.
    (tmp_path / "..data").mkdir()
    (tmp_path / "OCR_REDIS_PASSWORD").write_text("from-dir")
    (tmp_path / "OCR_KAFKA_SASL_USERNAME").write_text("dir-user")
    (tmp_path / "OCR_KAFKA_SASL_PASSWORD").write_text("dir-pass")
    for key, value in SASL.items():
        clean_env.setenv(key, value)
    clean_env.setenv("OCR_SECRETS_DIR", str(tmp_path))
    settings = Settings()
    assert _secret(settings.redis_password) == "from-dir"
    assert settings.kafka_sasl_username == "dir-user"
    # A variable (or a _FILE) overrides the folder; the folder fills the rest.
    clean_env.setenv("OCR_REDIS_PASSWORD", "from-env")
    other = tmp_path.parent / "pw"
    other.write_text("from-file")
    clean_env.setenv("OCR_KAFKA_SASL_PASSWORD_FILE", str(other))
    settings = Settings()
    assert _secret(settings.redis_password) == "from-env"
    assert _secret(settings.kafka_sasl_password) == "from-file"
    assert settings.kafka_sasl_username == "dir-user"


def test_secrets_dir_given_as_a_flag(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "OCR_REDIS_PASSWORD").write_text("x")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, Settings)
    settings = settings_from_args(parser.parse_args(["--secrets-dir", str(tmp_path)]))
    assert _secret(settings.redis_password) == "x"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OCR_REDIS_PASSWORD_FILE": "/nonexistent/pw"}, "OCR_REDIS_PASSWORD_FILE: /nonexistent"),
        ({"OCR_REDIS_PASSWORD_FILE": "/"}, "is a folder"),
        (
            {"OCR_REDIS_PASSWORD_FILE": "/etc/hostname", "OCR_REDIS_PASSWORD": "x"},
            "OCR_REDIS_PASSWORD and OCR_REDIS_PASSWORD_FILE are both set",
        ),
        ({"OCR_SECRETS_DIR": "/nonexistent-secrets"}, "is not a folder"),
    ],
)
def test_problems_are_settings_errors_naming_the_variable(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(ValidationError, match=message) as caught:
        Settings()
    assert "x'" not in str(caught.value)  # hide_input_in_errors: no value echoed


def test_an_unreadable_file_is_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"\xff\xfe not utf-8")
    clean_env.setenv("OCR_REDIS_PASSWORD_FILE", str(path))
    with pytest.raises(ValidationError, match="not UTF-8"):
        Settings()


@pytest.mark.parametrize("flag", ["--redis-password", "--kafka-sasl-password"])
def test_secret_flags_are_refused_with_what_to_do(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        consumer_main([flag, "hunter2"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "refused" in err and "ps" in err and "_FILE" in err
    assert "hunter2" not in err


def test_a_tool_refuses_them_too() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "producer_tools.submit", "--kafka-sasl-password", "hunter2",
         "x.pdf"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "--kafka-sasl-password is refused" in done.stderr
