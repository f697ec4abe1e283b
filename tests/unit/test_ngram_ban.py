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


STEPS = st.lists(
    st.tuples(
        st.lists(st.integers(0, 7), max_size=3, unique=True),  # rows whose requests finish
        st.integers(0, 3),  # new requests
        st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=2),  # swaps
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_book_tracks_a_simulated_persistent_batch(
    steps: list[tuple[list[int], int, list[tuple[int, int]]]],
) -> None:
    """A batch run the way vLLM's persistent batch runs: finished requests leave holes,
    new ones take the lowest free rows (a reused row is not reported as removed), the batch
    is condensed by moving its last row into each hole, then rows are swapped. After every
    update each row of the book holds the very output list of the request in that row."""
    batch: dict[int, int] = {}  # row -> request
    outputs: dict[int, list[int]] = {}
    ruled: set[int] = set()
    book = NgramBook()
    for finished, arriving, swaps in steps:
        removed = [row for row in finished if row in batch]
        for row in removed:
            del batch[row]
        added: list[tuple[int, Any, Any, list[int]]] = []
        for _ in range(arriving):
            row = min(set(range(len(batch) + 1)) - set(batch))
            request = len(outputs)
            outputs[request] = [request]
            if request % 3:  # every third request asks for no rule
                ruled.add(request)
            batch[row] = request
            rule = NgramRule(2, 4) if request in ruled else None
            added.append((row, Params(rule), None, outputs[request]))
        moved: list[tuple[int, int, Direction]] = []
        while batch and (holes := set(range(max(batch))) - set(batch)):
            last, hole = max(batch), min(holes)
            batch[hole] = batch.pop(last)
            moved.append((last, hole, Direction.UNIDIRECTIONAL))
        for first, second in swaps:
            if first != second and first in batch and second in batch:
                batch[first], batch[second] = batch[second], batch[first]
                moved.append((first, second, Direction.SWAP))
        update = Update(
            removed=[row for row in removed if row not in batch], added=added, moved=moved
        )
        book.update(update)
        expected = {row: id(outputs[req]) for row, req in batch.items() if req in ruled}
        assert {row: id(entry.output_ids) for row, entry in book._rows.items()} == expected
    book.update(None)  # a step without changes
    assert set(book.rows()) == {row for row, req in batch.items() if req in ruled}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(SEQUENCES, RULES), min_size=1, max_size=8))
def test_rows_with_different_rules_in_one_batch(rows: list[tuple[list[int], NgramRule]]) -> None:
    book = NgramBook()
    book.update(
        Update(added=[(index, Params(rule), None, ids) for index, (ids, rule) in enumerate(rows)])
    )
    found: list[set[int]] = [set() for _ in rows]
    banned_rows, tokens = book.banned()
    for row, token in zip(banned_rows.tolist(), tokens.tolist(), strict=True):
        found[row].add(token)
    assert found == [reference_bans(ids, rule) for ids, rule in rows]


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


def test_placeholder_ids_are_never_banned() -> None:
    # vLLM fills its lists with -1 until a step's tokens reach the CPU; a -1 that slipped
    # through must not become a ban of the last vocabulary id (negative indexing).
    book = NgramBook()
    book.update(Update(added=[(0, Params(NgramRule(2, 8)), None, [5, -1, 5])]))
    rows, tokens = book.banned()
    assert rows.size == tokens.size == 0


# What vLLM does to a request's list between two steps: one sampled token (the usual
# case), nothing, a -1 placeholder then its token written over it, several tokens at once
# (speculative decoding), tokens dropped (a failed KV load), or the whole list replaced.
EDITS = st.sampled_from(["append", "append", "append", "none", "placeholder", "burst", "drop"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.lists(EDITS, min_size=4, max_size=4), st.booleans()), max_size=40),
    st.integers(0, 2**32 - 1),
)
def test_bans_stay_exact_while_the_batch_decodes(
    steps: list[tuple[list[str], bool]], seed: int
) -> None:
    """The book reads each list's new tokens step by step: after any mix of edits and row
    swaps it bans what a fresh reading of the whole lists bans."""
    rng = np.random.default_rng(seed)
    rule = NgramRule(3, 8, frozenset({3}))
    outputs: list[list[int]] = [[] for _ in range(4)]
    pending: set[int] = set()  # rows whose list ends with a placeholder
    book = NgramBook()
    book.update(Update(added=[(row, Params(rule), None, outputs[row]) for row in range(4)]))
    for edits, swap in steps:
        for row, edit in enumerate(edits):
            ids = outputs[row]
            if row in pending:
                ids[-1] = int(rng.integers(0, 4))  # the placeholder's token arrives
                pending.discard(row)
            elif edit == "append":
                ids.append(int(rng.integers(0, 4)))
            elif edit == "placeholder":
                ids.append(-1)
                pending.add(row)
            elif edit == "burst":
                ids.extend(rng.integers(0, 4, size=3).tolist())
            elif edit == "drop" and ids:
                del ids[-int(rng.integers(1, len(ids) + 1)) :]
        if swap:
            outputs[0], outputs[1] = outputs[1], outputs[0]
            pending = {({0: 1, 1: 0}.get(row, row)) for row in pending}
            book.update(Update(moved=[(0, 1, Direction.SWAP)]))
        rows, tokens = book.banned()
        found: list[set[int]] = [set() for _ in outputs]
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            found[row].add(token)
        expected = [reference_bans(ids, rule) - {-1} for ids in outputs]
        assert found == expected


def test_rows_freed_by_finished_requests_are_reused_clean() -> None:
    rule = NgramRule(2, 4)
    book = NgramBook()
    first = [1, 2, 1]
    book.update(Update(added=[(0, Params(rule), None, first)]))
    assert book.banned()[1].tolist() == [2]
    # The next request takes the same batch row without a removal, then decodes.
    second: list[int] = []
    book.update(Update(added=[(0, Params(rule), None, second)]))
    assert book.banned()[0].size == 0
    second.extend([7, 8])
    assert book.banned()[0].size == 0  # nothing of the first request's tokens is left
    second.append(7)
    assert book.banned()[1].tolist() == [8]
    # A move onto a tracked row drops that row's request.
    third = [5, 6, 5]
    book.update(
        Update(added=[(1, Params(rule), None, third)], moved=[(1, 0, Direction.UNIDIRECTIONAL)])
    )
    assert sorted(book.rows()) == [0]
    rows, tokens = book.banned()
    assert rows.tolist() == [0] and tokens.tolist() == [6]
