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
from numpy.lib.stride_tricks import sliding_window_view
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
    grams = sliding_window_view(history, ngram, axis=1)  # [rows, window - ngram + 1, ngram]
    suffix = history[:, window - ngram + 1 :]  # each row's last ngram - 1 tokens
    match = np.all(grams[:, :, :-1] == suffix[:, None, :], axis=2)
    # Only n-grams wholly inside the real tokens; a row shorter than ngram has none, which
    # also keeps its padded suffix from matching anything.
    starts = np.arange(window - ngram + 1)
    match &= starts[None, :] >= (window - filled)[:, None]
    hit_rows, hit_starts = np.nonzero(match)
    return hit_rows.astype(np.int64), history[hit_rows, hit_starts + ngram - 1]


class BatchUpdateLike(Protocol):
    """What vLLM's `BatchUpdate` carries (vllm/v1/sample/logits_processor/interface.py)."""

    @property
    def removed(self) -> Sequence[int]: ...

    @property
    def added(self) -> Sequence[tuple[int, Any, Any, list[int]]]: ...

    @property
    def moved(self) -> Sequence[tuple[int, int, Any]]: ...


@dataclass
class _Row:
    rule: NgramRule
    output_ids: list[int]  # vLLM's own list for the request, appended to as it decodes


class NgramBook:
    """Which batch row holds which request's rule and output tokens.

    vLLM's persistent batch reuses, moves and swaps rows between steps and says so in a
    BatchUpdate, to be applied in the order removed, added, moved. `output_ids` is vLLM's
    live list for the request (it grows in place), so nothing is copied per step.
    """

    def __init__(self) -> None:
        self._rows: dict[int, _Row] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> dict[int, NgramRule]:
        return {index: row.rule for index, row in self._rows.items()}

    def update(self, batch: BatchUpdateLike | None) -> None:
        if batch is None:
            return
        for index in batch.removed:
            self._rows.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch.added:
            rule = rule_from_extra_args(getattr(params, "extra_args", None))
            if rule is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = _Row(rule, output_ids)
        for first, second, direction in batch.moved:
            a = self._rows.pop(first, None)
            b = self._rows.pop(second, None)
            if a is not None:
                self._rows[second] = a
            if b is not None and getattr(direction, "name", str(direction)) == "SWAP":
                self._rows[first] = b

    def banned(self) -> tuple[TokenArray, TokenArray]:
        """(batch rows, tokens) to ban for the next token of every tracked request."""
        groups: dict[tuple[int, int], list[tuple[int, _Row]]] = {}
        for index, row in self._rows.items():
            if len(row.output_ids) >= row.rule.ngram:
                groups.setdefault((row.rule.ngram, row.rule.window), []).append((index, row))
        found_rows: list[TokenArray] = []
        found_tokens: list[TokenArray] = []
        for (ngram, window), members in groups.items():
            history, filled = recent_tokens([row.output_ids for _, row in members], window)
            local_rows, tokens = banned_tokens(history, filled, ngram)
            if local_rows.size == 0:
                continue
            indices = np.fromiter((index for index, _ in members), np.int64, len(members))
            keep = _not_whitelisted([row.rule.whitelist for _, row in members], local_rows, tokens)
            # A placeholder id (-1) left in a list would index the last vocabulary entry.
            keep &= tokens >= 0
            found_rows.append(indices[local_rows[keep]])
            found_tokens.append(tokens[keep])
        if not found_rows:
            return _EMPTY, _EMPTY
        return np.concatenate(found_rows), np.concatenate(found_tokens)


def _not_whitelisted(
    whitelists: Sequence[frozenset[int]], local_rows: TokenArray, tokens: TokenArray
) -> NDArray[np.bool_]:
    distinct = set(whitelists)
    if distinct == {frozenset()}:
        return np.ones(tokens.shape, dtype=bool)
    if len(distinct) == 1:  # the usual case: every page has the same whitelist
        (only,) = distinct
        return ~np.isin(tokens, np.fromiter(only, np.int64, len(only)))
    keep = np.ones(tokens.shape, dtype=bool)
    for position, (row, token) in enumerate(zip(local_rows.tolist(), tokens.tolist(), strict=True)):
        keep[position] = token not in whitelists[row]
    return keep
