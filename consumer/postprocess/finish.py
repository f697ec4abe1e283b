"""Why a page's generation ended: stop, length, repetition or error.

The engine reports `stop` (end-of-sentence), `length` (token cap), `abort` or nothing. A
page that ran into the cap because the model looped is worth telling apart from one that
was merely long: the fix differs (no-repeat settings vs. a larger cap), so such pages are
classified by looking for a loop at the end of the text.
"""

from __future__ import annotations

import math

from schemas.result import FinishReason

# A loop is a block repeated at least MIN_REPEATS times at the very end and covering at
# least MIN_LOOP_CHARS characters: the same line five times, or a short n-gram
# ("the the the ...", "0.0.0.") many more times. Shorter repeats occur in real pages
# (table separator rows, dot leaders), and are not called loops.
MIN_REPEATS = 5
MIN_LOOP_CHARS = 64
MAX_PERIOD = 1000  # longest repeated block looked for (a long table row)
_TAIL = MAX_PERIOD * MIN_REPEATS  # only the end of the text can hold the loop


def loop_at_end(
    text: str, *, min_repeats: int = MIN_REPEATS, min_chars: int = MIN_LOOP_CHARS
) -> int:
    """The period (in characters) of a loop at the end of `text`, or 0 when none.

    A suffix of length m has period p when suffix[p:] == suffix[:-p]; it then is the same
    p-character block repeated m/p times, the last copy possibly cut off by the token cap.
    One slice comparison per candidate period keeps this to a few milliseconds for the
    longest pages (it runs on the event loop).
    """
    tail = text[-_TAIL:].rstrip()
    size = len(tail)
    for period in range(1, min(MAX_PERIOD, size // min_repeats) + 1):
        length = max(period * min_repeats, math.ceil(min_chars / period) * period)
        if length > size:
            continue
        suffix = tail[-length:]
        if suffix[period:] == suffix[:-period] and suffix.strip():
            return period
    return 0


def classify_finish(
    engine_reason: str | None, text: str, *, output_tokens: int, max_tokens: int
) -> tuple[FinishReason, bool]:
    """(finish reason, truncated) for one page.

    - `stop`: the model ended the page itself -> STOP, even when the end repeats (a table
      of identical rows is not a loop if the model chose to stop after it).
    - `abort`, or any reason but `length` with no text: the page has no usable output ->
      ERROR (truncated when some text had been produced).
    - `length`, or the output reached `max_tokens`: truncated; REPETITION when the text
      ends in a loop, else LENGTH.
    - no reason (an engine that does not report one) with text under the cap: STOP, or
      REPETITION when the text ends in a loop.
    """
    reason = (engine_reason or "").strip().lower()
    if reason == "stop":
        return FinishReason.STOP, False
    if reason == "abort" or (reason != "length" and not text.strip()):
        return FinishReason.ERROR, bool(text.strip())
    capped = reason == "length" or (max_tokens > 0 and output_tokens >= max_tokens)
    if loop_at_end(text):
        return FinishReason.REPETITION, True
    if capped:
        return FinishReason.LENGTH, True
    return FinishReason.STOP, False
