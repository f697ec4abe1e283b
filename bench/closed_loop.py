"""Closed-loop load with a steady-state window.

`in_flight` lanes each submit a page, wait for it, and submit the next, so exactly that
many pages are outstanding until the window closes. The window opens at the `warmup`-th
completion and closes at the `warmup + measure`-th; the figures are those of the
`measure` completions in between, over the time between those two completions. A burst
(every page offered at one instant) mixes the start-up transient, lock-step decoding and
the tail into its one number; the window leaves all three out.

Lanes start `ramp_s / in_flight` apart. A fixed-latency engine started all at once would
keep its pages in lock step for ever (every page ends together and its successor starts
together); the ramp spreads them, and so does the engine benchmark's first generation of
staggered output lengths (bench/steady.py).

Guarantees: at most `in_flight` pages are outstanding at any time, and exactly that many
while the window is open (a lane that fails submits its next page at once); a page is a
completion whether it succeeded or failed, and failures are counted, not hidden; once the
window closes no page is submitted and the outstanding ones are cancelled (their lane
tasks are, so an engine aborts them). Not guaranteed: that the window closes, when pages
stop completing; `deadline_s` then ends the run with a partial window that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Completion:
    """One page's outcome; times are on the loop's clock (seconds)."""

    key: str
    submitted: float
    finished: float
    ok: bool = True
    error: str = ""
    output_tokens: int = 0
    prompt_tokens: int = 0
    # Per-stage milliseconds the submitter knows of (e.g. post-processing); optional.
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def latency(self) -> float:
        return self.finished - self.submitted


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


class SteadyWindow:
    """Completions in the order they arrive, and the window over them (see the module
    docstring). Pure bookkeeping: no clock of its own, no I/O."""

    def __init__(self, warmup: int, measure: int) -> None:
        if warmup < 0 or measure < 1:
            raise ValueError("warmup must be >= 0 and measure >= 1")
        self.warmup = warmup
        self.measure = measure
        self.completions: list[Completion] = []
        self.opened_at: float | None = None
        self.closed_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None and self.closed_at is None

    @property
    def is_closed(self) -> bool:
        return self.closed_at is not None

    def add(self, completion: Completion) -> None:
        if self.is_closed:
            return  # a page that ended as the lanes were being cancelled
        self.completions.append(completion)
        count = len(self.completions)
        if count == self.warmup and self.opened_at is None:
            self.opened_at = completion.finished
        if self.warmup == 0 and self.opened_at is None:
            # No warm-up: the window opens at the first completion, which it then holds.
            self.opened_at = completion.submitted
        if count == self.warmup + self.measure:
            self.closed_at = completion.finished

    def in_window(self) -> list[Completion]:
        return self.completions[self.warmup : self.warmup + self.measure]

    def figures(self) -> dict[str, Any]:
        """The window's figures; a window cut short reports what it has, `partial` True."""
        inside = self.in_window()
        end = self.closed_at
        if end is None and inside:
            end = inside[-1].finished
        start = self.opened_at
        seconds = (end - start) if (start is not None and end is not None) else 0.0
        ok = [c for c in inside if c.ok]
        latencies = sorted(c.latency for c in ok)
        output_tokens = sum(c.output_tokens for c in ok)
        prompt_tokens = sum(c.prompt_tokens for c in ok)
        errors: dict[str, int] = {}
        for c in inside:
            if not c.ok:
                errors[c.error or "error"] = errors.get(c.error or "error", 0) + 1
        rate = len(ok) / seconds if seconds > 0 else 0.0
        return {
            "warmup_pages": min(self.warmup, len(self.completions)),
            "measured_pages": len(inside),
            "partial": not self.is_closed,
            "window_s": round(seconds, 3),
            "pages_per_s": round(rate, 3),
            "output_tokens_per_s": round(output_tokens / seconds, 1) if seconds > 0 else 0.0,
            "output_tokens_per_page": round(output_tokens / len(ok), 1) if ok else 0.0,
            "prompt_tokens_per_page": round(prompt_tokens / len(ok), 1) if ok else 0.0,
            "latency_p50_s": round(percentile(latencies, 0.50), 3),
            "latency_p95_s": round(percentile(latencies, 0.95), 3),
            "latency_max_s": round(latencies[-1], 3) if latencies else 0.0,
            "latency_mean_s": round(statistics.fmean(latencies), 3) if latencies else 0.0,
            "errors": errors,
        }


Submit = Callable[[int], Awaitable[Completion]]


class ClosedLoop:
    """Runs `submit(index)` for index 0, 1, 2, ... keeping `in_flight` outstanding until the
    window closes (see the module docstring). `opened` and `closed` are set as the window
    opens and closes, so samplers and profilers can wait for them; `after_window`, when
    given, runs once the window has closed while the lanes keep the load on (a profile of
    the steady state that must not disturb the measured window), within the same deadline,
    and its result is kept in `after_window_result`."""

    def __init__(
        self,
        submit: Submit,
        *,
        in_flight: int,
        warmup: int,
        measure: int,
        ramp_s: float = 0.0,
        deadline_s: float | None = None,
        after_window: Callable[[], Awaitable[Any]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self._submit = submit
        self.in_flight = in_flight
        self.window = SteadyWindow(warmup, measure)
        self._ramp_s = max(0.0, ramp_s)
        self._deadline_s = deadline_s
        self._after_window = after_window
        self._clock = clock
        self._indices = itertools.count()
        self._stop_submitting = False
        self.outstanding = 0
        self.most_outstanding = 0
        self.submitted = 0
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.after_window_result: Any = None
        self.deadline_hit = False

    async def _lane(self, lane: int) -> None:
        if self._ramp_s > 0:
            await asyncio.sleep(self._ramp_s * lane / self.in_flight)
        while not self._stop_submitting:
            index = next(self._indices)
            self.submitted += 1
            self.outstanding += 1
            self.most_outstanding = max(self.most_outstanding, self.outstanding)
            began = self._clock()
            try:
                completion = await self._submit(index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a submitter bug or an engine failure: count it
                completion = Completion(
                    key=str(index), submitted=began, finished=self._clock(), ok=False,
                    error=type(exc).__name__,
                )  # fmt: skip
            finally:
                self.outstanding -= 1
            self.window.add(completion)
            if self.window.opened_at is not None:
                self.opened.set()
            if self.window.is_closed:
                self.closed.set()
                if self._after_window is None:
                    self._stop_submitting = True

    async def run(self) -> SteadyWindow:
        lanes = [asyncio.create_task(self._lane(lane)) for lane in range(self.in_flight)]
        began = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self._deadline_s):
                    await self.closed.wait()
                    if self._after_window is not None:
                        self.after_window_result = await self._after_window()
            except TimeoutError:
                if not self.window.is_closed:
                    self.deadline_hit = True
                else:
                    self.after_window_result = {
                        "error": f"cut at the deadline, {time.monotonic() - began:.0f} s in"
                    }
        finally:
            self._stop_submitting = True
            for task in lanes:
                task.cancel()
            for task in lanes:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return self.window
