"""The batched no-repeat n-gram rule against a plain, one-page-at-a-time reading of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.engines.ngram_ban import (
    NgramBook,
    NgramRule,
    banned_tokens,
    recent_tokens,
    rule_extra_args,
    rule_from_extra_args,
)


def reference_bans(output_ids: list[int], rule: NgramRule) -> set[int]:
    """DeepSeek-OCR's rule read literally: every earlier n-gram inside the window whose
    first n-1 tokens equal the last n-1 tokens bans the token that completed it."""
    n, length = rule.ngram, len(output_ids)
    if length < n:
        return set()
    prefix = output_ids[length - (n - 1) :]
    banned = set()
    for start in range(max(0, length - rule.window), length - n + 1):
        if output_ids[start : start + n - 1] == prefix:
            banned.add(output_ids[start + n - 1])
    return banned - rule.whitelist


def batched_bans(outputs: list[list[int]], rule: NgramRule) -> list[set[int]]:
    book = NgramBook()
    book.update(Update(added=[(row, Params(rule), None, ids) for row, ids in enumerate(outputs)]))
    rows, tokens = book.banned()
    found: list[set[int]] = [set() for _ in outputs]
    for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
        found[row].add(token)
    return found


@dataclass
class Params:
    rule: NgramRule | None

    @property
    def extra_args(self) -> dict[str, Any] | None:
        return rule_extra_args(self.rule) if self.rule else None


class Direction(Enum):
    UNIDIRECTIONAL = 1
    SWAP = 2


@dataclass
class Update:
    removed: list[int] = field(default_factory=list)
    added: list[tuple[int, Any, Any, list[int]]] = field(default_factory=list)
    moved: list[tuple[int, int, Direction]] = field(default_factory=list)


# Few distinct tokens, so that repeats (and bans) are common.
SEQUENCES = st.lists(st.integers(0, 3), max_size=60)
RULES = st.builds(
    lambda n, extra, white: NgramRule(n, n + extra, frozenset(white)),
    st.integers(2, 6),
    st.integers(0, 20),
    st.sets(st.integers(0, 3), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(SEQUENCES, min_size=1, max_size=8), RULES)
def test_batched_rule_bans_exactly_what_the_literal_rule_bans(
    outputs: list[list[int]], rule: NgramRule
) -> None:
    assert batched_bans(outputs, rule) == [reference_bans(ids, rule) for ids in outputs]


def test_deepseek_settings_on_a_looping_page() -> None:
    rule = NgramRule(30, 90, frozenset({7}))
    loop = list(range(10, 40))  # a 30-token phrase
    ids = loop + loop[:29]  # ...repeated up to its last token: that token is banned
    assert batched_bans([ids], rule) == [{39}]
    assert reference_bans(ids, rule) == {39}
    far = loop + list(range(100, 161)) + loop[:29]  # the first copy is out of the window
    assert batched_bans([far], rule) == [set()]
    table = [7] * 40  # whitelisted tokens repeat freely (<td> in a table)
    assert batched_bans([table], rule) == [set()]


def test_recent_tokens_pads_on_the_left() -> None:
    history, filled = recent_tokens([[1, 2, 3], [], list(range(10))], 4)
    assert history.tolist() == [[-1, 1, 2, 3], [-1, -1, -1, -1], [6, 7, 8, 9]]
    assert filled.tolist() == [3, 0, 4]
    rows, tokens = banned_tokens(np.zeros((0, 4), dtype=np.int64), np.zeros(0, np.int64), 2)
    assert rows.size == tokens.size == 0
    # Rows shorter than the n-gram ban nothing: their padding must not match itself.
    rows, tokens = banned_tokens(*recent_tokens([[], [4]], 4), 3)
    assert rows.size == tokens.size == 0


def test_rule_round_trips_through_extra_args_and_rejects_bad_values() -> None:
    rule = NgramRule(30, 90, frozenset({128821, 128822}))
    assert rule_from_extra_args(rule_extra_args(rule)) == rule
    assert rule_from_extra_args(None) is None
    assert rule_from_extra_args({"ngram_size": 30}) is None  # vLLM's processor's keys
    bad: list[dict[str, Any]] = [
        {"no_repeat_ngram_size": 1},
        {"no_repeat_ngram_size": True},
        {"no_repeat_ngram_size": "30"},
        {"no_repeat_ngram_size": 30, "no_repeat_window": 29},
        {"no_repeat_ngram_size": 3, "no_repeat_whitelist": ["td"]},
        {"no_repeat_ngram_size": 3, "no_repeat_whitelist": 5},
    ]
    for extra_args in bad:
        with pytest.raises(ValueError, match="no_repeat_"):
            rule_from_extra_args(extra_args)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("remove"), st.integers(0, 5), st.just(False)),
        st.tuples(st.just("move"), st.integers(0, 5), st.integers(0, 5)),
        st.tuples(st.just("swap"), st.integers(0, 5), st.integers(0, 5)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_book_follows_vllms_batch_moves(ops: list[tuple[str, int, Any]]) -> None:
    """Rows added, removed, moved and swapped, one BatchUpdate each: the book tracks the
    same requests at the same rows as a plain dict of the batch does."""
    rule = NgramRule(2, 4)
    book = NgramBook()
    model: dict[int, list[int]] = {}
    for number, (op, index, arg) in enumerate(ops):
        ids = [number]
        if op == "add":
            book.update(Update(added=[(index, Params(rule if arg else None), None, ids)]))
            if arg:
                model[index] = ids
            else:
                model.pop(index, None)
        elif op == "remove":
            book.update(Update(removed=[index]))
            model.pop(index, None)
        else:
            direction = Direction.SWAP if op == "swap" else Direction.UNIDIRECTIONAL
            book.update(Update(moved=[(index, arg, direction)]))
            a, b = model.pop(index, None), model.pop(arg, None)
            if a is not None:
                model[arg] = a
            if b is not None and op == "swap":
                model[index] = b
        assert {row: entry.output_ids for row, entry in book._rows.items()} == model
    assert set(book.rows()) == set(model)
    book.update(None)
    assert len(book) == len(model)


def test_book_sees_tokens_appended_in_place_and_mixed_whitelists() -> None:
    plain, white = NgramRule(2, 8), NgramRule(2, 8, frozenset({5}))
    first: list[int] = []
    second: list[int] = []
    third: list[int] = []
    book = NgramBook()
    book.update(
        Update(
            added=[
                (0, Params(plain), None, first),
                (1, Params(plain), None, second),
                (3, Params(white), None, third),
            ]
        )
    )
    assert book.banned()[0].size == 0
    first.extend([5, 6, 5])  # vLLM appends to its own list; the book holds that list
    second.extend([9, 5, 9, 6, 9])
    third.extend([9, 5, 9, 6, 9])  # the same tokens, but 5 is whitelisted here
    rows, tokens = book.banned()
    pairs = sorted(zip(rows.tolist(), tokens.tolist(), strict=True))
    assert pairs == [(0, 6), (1, 5), (1, 6), (3, 6)]
