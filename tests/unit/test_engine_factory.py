"""Engine selection: auto, rapidocr, vllm (lazy import, clear error when missing)."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from consumer.config import EngineName, Settings
from consumer.engines import factory
from consumer.engines.rapidocr import RapidOcrEngine
from consumer.errors import OcrError
from schemas.common import ErrorCode


def settings(engine: EngineName) -> Settings:
    return Settings(engine=engine)


def test_auto_without_vllm_is_rapidocr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "vllm_installed", lambda: False)

    def no_torch_probe() -> bool:
        raise AssertionError("torch must not be probed when vLLM is missing")

    monkeypatch.setattr(factory, "cuda_available", no_torch_probe)
    engine = factory.create_engine(settings(EngineName.AUTO))
    assert isinstance(engine, RapidOcrEngine)
    assert engine.identity.name == "rapidocr"
    assert engine.identity.model.startswith("PP-OCRv4 (rapidocr-onnxruntime ")


def test_auto_on_this_machine_does_not_need_torch() -> None:
    # The base install (CI) has neither vLLM nor torch: auto must still work.
    if factory.vllm_installed():
        pytest.skip("vLLM is installed here")
    assert isinstance(factory.create_engine(settings(EngineName.AUTO)), RapidOcrEngine)


def test_auto_with_vllm_but_no_gpu_is_rapidocr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "vllm_installed", lambda: True)
    monkeypatch.setattr(factory, "cuda_available", lambda: False)
    assert factory.resolve_engine_name(EngineName.AUTO) is EngineName.RAPIDOCR


def test_cuda_probe_without_torch_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert factory.cuda_available() is False


def test_explicit_rapidocr() -> None:
    assert isinstance(factory.create_engine(settings(EngineName.RAPIDOCR)), RapidOcrEngine)


def test_vllm_requested_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "vllm_installed", lambda: False)
    with pytest.raises(OcrError) as caught:
        factory.create_engine(settings(EngineName.VLLM))
    assert caught.value.code is ErrorCode.ENGINE_ERROR
    assert "ocr-stream[gpu]" in caught.value.message
    assert "OCR_ENGINE=rapidocr" in caught.value.message


def test_vllm_module_that_fails_to_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "vllm_installed", lambda: True)
    monkeypatch.setitem(sys.modules, "consumer.engines.vllm", None)  # import fails
    with pytest.raises(OcrError) as caught:
        factory.create_engine(settings(EngineName.VLLM))
    assert caught.value.code is ErrorCode.ENGINE_ERROR
    assert "OCR_ENGINE=rapidocr" in caught.value.message


def test_auto_with_vllm_and_gpu_builds_vllm_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Settings] = []

    class FakeVllmEngine:
        def __init__(self, given: Settings) -> None:
            built.append(given)

    module: Any = types.ModuleType("consumer.engines.vllm")
    module.VllmEngine = FakeVllmEngine
    monkeypatch.setitem(sys.modules, "consumer.engines.vllm", module)
    monkeypatch.setattr(factory, "vllm_installed", lambda: True)
    monkeypatch.setattr(factory, "cuda_available", lambda: True)
    chosen = settings(EngineName.AUTO)
    engine = factory.create_engine(chosen)
    assert isinstance(engine, FakeVllmEngine)
    assert built == [chosen]


# Missing CPU engine: the message names the extra and the no-deps step ------------------------


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = factory._module_installed
    monkeypatch.setattr(
        factory, "_module_installed", lambda name: name not in modules and real(name)
    )


def test_rapidocr_requested_but_missing_names_the_cpu_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without(monkeypatch, "rapidocr_onnxruntime")
    with pytest.raises(OcrError) as caught:
        factory.create_engine(settings(EngineName.RAPIDOCR))
    assert caught.value.code is ErrorCode.ENGINE_ERROR
    message = caught.value.message
    assert "rapidocr-onnxruntime" in message and "ocr-stream[cpu]" in message
    assert f"pip install --no-deps '{factory.RAPIDOCR_REQUIREMENT}'" in message


def test_headless_opencv_missing_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "cv2")
    message = factory.rapidocr_missing()
    assert message is not None and "opencv-python-headless" in message


def test_auto_with_no_engine_names_both_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "vllm_installed", lambda: False)
    _without(monkeypatch, "rapidocr_onnxruntime", "onnxruntime")
    with pytest.raises(OcrError) as caught:
        factory.resolve_engine_name(EngineName.AUTO)
    message = caught.value.message
    assert "OCR_ENGINE=auto found no engine" in message and "vLLM is not installed" in message
    assert "ocr-stream[cpu]" in message and "ocr-stream[gpu]" in message


def test_the_requirement_file_and_the_message_agree() -> None:
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[2] / "deploy" / "cpu-engine.txt").read_text()
    requirements = [s for s in lines.splitlines() if s.strip() and not s.startswith("#")]
    assert requirements == [factory.RAPIDOCR_REQUIREMENT]
