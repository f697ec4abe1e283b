"""The README's configuration tables are the settings parts, not copies that drift."""

from __future__ import annotations

from pathlib import Path

from consumer.config import Settings, env_name, markdown_table
from consumer.settings import SettingsPart, parts_of
from producer_tools import cancel, collect, replay_common, submit, topics, watch

README = Path(__file__).resolve().parents[2] / "README.md"

TOOLS: list[tuple[str, type[SettingsPart]]] = [
    ("ocr-submit", submit.SubmitSettings),
    ("ocr-watch", watch.WatchSettings),
    ("ocr-cancel", cancel.CancelSettings),
    ("ocr-collect", collect.CollectSettings),
    ("ocr-topics", topics.TopicsToolSettings),
    ("ocr-replay", replay_common.ReplaySettings),
]


def _between(text: str, marker: str) -> str:
    start = text.index("-->", text.index(f"<!-- {marker}:start")) + 3
    return text[start:text.index(f"<!-- {marker}:end -->")].strip()


def test_config_table_matches_settings() -> None:
    assert _between(README.read_text(), "config-table") == markdown_table().strip(), (
        "README configuration tables are stale: regenerate them with `python -m consumer.config`"
    )


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [name for name in Settings.model_fields if f"`{env_name(name)}`" not in text]
    assert missing == []


def test_the_tool_table_names_the_parts_each_tool_reads() -> None:
    rows = [
        "| Program | Settings parts |",
        "|---|---|",
        "| `ocr-consumer` | every part below |",
        *(
            f"| `{name}` | {', '.join(part.part_title for part in parts_of(settings))} |"
            for name, settings in TOOLS
        ),
    ]
    assert _between(README.read_text(), "tool-settings") == "\n".join(rows)
