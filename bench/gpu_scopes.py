"""Names in the engine core's torch trace for the work vLLM leaves unnamed.

vLLM's model runner names its forward pass and sampling (`gpu_model_runner: forward`,
`...: sample`, with VLLM_CUSTOM_SCOPES_FOR_PROFILING=1) but not the vision encoder or the
logits processors. This vLLM plugin wraps those in `torch.profiler.record_function`
scopes, so bench/gpu_trace.py can file every GPU kernel under the stage that launched it:

    ocr: vision encoder      GPUModelRunner._execute_mm_encoder (SAM + CLIP, graphs or not)
    ocr: mm embeddings       GPUModelRunner._gather_mm_embeddings
    ocr: n-gram apply        BatchedNoRepeatNGram.apply (our batched no-repeat rule)
    ocr: n-gram update       BatchedNoRepeatNGram.update_state

It is declared as a second `vllm.general_plugins` entry point only on the GPU host
(deploy/gpu/setup.sh), and does nothing unless OCR_BENCH_SCOPES=1 when vLLM loads it: a
scope costs a few microseconds a call even when no profiler runs. Nothing here changes
what the engine computes.
"""

from __future__ import annotations

import functools
import os
from typing import Any

ENV = "OCR_BENCH_SCOPES"
SCOPES = {
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_execute_mm_encoder"): (
        "ocr: vision encoder"
    ),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_gather_mm_embeddings"): (
        "ocr: mm embeddings"
    ),
    ("consumer.engines.ngram_processor", "BatchedNoRepeatNGram", "apply"): "ocr: n-gram apply",
    ("consumer.engines.ngram_processor", "BatchedNoRepeatNGram", "update_state"): (
        "ocr: n-gram update"
    ),
}


def scoped(function: Any, name: str) -> Any:
    import torch

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(name):
            return function(*args, **kwargs)

    wrapper.__ocr_scope__ = name  # type: ignore[attr-defined]
    return wrapper


def install() -> list[str]:
    """Wrap every method of SCOPES that imports here; returns the scopes installed."""
    import importlib

    installed = []
    for (module_name, class_name, method), name in SCOPES.items():
        try:
            owner = getattr(importlib.import_module(module_name), class_name)
        except Exception:  # not importable in this process (or this vLLM): no scope
            continue
        function = owner.__dict__.get(method)
        if function is None or hasattr(function, "__ocr_scope__"):
            continue
        setattr(owner, method, scoped(function, name))
        installed.append(name)
    return installed


def vllm_general_plugin() -> None:
    # Only in the engine core (a multiprocessing child vLLM names "EngineCore..."): the
    # frontend launches no kernels, and importing the model runner there is wasted time.
    import multiprocessing

    if os.environ.get(ENV) == "1" and multiprocessing.current_process().name.startswith(
        "EngineCore"
    ):
        install()
