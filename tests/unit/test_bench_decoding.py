"""`ocr-bench decoding`'s control flow on the fake vLLM, and its arithmetic."""

from __future__ import annotations

import pytest
from PIL import Image

from bench.bench_decoding import (
    PASSES,
    Pass,
    parse_passes,
    run_decoding_bench,
    step_figures,
    top_frames,
)
from consumer.config import Detokenize, NgramProcessor
from consumer.engines.base import PageImage
from consumer.engines.vllm import VllmEngine
from tests.unit.test_vllm_engine import FakeAsyncLLM, FakeBackend, make_settings


def pages(count: int) -> list[PageImage]:
    image = Image.new("RGB", (200, 280), "white")
    return [
        PageImage(task_id="bench", page=n, image=image, dpi=72, width_pt=200.0, height_pt=280.0)
        for n in range(1, count + 1)
    ]


async def test_every_pass_runs_on_one_engine_with_its_own_decoding() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(delay_s=0.01))
    engine = VllmEngine(
        make_settings(), backend=backend, warmup_pages=0, ngram_processors=tuple(NgramProcessor)
    )
    await engine.start()
    names = list(PASSES)
    result = await run_decoding_bench(
        engine, pages(6), parse_passes(",".join(names)), warmup=1, max_tokens=100,
        preprocess_concurrency=2,
    )  # fmt: skip
    assert result["preprocess_pages"] == 6 and result["preprocess_pages_per_s"] > 0
    assert list(result["passes"]) == names
    for name in names:
        figures = result["passes"][name]
        assert figures["pages_done"] == 6 and figures["errors"] == {}
        assert figures["timeline"]  # sampled at least once
        assert len(figures["output_digests"]) == 6 and all(figures["output_digests"])
    # The fake answers every page the same way: identical outputs across passes.
    assert result["passes"]["batched+final"]["same_output_as_per-request+incremental"] == 1.0
    # Each pass's pages reached vLLM with that pass's options (warm-up + 6 pages a pass).
    calls = [call[1] for call in backend.engine.calls]
    assert len(calls) == 4 * 7
    per_pass = [calls[i * 7 : (i + 1) * 7] for i in range(4)]
    assert all("ngram_size" in p["extra_args"] and p["detokenize"] for p in per_pass[0])
    assert all("no_repeat_ngram_size" in p["extra_args"] and p["detokenize"] for p in per_pass[1])
    assert all("no_repeat_ngram_size" in p["extra_args"] for p in per_pass[2])
    assert not any(p["detokenize"] for p in per_pass[2])
    assert all("extra_args" not in p and not p["detokenize"] for p in per_pass[3])


def test_parse_passes_names_the_choices() -> None:
    assert parse_passes("batched+final, off+final@64") == [
        Pass("batched+final", NgramProcessor.BATCHED, Detokenize.FINAL),
        Pass("off+final@64", None, Detokenize.FINAL, 64),
    ]
    for text in ("", "batched+final,fast", "batched+final@", "off+final@0", "off+final@x",
                 "off+final@²", "off+final@07"):  # fmt: skip
        try:
            parse_passes(text)
        except ValueError as exc:
            assert "per-request+incremental" in str(exc)
        else:
            raise AssertionError(f"{text!r} was accepted")
    with pytest.raises(ValueError, match="given twice"):
        parse_passes("off+final,off+final")


async def test_a_pass_with_its_own_length_decodes_that_many_tokens() -> None:
    backend = FakeBackend(engine=FakeAsyncLLM(delay_s=0.0))
    engine = VllmEngine(
        make_settings(), backend=backend, warmup_pages=0, ngram_processors=tuple(NgramProcessor)
    )
    await engine.start()
    passes = parse_passes("batched+final,batched+final@8,off+final")
    result = await run_decoding_bench(
        engine, pages(3), passes, warmup=0, max_tokens=100, preprocess_concurrency=2
    )
    lengths = [call[1]["max_tokens"] for call in backend.engine.calls]
    assert lengths == [100] * 3 + [8] * 3 + [100] * 3
    figures = result["passes"]
    assert [figures[p.name]["max_tokens"] for p in passes] == [100, 8, 100]
    # Outputs of different lengths are not compared; those of one length are.
    assert not any(key.startswith("same_output") for key in figures["batched+final@8"])
    assert "same_output_as_batched+final" in figures["off+final"]


def test_step_figures_find_the_steady_stretch() -> None:
    # t, steps, generation tokens, running, waiting: ramp up, 4 s at 256, drain.
    rows = [
        [0.0, 0, 0, 10, 200],
        [1.0, 20, 1000, 240, 0],
        [2.0, 40, 6120, 256, 0],
        [3.0, 60, 11240, 256, 0],
        [4.0, 80, 16360, 256, 0],
        [5.0, 100, 21480, 256, 0],
        [6.0, 125, 23000, 40, 0],
    ]
    figures = step_figures(rows)
    assert figures["steps_per_s"] == round(125 / 6, 2)
    assert figures["steady_seconds"] == 4.0  # rows 1..5 hold >= 90% of 256
    assert figures["steady_step_ms"] == 50.0
    assert figures["steady_tokens_per_step"] == round((21480 - 1000) / 80, 1)
    assert step_figures(rows[:1]) == {}


def test_top_frames_shares_of_leaf_frames() -> None:
    collapsed = (
        "main;step;apply (ngram.py:10) 30\n"
        "main;step;forward (model.py:5) 60\n"
        "main;idle (loop.py:1) 10\n"
        "garbage line\n"
    )
    assert top_frames(collapsed, limit=2) == [
        ("forward (model.py:5)", 0.6),
        ("apply (ngram.py:10)", 0.3),
    ]
    assert top_frames("") == []


def test_rule_passes_without_a_rule_size_are_refused_before_the_engine_starts() -> None:
    import argparse

    from bench.ocr_bench import _decoding_passes
    from consumer.errors import OcrError

    args = argparse.Namespace(passes="batched+final,off+final")
    with pytest.raises(OcrError, match="OCR_NGRAM_SIZE > 0"):
        _decoding_passes(args, make_settings(ngram_size=0))
    _decoding_passes(argparse.Namespace(passes="off+final"), make_settings(ngram_size=0))
    assert [p.name for p in _decoding_passes(args, make_settings())] == [
        "batched+final",
        "off+final",
    ]
    with pytest.raises(OcrError, match="unknown decoding pass"):
        _decoding_passes(argparse.Namespace(passes="fast"), make_settings())
