"""Post-processing takes time linear in its input, whatever the engine wrote.

It runs on model output, which a hostile page can steer (a page that prints 16,000 spaces
or `[[[[`), and a backtracking regex that goes quadratic holds the GIL: a 16K-character
heading line once took 10.5 s and stalled the event loop. Each case below is one long line
of a repeated unit; linear code handles 32K characters in milliseconds, quadratic code in
seconds, so a generous time bound separates them even on a loaded 2-core machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from consumer.engines.base import PageImage
from consumer.postprocess.grounding import _SPECIAL, _TAG, parse_grounded, strip_tags
from consumer.postprocess.markdown import clean_markdown, markdown_to_text
from consumer.postprocess.page import deepseek_page_text

LENGTH = 32_000
# Linear work on 32K characters takes a few ms; the quadratic cases took 1-40 s. On a
# loaded machine everything slows down, so the bound also scales with the time the same
# function takes on plain prose of the same length.
BOUND_S = 1.0
PROSE_FACTOR = 50

# Pieces of Markdown, HTML and DeepSeek's tags that the regexes key on.
UNITS = [
    " ", "\t", "#", "*", "**a ", "_", "__a ", "~~a ", "[", "![", "[a](", "![a](", "`", "``a",
    "<", "<a ", "</tr", "|", "|--", "| -", "-", ">", "> ", "$$", "\\[", "<|", "<｜", "<|ref|>",
    "<|det|>[[", "[[1,", "<a=", "<b x=", "a*b ", "*a ", "_a ", "= ", "=", "--- ", ":-", " #",
    "<|re", "f|>", " \n", "\n", "&lt;", "<td ", "<|a▁",
]
PREFIXES = ["", "# ", "| ", "- ", "> ", "a", "<"]
SUFFIXES = ["x", "", " #", "|", "**"]
# The contexts every unit is tried in (hypothesis tries the other combinations).
FRAMES = [("", "x"), ("# x", " #"), ("| ", "|"), ("<", "**"), ("> a", "")]

PAGE = PageImage(task_id="t", page=1, image=Image.new("RGB", (64, 64), "white"), dpi=72)


def _page(raw: str) -> str:
    return deepseek_page_text(raw, PAGE).markdown


FUNCTIONS: dict[str, Callable[[str], object]] = {
    "clean_markdown": clean_markdown,
    "markdown_to_text": markdown_to_text,
    "parse_grounded": parse_grounded,
    "strip_tags": strip_tags,
}
# The page as an engine makes it: all of the above in turn (slower, so sampled only).
WHOLE_PAGE: dict[str, Callable[[str], object]] = {**FUNCTIONS, "deepseek_page_text": _page}


def line_of(prefix: str, unit: str, suffix: str, length: int = LENGTH) -> str:
    return prefix + (unit * (length // len(unit) + 1))[:length] + suffix


def elapsed(function: Callable[[str], object], text: str) -> float:
    start = time.perf_counter()
    function(text)
    return time.perf_counter() - start


def slower_than(limit: float, function: Callable[[str], object], text: str) -> float | None:
    """The time `function` takes on `text` when above `limit` twice in a row: a 2-CPU
    machine shared with others can pause any single run (a quadratic one stays slow)."""
    took = elapsed(function, text)
    if took < limit:
        return None
    took = min(took, elapsed(function, text))
    return took if took >= limit else None


def bound(function: Callable[[str], object], length: int = LENGTH) -> float:
    prose = line_of("", "the quick brown fox jumps over the lazy dog. ", "", length)
    return max(BOUND_S, PROSE_FACTOR * min(elapsed(function, prose) for _ in range(3)))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_long_adversarial_lines_take_linear_time(name: str) -> None:
    function = FUNCTIONS[name]
    limit = bound(function)
    for prefix, suffix in FRAMES:
        for unit in UNITS:
            took = slower_than(limit, function, line_of(prefix, unit, suffix))
            # The first slow line fails the test: a quadratic case would take minutes
            # to run through all of them.
            assert took is None, f"{name}: {took:.2f} s on {prefix!r}+{unit!r}*n+{suffix!r}"


def test_the_reported_heading_line() -> None:
    # The kind of line of the report: a heading of 16K characters (3.5-10.5 s before).
    heading = "# x" + " " * 16_000 + "y"
    assert slower_than(bound(markdown_to_text), markdown_to_text, heading) is None
    assert markdown_to_text(heading) == "x y"


def test_nested_tags_formed_by_removal_are_linear() -> None:
    # `<|re<|det|>f|>`: removing the inner tag forms an outer one, 2,000 levels deep.
    depth = 4_000  # 7 s before, quadratically
    text = "<|re" * depth + "<|det|>" + "f|>" * depth + "tail"
    assert slower_than(bound(strip_tags, len(text)), strip_tags, text) is None
    assert strip_tags(text) == "tail"


LIMITS: dict[str, float] = {}  # bound() per function, measured once


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(UNITS), min_size=1, max_size=4).map("".join),
    st.sampled_from(PREFIXES),
    st.sampled_from(SUFFIXES),
)
def test_mixed_units_take_linear_time(unit: str, prefix: str, suffix: str) -> None:
    text = line_of(prefix, unit, suffix, 16_000)
    for name, function in WHOLE_PAGE.items():
        limit = LIMITS.get(name) or LIMITS.setdefault(name, bound(function, 16_000))
        took = slower_than(limit, function, text)
        assert took is None, f"{name}: {took:.2f} s on {prefix!r}+{unit!r}*n+{suffix!r}"


def _strip_tags_by_fixpoint(text: str) -> str:
    """The former strip_tags: both patterns again until nothing changes (an oracle)."""
    while True:
        stripped = _TAG.sub("", _SPECIAL.sub("", text))
        if stripped == text:
            return text
        text = stripped


TAG_SOUP = st.lists(
    st.sampled_from(["<|", "<", "|>", ">", "ref", "det", "/", "re", "f", "|", "｜", "<｜",
                     "｜>", "▁", "end▁of▁sentence", "grounding", " ", "a", "\n", "＜", "＞"]),
    max_size=40,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(TAG_SOUP)
def test_one_pass_strip_agrees_with_repeating_the_patterns(text: str) -> None:
    stripped = strip_tags(text)
    assert stripped == _strip_tags_by_fixpoint(text)
    assert not _TAG.search(stripped) and not _SPECIAL.search(stripped)
