"""Every console script answers --version with its name and the package version (the
installed scripts are checked the same way by tests/integration/test_install.py)."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from consumer import __version__

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


@pytest.mark.parametrize(("script", "target"), sorted(PYPROJECT["project"]["scripts"].items()))
def test_every_tool_answers_version(
    script: str, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, _, function = target.partition(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f"(ocr-stream {__version__})")
