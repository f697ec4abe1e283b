"""Finish reasons: stop, length, repetition (a loop at the end), error."""

from __future__ import annotations

import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.postprocess.finish import MIN_LOOP_CHARS, MIN_REPEATS, classify_finish, loop_at_end
from schemas.result import FinishReason

FAST = settings(max_examples=200, deadline=None)
PROSE = (
    "The committee reviewed the annual budget and approved three new projects.\n"
    "| Item | Cost |\n|---|---|\n| Roof | 1200 |\n| Paint | 300 |\n"
    "Table of contents ........ 4\n"
)


def test_engine_stop_is_stop_even_with_a_repeating_end() -> None:
    assert classify_finish("stop", PROSE, output_tokens=50, max_tokens=4096) == (
        FinishReason.STOP,
        False,
    )
    rows = PROSE + "| 0 | 0 |\n" * 20  # the model chose to stop after identical rows
    assert classify_finish("stop", rows, output_tokens=4096, max_tokens=4096) == (
        FinishReason.STOP,
        False,
    )


def test_length_and_token_cap_truncate() -> None:
    assert classify_finish("length", PROSE, output_tokens=4096, max_tokens=4096) == (
        FinishReason.LENGTH,
        True,
    )
    # No reason from the engine, but the cap was reached.
    assert classify_finish(None, PROSE, output_tokens=100, max_tokens=100) == (
        FinishReason.LENGTH,
        True,
    )
    assert classify_finish(None, PROSE, output_tokens=99, max_tokens=100) == (
        FinishReason.STOP,
        False,
    )


def test_a_line_repeated_at_the_end_is_repetition() -> None:
    looped = PROSE + "The total amount due is 42 EUR.\n" * 6
    assert classify_finish("length", looped, output_tokens=4096, max_tokens=4096) == (
        FinishReason.REPETITION,
        True,
    )
    # Cut by the cap in the middle of the block: still a loop.
    assert (
        classify_finish("length", looped + "The total am", output_tokens=9, max_tokens=9)[0]
        is FinishReason.REPETITION
    )


def test_a_short_ngram_loop_is_repetition() -> None:
    looped = PROSE + "the the " * 40
    assert classify_finish("length", looped, output_tokens=4096, max_tokens=4096) == (
        FinishReason.REPETITION,
        True,
    )
    assert loop_at_end("x" + "ab" * 40) == 2


def test_short_legitimate_repeats_are_not_loops() -> None:
    assert loop_at_end(PROSE) == 0
    assert loop_at_end("|---|---|---|---|---|") == 0  # a table separator row
    assert loop_at_end("Name: ______________________") == 0  # a form's blank
    assert loop_at_end("ok\n" * 4) == 0  # under MIN_REPEATS
    assert loop_at_end("") == 0


def test_abort_or_nothing_is_error() -> None:
    assert classify_finish("abort", "", output_tokens=0, max_tokens=10) == (
        FinishReason.ERROR,
        False,
    )
    assert classify_finish("abort", "partial", output_tokens=3, max_tokens=10) == (
        FinishReason.ERROR,
        True,
    )
    assert classify_finish(None, "  \n", output_tokens=0, max_tokens=10) == (
        FinishReason.ERROR,
        False,
    )
    # The page hit the cap producing only whitespace: truncated, not an error.
    assert classify_finish("length", "", output_tokens=10, max_tokens=10) == (
        FinishReason.LENGTH,
        True,
    )


def test_loop_detection_is_fast_on_long_pages() -> None:
    rng = random.Random(3)
    text = "".join(rng.choice("abcdefghij klmnop\n") for _ in range(200_000))
    started = time.perf_counter()
    assert loop_at_end(text) == 0
    assert time.perf_counter() - started < 0.05  # it runs on the event loop


BLOCK = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=60).filter(
    lambda block: block.strip() != ""
)


@FAST
@given(st.text(max_size=100), BLOCK)
def test_any_block_repeated_enough_at_the_end_is_found(prefix: str, block: str) -> None:
    repeats = max(MIN_REPEATS, -(-MIN_LOOP_CHARS // len(block))) + 1
    period = loop_at_end(prefix + block * repeats)
    assert period > 0
    assert len(block) % period == 0  # the block itself, or a block it is made of


@FAST
@given(
    st.sampled_from(["stop", "length", "abort", None, "weird"]),
    st.text(max_size=200),
    st.integers(0, 100),
    st.integers(1, 100),
)
def test_classification_invariants(
    reason: str | None, text: str, output_tokens: int, max_tokens: int
) -> None:
    finish, truncated = classify_finish(
        reason, text, output_tokens=output_tokens, max_tokens=max_tokens
    )
    if reason == "stop":
        assert (finish, truncated) == (FinishReason.STOP, False)
    if reason == "length":
        assert truncated and finish in (FinishReason.LENGTH, FinishReason.REPETITION)
    if finish in (FinishReason.LENGTH, FinishReason.REPETITION):
        assert truncated
    if not text.strip() and reason != "length":
        assert finish in (FinishReason.ERROR, FinishReason.STOP)
