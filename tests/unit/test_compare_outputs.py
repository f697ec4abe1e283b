"""bench/compare_outputs.py: page-by-page agreement of two benchmark runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.compare_outputs import compare, main


def test_compare_counts_only_pages_both_runs_finished() -> None:
    figures = compare(["a", "b", None, "d", "e"], ["a", "x", "c", "d"])
    assert figures == {
        "pages_compared": 3,  # page 2 failed in the first run, page 4 is missing
        "pages_same": 2,
        "share_same": 0.6667,
        "first_differing_pages": [1],
    }
    assert compare([None], ["a"])["share_same"] is None


def test_main_reads_top_level_or_pass_digests(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"output_digests": ["a", "b"], "passes": {"p": {}}}))
    second.write_text(json.dumps({"output_digests": ["a", "b"]}))
    assert main([str(first), str(second)]) == 0
    second.write_text(json.dumps({"output_digests": ["a", "c"]}))
    assert main([str(first), str(second)]) == 1
    second.write_text(json.dumps({"output_digests": [None, None]}))
    assert main([str(first), str(second)]) == 2
    with pytest.raises(SystemExit, match="no output_digests in pass 'p'"):
        main([str(first), str(second), "--pass", "p"])
