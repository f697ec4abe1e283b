"""The operator docs name only things that exist: every setting (`OCR_*`), metric (`ocr_*`)
and error code (UPPER_SNAKE) that README.md, docs/operations.md, docs/gateway.md and
deploy/k8s/README.md mention must be defined by the code, so a rename or a removal cannot
leave the docs describing something that is gone.

What counts as defined: a Settings or GatewaySettings field's variable (or its `_FILE` form
for secrets), a metric series of ConsumerMetrics or GatewayMetrics, an ErrorCode, a value of
the settings' enums, or a name written in the code or deploy files themselves (stack.sh
variables, DLQ header names, vLLM's variables we set). `PREFIX_*` stands for the names it
prefixes, and must prefix one. Names that belong to other tools (and test switches) are
listed in EXTERNAL, each with whose it is.
"""

from __future__ import annotations

import re
import subprocess
from enum import Enum
from functools import cache
from pathlib import Path

import pytest

from consumer import config
from consumer.config import Settings, env_name
from consumer.metrics import ConsumerMetrics
from consumer.settings.secret_files import FILE_SUFFIX, SECRET_FIELDS
from producer_tools.gateway.metrics import GatewayMetrics
from producer_tools.gateway.settings import GatewaySettings
from producer_tools.gateway.settings import env_name as gateway_env_name
from schemas.common import ErrorCode

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/operations.md", "docs/gateway.md", "deploy/k8s/README.md")
# Where a name counts as written in the code: sources, scripts, images, manifests.
CODE_GLOBS = (
    "consumer/**/*.py", "producer_tools/**/*.py", "schemas/**/*.py", "deploy/**/*.sh",
    "deploy/**/*.py", "deploy/Dockerfile", "deploy/**/*.yaml", "docker-compose.yml", "Makefile",
)
# Other tools' names the docs rightly mention (ours are checked against the code).
EXTERNAL = {
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",  # boto3's
    "OCR_UPDATE_SCREENSHOT",  # a switch of tests/integration/test_gateway_browser.py
}

SETTING = re.compile(r"\bOCR_[A-Z0-9_]*[A-Z0-9](?:_\*)?")
METRIC = re.compile(r"\b(?:ocr|process|python)_[a-z0-9_]*[a-z0-9]\b")
# An UPPER_SNAKE name in backticks, alone (error codes, enum values, variables).
UPPER = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*(?:_\*)?)`")


@cache
def code_text() -> str:
    files = {path for pattern in CODE_GLOBS for path in REPO.glob(pattern)}
    return "\n".join(path.read_text(errors="replace") for path in sorted(files))


def in_code(name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", code_text()) \
        is not None


@cache
def settings_names() -> frozenset[str]:
    names = {env_name(field) for field in Settings.model_fields}
    names |= {env_name(field) + FILE_SUFFIX for field in SECRET_FIELDS}
    names |= {gateway_env_name(field) for field in GatewaySettings.model_fields}
    return frozenset(names)


@cache
def metric_names() -> frozenset[str]:
    return frozenset(ConsumerMetrics().metric_names() | GatewayMetrics().metric_names())


@cache
def enum_values() -> frozenset[str]:
    values = {member.name for member in ErrorCode}
    for item in vars(config).values():
        if isinstance(item, type) and issubclass(item, Enum):
            values |= {str(member.value) for member in item} | {m.name for m in item}
    return frozenset(values)


def _known(name: str, known: frozenset[str] | set[str]) -> bool:
    if name.endswith("*"):
        prefix = name.rstrip("*")
        return any(item.startswith(prefix) for item in known) or in_code_prefix(prefix)
    return name in known or in_code(name)


def in_code_prefix(prefix: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(prefix)}[A-Z0-9_]", code_text()) is not None


def unknown_names(text: str) -> list[str]:
    """The settings, metrics and upper-case names in `text` the code does not define."""
    missing: list[str] = []
    for name in sorted(set(SETTING.findall(text))):
        if name not in EXTERNAL and not _known(name, settings_names()):
            missing.append(f"setting {name}")
    for name in sorted(set(METRIC.findall(text))):
        if name not in metric_names() and not in_code(name):
            missing.append(f"metric {name}")
    for name in sorted(set(UPPER.findall(text))):
        if "_" not in name or name.startswith("OCR_") or name in EXTERNAL:
            continue  # one word (PLAIN, SSL) is no name to check; settings are above
        if not _known(name, enum_values() | settings_names()):
            missing.append(f"name {name}")
    return missing


@pytest.mark.parametrize("doc", DOCS)
def test_documented_names_exist_in_the_code(doc: str) -> None:
    assert unknown_names((REPO / doc).read_text()) == []


def test_a_name_that_does_not_exist_is_caught() -> None:
    # The check can fail: what a rename would leave behind in the docs.
    text = (
        "Set `OCR_PAGE_TIMEOUT` (was it _S?) and watch `ocr_engine_kv_cache_usage`; a task "
        "ends `SOURCE_GONE`. `OCR_KAFKA_SASL_*` and `SOURCE_*` are fine, `OCR_NOPE_*` is not."
    )
    assert unknown_names(text) == [
        "setting OCR_NOPE_*", "setting OCR_PAGE_TIMEOUT",
        "metric ocr_engine_kv_cache_usage", "name SOURCE_GONE",
    ]


def test_the_docs_are_tracked_files() -> None:
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", *DOCS], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(listed) == sorted(DOCS)
