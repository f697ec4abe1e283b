"""Markdown clean-up, Markdown to text, and line-level OCR to page text."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from consumer.page_image import PageImage
from consumer.postprocess.markdown import clean_markdown, markdown_to_text
from consumer.postprocess.page import Line, lines_page_text, reading_rows

FAST = settings(max_examples=200, deadline=None)


def test_clean_markdown_removes_tags_tokens_and_cut_off_tags() -> None:
    raw = (
        "# T\n\n\n\n<|ref|>x<|/ref|>Body  \n\\(a \\coloneqq b\\)<table><tr><td<｜end▁of▁sentence｜>"
    )
    assert clean_markdown(raw) == "# T\n\nxBody\n\\(a := b\\)<table><tr>"


def test_clean_markdown_keeps_text_that_only_looks_like_a_tag() -> None:
    assert clean_markdown("if a <b holds") == "if a <b holds"
    assert clean_markdown("a < b and c > d") == "a < b and c > d"


def test_markdown_to_text_headings_emphasis_links_images() -> None:
    md = (
        "# Title #\n\n## Sub\n\nSome **bold**, *em*, _em2_, ~~gone~~ and `code`; "
        "snake_case_name stays.\n\n![figure](t/page-1-fig-1.png)\n\n"
        "See [the site](https://example.com).\n> quoted\n- item one\n* item two\n1. first"
    )
    assert markdown_to_text(md) == (
        "Title\n\nSub\n\nSome bold, em, em2, gone and code; snake_case_name stays.\n\n"
        "See the site.\nquoted\nitem one\nitem two\n1. first"
    )


def test_markdown_to_text_tables() -> None:
    pipes = "| Name | Qty |\n|---|:---:|\n| apple | 3 |\n| pear |  |"
    assert markdown_to_text(pipes) == "Name Qty\napple 3\npear"
    html = (
        "<table><tr><th>Name</th><th>Qty</th></tr>"
        "<tr><td>a &amp; b</td><td>3</td></tr></table>\nAfter"
    )
    assert markdown_to_text(html) == "Name Qty\na & b 3\n\nAfter"


def test_markdown_to_text_math_and_blank_lines() -> None:
    md = "\\[ E = mc^2 \\]\n\n\n\ninline \\(x\\) and $$y$$\n\n```python\nprint(1)\n```\n"
    assert markdown_to_text(md) == "E = mc^2\n\ninline x and y\n\nprint(1)"


@FAST
@given(st.text(max_size=200))
def test_markdown_helpers_never_raise(md: str) -> None:
    text = markdown_to_text(clean_markdown(md))
    assert "\n\n\n" not in text
    assert text == text.strip()


# ------------------------------------------------------------------ line-level engines


def page(width: int = 1000, height: int = 1000, pdf: bool = True) -> PageImage:
    return PageImage(
        "t",
        1,
        Image.new("RGB", (width, height)),
        144,
        width_pt=500.0 if pdf else None,
        height_pt=500.0 if pdf else None,
    )


LINES: list[Line] = [
    ("Title line", (100, 100, 600, 130), 0.99),
    ("left cell", (100, 140, 300, 170), 0.9),
    ("right cell", (500, 142, 700, 171), 0.8),  # same row, slightly lower
    ("second row", (100, 175, 400, 205), 0.95),  # small gap: same paragraph
    ("# after gap", (100, 300, 400, 330), 0.97),  # a blank line's gap: new paragraph
]


def test_reading_rows_groups_side_by_side_lines() -> None:
    shuffled = LINES[:]
    random.Random(7).shuffle(shuffled)
    rows = reading_rows(shuffled)
    assert [[line[0] for line in row] for row in rows] == [
        ["Title line"],
        ["left cell", "right cell"],
        ["second row"],
        ["# after gap"],
    ]


def test_lines_page_text_paragraphs_blocks_and_escaping() -> None:
    result = lines_page_text(list(reversed(LINES)), page())
    assert result.markdown == "Title line\nleft cell right cell\nsecond row\n\n\\# after gap"
    assert result.text == "Title line\nleft cell right cell\nsecond row\n\n# after gap"
    assert [block.text for block in result.blocks] == [
        "Title line",
        "left cell",
        "right cell",
        "second row",
        "# after gap",
    ]
    first = result.blocks[0]
    assert first.label == "text"
    assert first.bbox_px == [100, 100, 600, 130]
    assert first.bbox_pdf == [50, 50, 300, 65]
    assert first.confidence == 0.99


def test_lines_page_text_clamps_boxes_and_drops_empty_lines() -> None:
    lines: list[Line] = [
        ("  ", (0, 0, 10, 10), 0.9),
        ("out", (-20, 950, 1200, 1100), 1.5),
        ("nan", (float("nan"), 10, 20, 30), float("nan")),
    ]
    result = lines_page_text(lines, page(pdf=False))
    assert [block.text for block in result.blocks] == ["nan", "out"]
    assert result.blocks[1].bbox_px == [0, 950, 1000, 1000]
    assert result.blocks[1].confidence == 1.0
    assert result.blocks[0].confidence == 0.0
    assert all(block.bbox_pdf is None for block in result.blocks)
    assert lines_page_text([], page()).markdown == ""


BOXES = st.tuples(
    st.floats(-100, 1200), st.floats(-100, 1200), st.floats(-100, 1200), st.floats(-100, 1200)
)


@FAST
@given(st.lists(st.tuples(st.text(max_size=12), BOXES, st.floats(-1, 2)), max_size=20))
def test_lines_page_text_boxes_fit_the_image(lines: list[Line]) -> None:
    result = lines_page_text(lines, page(800, 600))
    assert len(result.blocks) == sum(1 for text, _, _ in lines if text.split())
    for block in result.blocks:
        x1, y1, x2, y2 = block.bbox_px
        assert 0 <= x1 <= x2 <= 800 and 0 <= y1 <= y2 <= 600
        assert block.bbox_pdf is not None
        px1, py1, px2, py2 = block.bbox_pdf
        assert 0 <= px1 <= px2 <= 500 and 0 <= py1 <= py2 <= 500
        assert block.confidence is not None and 0 <= block.confidence <= 1


@pytest.mark.parametrize("line", ["[" * 30_000, "**a " * 10_000, "~~a " * 10_000, "![" * 10_000])
def test_unclosed_openers_cost_linear_time(line: str) -> None:
    # A looping page can emit a line of openers with no closer. Each opener used to scan to
    # the end of the line for its closer: quadratic, 3.6-16 s for these on the 2-CPU VM
    # with the GIL held; bounded spans take well under a second.
    began = time.perf_counter()
    text = markdown_to_text(line)
    assert time.perf_counter() - began < 3.0
    assert text  # the openers stay as text
