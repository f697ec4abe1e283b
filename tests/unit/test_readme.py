"""The README's configuration table is the Settings class, not a copy that drifts."""

from __future__ import annotations

from pathlib import Path

from consumer.config import Settings, env_name, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_config_table_matches_settings() -> None:
    text = README.read_text()
    start = text.index("-->", text.index("<!-- config-table:start")) + 3
    end = text.index("<!-- config-table:end -->")
    assert text[start:end].strip() == markdown_table().strip(), (
        "README configuration table is stale: regenerate it with `python -m consumer.config`"
    )


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [name for name in Settings.model_fields if f"`{env_name(name)}`" not in text]
    assert missing == []
