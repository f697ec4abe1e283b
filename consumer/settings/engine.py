"""Which OCR engine runs, and how: the model, vLLM's engine arguments, decoding."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from consumer.settings.base import SettingsPart, env_name


class EngineName(StrEnum):
    AUTO = "auto"
    VLLM = "vllm"
    RAPIDOCR = "rapidocr"


class ResolutionMode(StrEnum):
    """DeepSeek-OCR's resolution modes; vLLM fixes one per engine."""

    TINY = "tiny"
    SMALL = "small"
    BASE = "base"
    LARGE = "large"
    GUNDAM = "gundam"


class NgramProcessor(StrEnum):
    """Which implementation of DeepSeek-OCR's no-repeat n-gram rule the engine runs."""

    BATCHED = "batched"  # consumer/engines/ngram_processor.py: the whole batch per step
    PER_REQUEST = "per-request"  # vLLM's NGramPerReqLogitsProcessor: Python per page


class Detokenize(StrEnum):
    """Where a page's output tokens become text."""

    FINAL = "final"  # once, when the page is done, off the event loop
    INCREMENTAL = "incremental"  # by vLLM after every engine step, on the event loop


class EngineSettings(SettingsPart):
    part_title = "Engine"

    engine: EngineName = Field(EngineName.AUTO, description="auto, vllm or rapidocr.")
    model: str = Field("deepseek-ai/DeepSeek-OCR", description="Model path or name (vllm).")
    load_format: str = Field("auto", description="vLLM load format; 'dummy' for random weights.")
    dtype: str = Field("bfloat16", description="vLLM dtype.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM GPU memory share.")
    max_model_len: int = Field(8192, ge=1024, description="vLLM max context length.")
    max_num_seqs: int = Field(256, ge=1, description="vLLM max sequences per step.")
    max_num_batched_tokens: int = Field(16384, ge=1024, description="vLLM tokens per step.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine.")
    preprocess_workers: int = Field(8, ge=1, description="vLLM image preprocessing threads.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (debugging only).")
    resolution_mode: ResolutionMode = Field(
        ResolutionMode.GUNDAM, description="DeepSeek-OCR resolution mode, one per engine."
    )
    max_tokens: int = Field(
        8192, ge=16,
        description="Output token cap per page (DeepSeek-OCR's own; vLLM also ends a page "
        "where prompt + output reach OCR_MAX_MODEL_LEN).",
    )
    ngram_size: int = Field(30, ge=0, description="No-repeat n-gram size (0 disables).")
    ngram_window: int = Field(90, ge=1, description="No-repeat window in tokens.")
    ngram_processor: NgramProcessor = Field(
        NgramProcessor.BATCHED, description="No-repeat rule: batched or per-request (vLLM's)."
    )
    vision_cudagraphs: bool | None = Field(
        None,
        description="vLLM's vision encoder batched in CUDA graphs; unset: on in gundam mode "
        "(measured, bench/README.md), off in the others (not measured).",
    )
    vision_uint8: bool = Field(
        True,
        description="Page images go to vLLM's engine core as uint8 and are normalised on the "
        "GPU (DeepSeek-OCR only): 1.20x pages/s on an H100, measured (bench/README.md).",
    )
    detokenize: Detokenize = Field(
        Detokenize.FINAL, description="Output text: final (once per page) or incremental."
    )
    ignore_eos: bool = Field(False, description="Benchmarks only: decode exactly max_tokens.")
    page_timeout_s: float = Field(
        300.0, gt=0,
        description="One page's time limit in the engine (and to render); room for "
        "OCR_MAX_TOKENS=8192 at 30 ms a decode step in a full batch.",
    )

    @model_validator(mode="after")
    def _vision_graphs_need_graphs(self) -> Self:
        if self.vision_cudagraphs and self.enforce_eager:
            raise ValueError(
                "vision_cudagraphs=true asks for CUDA graphs that enforce_eager=true forbids; "
                "unset one of them"
            )
        return self

    @model_validator(mode="after")
    def _output_fits_the_context(self) -> Self:
        if self.max_tokens > self.max_model_len:
            raise ValueError(
                f"{env_name('max_tokens')}={self.max_tokens} is more than "
                f"{env_name('max_model_len')}={self.max_model_len}, which must also hold the "
                "page's image tokens (about 900-1,300 in gundam mode): lower the first or "
                "raise the second"
            )
        return self

    @model_validator(mode="after")
    def _ngram_rule(self) -> Self:
        if self.ngram_size == 1:
            raise ValueError("ngram_size 1 would ban nothing: use 0 to disable, or >= 2")
        if self.ngram_size and self.ngram_window < self.ngram_size:
            raise ValueError(
                f"ngram_window ({self.ngram_window}) must be at least ngram_size "
                f"({self.ngram_size}): a shorter window holds no n-gram to ban"
            )
        return self
