"""What ocr-stream asks of vLLM: engine arguments and per-page sampling parameters.

Pure functions of the settings (no vLLM import), so tests check every argument vLLM gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consumer.config import Detokenize, NgramProcessor, Settings
from consumer.engines import deepseek_modes
from consumer.engines.deepseek_prompts import NGRAM_WHITELIST_TOKEN_IDS
from consumer.engines.ngram_ban import NgramRule, rule_extra_args

# The no-repeat n-gram rule, by implementation (config.NgramProcessor): the class vLLM loads.
NGRAM_PROCESSORS: dict[NgramProcessor, str] = {
    NgramProcessor.BATCHED: "consumer.engines.ngram_processor:BatchedNoRepeatNGram",
    NgramProcessor.PER_REQUEST: (
        "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"
    ),
}


def configured_decoding(s: Settings) -> tuple[NgramProcessor | None, Detokenize]:
    """The n-gram rule's implementation (None: the rule is off) and the detokenization
    that these settings ask of every page."""
    return (s.ngram_processor if s.ngram_size > 0 else None), s.detokenize


def vision_cudagraphs(s: Settings, mode: str) -> bool:
    """Whether the engine captures vLLM's vision encoder graphs: as configured, else only
    in gundam mode, the one measured (1.30x pages/s on an H200, bench/README.md), and not
    under enforce_eager, which asks for no graphs at all. The graphs follow the mode's image
    sizes, but no other mode has been run with them."""
    if s.vision_cudagraphs is not None:
        return s.vision_cudagraphs
    return mode == deepseek_modes.DEFAULT_MODE and not s.enforce_eager


def engine_args(s: Settings, mode: str, ngram_loaded: Sequence[NgramProcessor]) -> dict[str, Any]:
    """`AsyncEngineArgs` keyword arguments for these settings, in resolution `mode`, with
    the n-gram processors `ngram_loaded` (when the rule is on)."""
    args: dict[str, Any] = {
        "model": s.model,
        "load_format": s.load_format,
        "dtype": s.dtype,
        "gpu_memory_utilization": s.gpu_memory_utilization,
        "max_model_len": s.max_model_len,
        "max_num_seqs": s.max_num_seqs,
        "max_num_batched_tokens": s.max_num_batched_tokens,
        "tensor_parallel_size": s.tensor_parallel_size,
        "enforce_eager": s.enforce_eager,
        # Image preprocessing threads (AsyncLLM defaults to one).
        "renderer_num_workers": s.preprocess_workers,
        "limit_mm_per_prompt": {"image": 1},
        # Pages are never repeated: caching processed images or prompt prefixes costs
        # memory and hashing for no hit, and with both off vLLM skips image hashing.
        "mm_processor_cache_gb": 0,
        "enable_prefix_caching": False,
        # Stats feed the metrics endpoint and the stat logger behind stats().
        "disable_log_stats": False,
    }
    if vision_cudagraphs(s, mode):
        # vLLM 0.26 then encodes the images of a step together (global views, then tiles)
        # and replays captured graphs, instead of SAM and CLIP eagerly page by page.
        args["compilation_config"] = {"cudagraph_mm_encoder": True}
    if s.ngram_size > 0:
        args["logits_processors"] = [NGRAM_PROCESSORS[kind] for kind in ngram_loaded]
    kwargs = deepseek_modes.mm_processor_kwargs(mode)
    if kwargs is not None:
        args["mm_processor_kwargs"] = kwargs
    return args


def sampling_args(
    s: Settings, ngram: NgramProcessor | None, detokenize: Detokenize, max_tokens: int
) -> dict[str, Any]:
    """`SamplingParams` keyword arguments for every page: greedy, the n-gram rule by
    implementation `ngram` (None: off), detokenized as `detokenize` says, at most
    `max_tokens` a page."""
    params: dict[str, Any] = {
        "temperature": 0.0,  # greedy, as DeepSeek-OCR is evaluated
        "max_tokens": max_tokens,
        # Grounding tags (<|ref|>, <|det|>) are special tokens: keep them in the text.
        "skip_special_tokens": False,
        "ignore_eos": s.ignore_eos,
        # One result per page; no streamed partial outputs to detokenize and discard.
        "output_kind": "final_only",
        # Incremental detokenization runs on this event loop for every page after every
        # engine step; "final" decodes each page's tokens once, off the loop.
        "detokenize": detokenize is Detokenize.INCREMENTAL,
    }
    if ngram is NgramProcessor.BATCHED:
        params["extra_args"] = rule_extra_args(
            NgramRule(s.ngram_size, s.ngram_window, NGRAM_WHITELIST_TOKEN_IDS)
        )
    elif ngram is NgramProcessor.PER_REQUEST:
        params["extra_args"] = {
            "ngram_size": s.ngram_size,
            "window_size": s.ngram_window,
            "whitelist_token_ids": set(NGRAM_WHITELIST_TOKEN_IDS),
        }
    return params
