"""`ocr-bench pipeline` on the real stack: the GPU host's pipeline figure comes from this
code path, so it is proven here with the engine's test double (fast, exact token counts)."""

from __future__ import annotations

from bench.bench_pages import synthetic_pages
from bench.bench_pipeline import run_pipeline_bench
from consumer.config import Settings
from tests.support.engines import ScriptedEngine


async def test_pipeline_bench_counts_every_page_and_its_tokens(stack: Settings) -> None:
    pages = synthetic_pages(5)
    engine = ScriptedEngine()
    await engine.start()
    result = await run_pipeline_bench(
        engine, stack.model_copy(update={"render_workers": 1}), pages,
        pages_per_document=2, dpi=150, timeout_s=120,
    )
    assert result["pipeline_documents"] == 3  # 2 + 2 + 1 pages
    assert result["pipeline_tasks_missing"] == 0
    assert result["pipeline_tasks_failed"] == 0
    assert result["pipeline_pages_per_s"] > 0
    # Every page went through the engine exactly once.
    assert sorted(engine.calls.values()) == [1] * 5
    # ScriptedEngine answers "Page N of TASK": 4 words, its output token count.
    assert result["pipeline_output_tokens_per_page"] == 4.0
