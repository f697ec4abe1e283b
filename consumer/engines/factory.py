"""Pick and build the engine named by the settings (`auto`, `vllm` or `rapidocr`).

The base install carries no engine: RapidOCR comes with the `cpu` extra (plus one package
installed without its dependencies, see deploy/cpu-engine.txt), vLLM with `gpu`. Both are
imported only when about to be used, so importing this module works on any install; when
the chosen engine is missing, the error names the extra that brings it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import cast

from consumer.config import EngineName, Settings
from consumer.engines.base import Engine
from consumer.errors import OcrError
from consumer.log import configure_vllm_logging, get_logger
from schemas.common import ErrorCode

log = get_logger(__name__)

# deploy/cpu-engine.txt holds the same requirement (a test checks).
RAPIDOCR_REQUIREMENT = "rapidocr-onnxruntime>=1.4.4,<1.5"
INSTALL_CPU = (
    "pip install 'ocr-stream[cpu]' && pip install --no-deps "
    f"'{RAPIDOCR_REQUIREMENT}'"
)
INSTALL_GPU = "pip install 'ocr-stream[gpu]'"
_VLLM_MISSING = f"vLLM is not installed: {INSTALL_GPU}, or use OCR_ENGINE=rapidocr"


def _module_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def vllm_installed() -> bool:
    return _module_installed("vllm")


def rapidocr_missing() -> str | None:
    """What the CPU engine lacks, as a message naming the install step; None when complete.
    RapidOCR imports OpenCV (cv2, from opencv-python-headless in the `cpu` extra) and
    onnxruntime when its engine loads: all three must be there."""
    missing = [
        package
        for module, package in (
            ("rapidocr_onnxruntime", "rapidocr-onnxruntime"),
            ("cv2", "opencv-python-headless"),
            ("onnxruntime", "onnxruntime"),
        )
        if not _module_installed(module)
    ]
    if not missing:
        return None
    return (
        f"the rapidocr engine needs {', '.join(missing)}, not installed here: {INSTALL_CPU} "
        f"(the cpu extra), or use OCR_ENGINE=vllm on a GPU host ({INSTALL_GPU})"
    )


def cuda_available() -> bool:
    """True when torch imports and sees a GPU; any failure there means 'no GPU'."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception as exc:  # a torch that fails to import (driver, ABI) is not a GPU
        log.info("cuda_probe_failed", error=str(exc))
        return False


def resolve_engine_name(requested: EngineName) -> EngineName:
    """`auto`: vLLM when it and a GPU are there, else RapidOCR when it is installed; raises
    OcrError(ENGINE_ERROR) naming both extras when neither can run."""
    if requested is not EngineName.AUTO:
        return requested
    # vLLM first: find_spec is cheap, importing torch is not.
    if vllm_installed() and cuda_available():
        return EngineName.VLLM
    missing = rapidocr_missing()
    if missing is None:
        return EngineName.RAPIDOCR
    gpu = "vLLM is installed but sees no GPU" if vllm_installed() else "vLLM is not installed"
    raise OcrError(
        ErrorCode.ENGINE_ERROR,
        f"OCR_ENGINE=auto found no engine to run: {gpu}, and {missing}",
    )


def create_engine(settings: Settings) -> Engine:
    """The engine for `settings.engine`; raises OcrError(ENGINE_ERROR) if it cannot exist."""
    name = resolve_engine_name(settings.engine)
    log.info("engine_selected", requested=settings.engine.value, engine=name.value)
    if name is EngineName.RAPIDOCR:
        missing = rapidocr_missing()
        if missing is not None:
            raise OcrError(ErrorCode.ENGINE_ERROR, missing)
        from consumer.engines.rapidocr import RapidOcrEngine

        return RapidOcrEngine()
    if not vllm_installed():
        raise OcrError(ErrorCode.ENGINE_ERROR, _VLLM_MISSING)
    # vLLM configures its logging when first imported (here and in its engine core).
    configure_vllm_logging()
    try:
        # Imported by name: the module needs vLLM at import time.
        module = importlib.import_module("consumer.engines.vllm")
    except ImportError as exc:
        raise OcrError(
            ErrorCode.ENGINE_ERROR,
            f"the vllm engine failed to import ({exc}): {INSTALL_GPU}, or use "
            "OCR_ENGINE=rapidocr",
        ) from exc
    return cast(Engine, module.VllmEngine(settings))
