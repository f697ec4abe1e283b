"""Pick and build the engine named by the settings (`auto`, `vllm` or `rapidocr`).

The base install carries neither torch nor vLLM, so both are imported only when they are
about to be used: importing this module must work on a CPU-only machine.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import cast

from consumer.config import EngineName, Settings
from consumer.engines.base import Engine
from consumer.errors import OcrError
from consumer.log import get_logger
from schemas.common import ErrorCode

log = get_logger(__name__)

_VLLM_MISSING = "vLLM is not installed: install ocr-stream[gpu] or use OCR_ENGINE=rapidocr"


def vllm_installed() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def cuda_available() -> bool:
    """True when torch imports and sees a GPU; any failure there means 'no GPU'."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception as exc:  # a torch that fails to import (driver, ABI) is not a GPU
        log.info("cuda_probe_failed", error=str(exc))
        return False


def resolve_engine_name(requested: EngineName) -> EngineName:
    if requested is not EngineName.AUTO:
        return requested
    # vLLM first: find_spec is cheap, importing torch is not.
    if vllm_installed() and cuda_available():
        return EngineName.VLLM
    return EngineName.RAPIDOCR


def create_engine(settings: Settings) -> Engine:
    """The engine for `settings.engine`; raises OcrError(ENGINE_ERROR) if it cannot exist."""
    name = resolve_engine_name(settings.engine)
    log.info("engine_selected", requested=settings.engine.value, engine=name.value)
    if name is EngineName.RAPIDOCR:
        from consumer.engines.rapidocr import RapidOcrEngine

        return RapidOcrEngine()
    if not vllm_installed():
        raise OcrError(ErrorCode.ENGINE_ERROR, _VLLM_MISSING)
    try:
        # Imported by name: the module needs vLLM at import time.
        module = importlib.import_module("consumer.engines.vllm")
    except ImportError as exc:
        raise OcrError(
            ErrorCode.ENGINE_ERROR,
            f"the vllm engine failed to import ({exc}): install ocr-stream[gpu] "
            "or use OCR_ENGINE=rapidocr",
        ) from exc
    return cast(Engine, module.VllmEngine(settings))
