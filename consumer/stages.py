"""Pipeline stage times: one measurement fills the page's timings, the task's sums and the
stage histogram at once, so the three cannot disagree.

A page's stages are render, infer, postprocess and publish; a task adds fetch (which also
opens the document) and sums its pages' stages. The queue times are not stages measured
here: they come from the request's Kafka timestamp.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum

from schemas.result import PageTimings
from schemas.timing import StageDurations


class Stage(StrEnum):
    FETCH = "fetch"
    RENDER = "render"
    INFER = "infer"
    POSTPROCESS = "postprocess"
    PUBLISH = "publish"


class StageTimes:
    """Milliseconds per stage: one page's, or a task's summed over its pages."""

    __slots__ = ("_ms",)

    def __init__(self) -> None:
        self._ms = dict.fromkeys(Stage, 0.0)

    def __getitem__(self, stage: Stage) -> float:
        return self._ms[stage]

    def add(self, stage: Stage, ms: float) -> None:
        self._ms[stage] += ms

    def durations(self, queue_ms: float) -> StageDurations:
        return StageDurations(
            queue_ms=max(queue_ms, 0.0),
            fetch_ms=self._ms[Stage.FETCH],
            render_ms=self._ms[Stage.RENDER],
            infer_ms=self._ms[Stage.INFER],
            postprocess_ms=self._ms[Stage.POSTPROCESS],
            publish_ms=self._ms[Stage.PUBLISH],
        )

    def page_timings(self, queue_ms: float) -> PageTimings:
        return PageTimings(
            render_ms=self._ms[Stage.RENDER],
            infer_ms=self._ms[Stage.INFER],
            postprocess_ms=self._ms[Stage.POSTPROCESS],
            queue_ms=max(queue_ms, 0.0),
        )


def elapsed_ms(start: float) -> float:
    """Milliseconds since `start`, a `time.perf_counter()` reading."""
    return (time.perf_counter() - start) * 1000.0


class StageRecorder:
    """One task's stage times. `record` is the only way in: it adds the stage to the
    task's sums (`task`), to the page's own times when given, and to the histogram."""

    def __init__(self, observe: Callable[[str, float], None]) -> None:
        """`observe(stage, seconds)`: ConsumerMetrics.stage in the service."""
        self._observe = observe
        self.task = StageTimes()

    def record(self, stage: Stage, ms: float, page: StageTimes | None = None) -> None:
        self.task.add(stage, ms)
        if page is not None:
            page.add(stage, ms)
        self._observe(stage.value, ms / 1000)

    @contextmanager
    def timed(self, stage: Stage, page: StageTimes | None = None) -> Iterator[None]:
        """Records the block's time if it completes; a stage that raised is not a time."""
        start = time.perf_counter()
        yield
        self.record(stage, elapsed_ms(start), page)
