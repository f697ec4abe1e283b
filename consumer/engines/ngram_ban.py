"""DeepSeek-OCR's no-repeat n-gram rule, computed for a whole batch at once.

The rule (DeepSeek's own scripts, and vLLM's `NGramPerReqLogitsProcessor`): with n-gram
size `n` and window `w`, a page may not emit a token that would complete an n-gram already
present among its last `w` output tokens, i.e. for every start `i` in the window whose
`n - 1` tokens equal the page's last `n - 1` tokens, the token that followed them there is
banned for the next step. Whitelisted tokens (`<td>`, `</td>`) are never banned.

vLLM's version runs that search in Python once per page per step, inside the engine core,
while the GPU waits for the sampler: ~60 tuple comparisons of 29 tokens per page, for 256
pages, ~1,000 times a page. Here the same search is one numpy expression over a
`[pages, window]` array, and the bans land on the logits as one indexed write
(`consumer/engines/ngram_processor.py`). This module holds everything but the vLLM glue,
so the rule and the batch bookkeeping are tested on machines without vLLM or torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

# `SamplingParams.extra_args` keys this rule reads. They differ from the keys of vLLM's
# per-request processor so that both can be registered in one engine and each page picks
# one (the decoding benchmark compares them on the same engine).
NGRAM_KEY = "no_repeat_ngram_size"
WINDOW_KEY = "no_repeat_window"
WHITELIST_KEY = "no_repeat_whitelist"

TokenArray = NDArray[np.int64]
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class NgramRule:
    ngram: int
    window: int
    whitelist: frozenset[int] = frozenset()


def rule_from_extra_args(extra_args: Mapping[str, Any] | None) -> NgramRule | None:
    """The rule a request asks for, None when it asks for none; ValueError when malformed."""
    if not extra_args or extra_args.get(NGRAM_KEY) is None:
        return None
    ngram = extra_args[NGRAM_KEY]
    window = extra_args.get(WINDOW_KEY, 100)
    whitelist = extra_args.get(WHITELIST_KEY) or ()
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 2:
        raise ValueError(f"{NGRAM_KEY} must be an integer >= 2, got {ngram!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < ngram:
        raise ValueError(f"{WINDOW_KEY} must be an integer >= {NGRAM_KEY}, got {window!r}")
    if not isinstance(whitelist, Iterable) or not all(
        isinstance(token, int) and not isinstance(token, bool) for token in whitelist
    ):
        raise ValueError(f"{WHITELIST_KEY} must be a list of token ids, got {whitelist!r}")
    return NgramRule(ngram, window, frozenset(whitelist))


def rule_extra_args(rule: NgramRule) -> dict[str, Any]:
    """`SamplingParams.extra_args` that ask for `rule` (the inverse of the above)."""
    return {
        NGRAM_KEY: rule.ngram,
        WINDOW_KEY: rule.window,
        WHITELIST_KEY: sorted(rule.whitelist),
    }


def recent_tokens(outputs: Sequence[Sequence[int]], window: int) -> tuple[TokenArray, TokenArray]:
    """Each row's last `window` tokens, right-aligned (padding -1), and how many are real."""
    history = np.full((len(outputs), window), -1, dtype=np.int64)
    filled = np.zeros(len(outputs), dtype=np.int64)
    for row, ids in enumerate(outputs):
        tail = ids[-window:]
        if tail:
            history[row, window - len(tail) :] = tail
            filled[row] = len(tail)
    return history, filled


def banned_tokens(
    history: TokenArray, filled: TokenArray, ngram: int
) -> tuple[TokenArray, TokenArray]:
    """(rows, tokens): for each row of `recent_tokens`, the tokens the rule bans next.

    A row may appear several times (one entry per matching n-gram), and a token twice.
    """
    rows, window = history.shape
    if rows == 0 or ngram < 2 or window < ngram:
        return _EMPTY, _EMPTY
    starts = window - ngram + 1  # n-grams that end inside the window
    suffix_at = window - ngram + 1  # where each row's last n - 1 tokens begin
    # The n-gram at start s matches when history[s + k] == history[suffix_at + k] for every
    # k < n - 1. Compared one k at a time over the whole batch, last token first: each
    # comparison is a contiguous [rows, starts] slice, and in text, which rarely repeats,
    # few candidates survive the first one, and those few are gathered and compared in
    # full. A looping page (what the rule is for) keeps many: then every k is compared, at
    # a cost that does not depend on how many survive.
    candidate = history[:, ngram - 2 : ngram - 2 + starts] == history[:, -1:]
    # Only n-grams wholly inside the real tokens; a row shorter than ngram has none, which
    # also keeps its padded suffix from matching anything.
    candidate &= np.arange(starts)[None, :] >= (window - filled)[:, None]
    unverified = ngram - 2  # tokens 0 .. unverified - 1 of each candidate still to compare
    while unverified:
        left = np.count_nonzero(candidate)
        if left == 0:
            return _EMPTY, _EMPTY
        if left <= rows:
            break
        unverified -= 1
        k = unverified
        candidate &= history[:, k : k + starts] == history[:, suffix_at + k, None]
    hit_rows, hit_starts = np.nonzero(candidate)
    if unverified and hit_rows.size:
        offsets = np.arange(unverified)
        earlier = history[hit_rows[:, None], hit_starts[:, None] + offsets]
        suffix = history[hit_rows[:, None], suffix_at + offsets]
        whole = np.all(earlier == suffix, axis=1)
        hit_rows, hit_starts = hit_rows[whole], hit_starts[whole]
    return hit_rows.astype(np.int64), history[hit_rows, hit_starts + ngram - 1]


class BatchUpdateLike(Protocol):
    """What vLLM's `BatchUpdate` carries (vllm/v1/sample/logits_processor/interface.py)."""

    @property
    def removed(self) -> Sequence[int]: ...

    @property
    def added(self) -> Sequence[tuple[int, Any, Any, list[int]]]: ...

    @property
    def moved(self) -> Sequence[tuple[int, int, Any]]: ...


class _History:
    """The last `window` tokens of every tracked request of one (ngram, window) rule.

    Re-reading `window` tokens of each page's list every step costs a Python loop over the
    batch (2 ms a step at 256 pages, as much as a decode step's sampler); here each request
    owns a row (its slot) that takes one new token per step in a single numpy write for the
    whole batch, and is rebuilt from the list only when that list did anything else.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._tokens = np.full((0, window), -1, dtype=np.int64)
        self._seen = np.zeros(0, dtype=np.int64)  # the list's length when its row was last read
        self._free: list[int] = []

    def claim(self) -> int:
        if not self._free:
            grown = max(8, 2 * len(self._seen))
            self._free = list(range(grown - 1, len(self._seen) - 1, -1))
            self._tokens = np.concatenate(
                (self._tokens, np.full((grown - len(self._seen), self.window), -1, np.int64))
            )
            self._seen = np.concatenate((self._seen, np.zeros(grown - len(self._seen), np.int64)))
        slot = self._free.pop()
        self._tokens[slot] = -1
        self._seen[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def read(
        self, slots: TokenArray, outputs: Sequence[list[int]]
    ) -> tuple[TokenArray, TokenArray]:
        """`recent_tokens(outputs, window)` for the requests in `slots`, from the rows."""
        lengths = np.fromiter(map(len, outputs), np.int64, len(outputs))
        seen = self._seen[slots]
        # The token the row ends with must still be in the list where it was read: vLLM
        # writes a step's token over a -1 placeholder once it reaches the CPU, and may drop
        # tokens (a failed KV load) or put a preempted request back.
        anchored = (seen > 0) & (seen <= lengths)
        marks = zip(outputs, seen.tolist(), anchored.tolist(), strict=True)
        anchors = np.fromiter(
            (ids[k - 1] if ok else -1 for ids, k, ok in marks), np.int64, len(outputs)
        )
        anchored &= anchors == self._tokens[slots, -1]
        grew = anchored & (lengths == seen + 1)
        stale = ~anchored & (lengths > 0) | anchored & (lengths > seen + 1)
        if grew.any():
            picked = np.flatnonzero(grew)
            rows = slots[picked]
            self._tokens[rows, :-1] = self._tokens[rows, 1:]
            self._tokens[rows, -1] = np.fromiter(
                (outputs[i][-1] for i in picked.tolist()), np.int64, picked.size
            )
        for i in np.flatnonzero(stale).tolist():
            self._tokens[slots[i]] = -1
            tail = outputs[i][-self.window :]
            self._tokens[slots[i], self.window - len(tail) :] = tail
        self._seen[slots] = lengths
        return self._tokens[slots], np.minimum(lengths, self.window)


@dataclass
class _Row:
    rule: NgramRule
    output_ids: list[int]  # vLLM's own list for the request, appended to as it decodes
    slot: int  # its row in the rule's _History


class NgramBook:
    """Which batch row holds which request's rule and output tokens.

    vLLM's persistent batch reuses, moves and swaps rows between steps and says so in a
    BatchUpdate, to be applied in the order removed, added, moved. `output_ids` is vLLM's
    live list for the request (it grows in place); its recent tokens are kept in a
    _History per rule and brought up to date once per step.
    """

    def __init__(self) -> None:
        self._rows: dict[int, _Row] = {}
        self._histories: dict[tuple[int, int], _History] = {}
        self._rules: dict[NgramRule, NgramRule] = {}  # one object per distinct rule

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> dict[int, NgramRule]:
        return {index: row.rule for index, row in self._rows.items()}

    def update(self, batch: BatchUpdateLike | None) -> None:
        if batch is None:
            return
        for index in batch.removed:
            self._drop(self._rows.pop(index, None))
        for index, params, _prompt_ids, output_ids in batch.added:
            # A reused row is not reported as removed: its former request goes here.
            self._drop(self._rows.pop(index, None))
            rule = rule_from_extra_args(getattr(params, "extra_args", None))
            if rule is not None:
                rule = self._rules.setdefault(rule, rule)
                self._rows[index] = _Row(rule, output_ids, self._history(rule).claim())
        for first, second, direction in batch.moved:
            a = self._rows.pop(first, None)
            b = self._rows.pop(second, None)
            if a is not None:
                self._rows[second] = a
            if getattr(direction, "name", str(direction)) == "SWAP":
                if b is not None:
                    self._rows[first] = b
            else:
                self._drop(b)  # overwritten by the move

    def banned(self) -> tuple[TokenArray, TokenArray]:
        """(batch rows, tokens) to ban for the next token of every tracked request."""
        # Rules are interned (see update), so a group is found by identity: hashing the
        # dataclass per page per step cost more than the numpy work.
        groups: dict[int, tuple[NgramRule, list[int], list[_Row]]] = {}
        for index, row in self._rows.items():
            group = groups.get(id(row.rule))
            if group is None:
                group = groups[id(row.rule)] = (row.rule, [], [])
            group[1].append(index)
            group[2].append(row)
        found_rows: list[TokenArray] = []
        found_tokens: list[TokenArray] = []
        for rule, indices, members in groups.values():
            slots = np.fromiter((row.slot for row in members), np.int64, len(members))
            history, filled = self._history(rule).read(slots, [row.output_ids for row in members])
            local_rows, tokens = banned_tokens(history, filled, rule.ngram)
            if local_rows.size == 0:
                continue
            keep = _not_whitelisted(rule.whitelist, tokens)
            # A placeholder id (-1) left in a list would index the last vocabulary entry.
            keep &= tokens >= 0
            found_rows.append(np.asarray(indices, dtype=np.int64)[local_rows[keep]])
            found_tokens.append(tokens[keep])
        if not found_rows:
            return _EMPTY, _EMPTY
        return np.concatenate(found_rows), np.concatenate(found_tokens)

    def _history(self, rule: NgramRule) -> _History:
        key = (rule.ngram, rule.window)
        if key not in self._histories:
            self._histories[key] = _History(rule.window)
        return self._histories[key]

    def _drop(self, row: _Row | None) -> None:
        if row is not None:
            self._history(row.rule).release(row.slot)


def _not_whitelisted(whitelist: frozenset[int], tokens: TokenArray) -> NDArray[np.bool_]:
    if not whitelist:
        return np.ones(tokens.shape, dtype=bool)
    return ~np.isin(tokens, np.fromiter(whitelist, np.int64, len(whitelist)))
