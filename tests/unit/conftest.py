"""Fixtures shared by unit tests of settings and clients."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.tls import TlsFiles, make_tls_files


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No OCR_* variable of the calling shell (CI, make) may leak into a settings test."""
    for name in list(os.environ):
        if name.startswith("OCR_"):
            monkeypatch.delenv(name)
    yield monkeypatch


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server certificate for localhost and a client certificate, as PEM files."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))
