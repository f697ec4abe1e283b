"""Fixtures for tests of the vLLM engine on a real GPU, with dummy (random) weights.

Everything under tests/gpu is skipped unless torch sees a CUDA GPU and vLLM imports; CI
and laptops collect it and skip. The model folder is $OCR_GPU_MODEL when set (the GPU
driver script builds one with deploy/gpu/make_model.py), else one built here.

Engine settings come from Settings, i.e. from OCR_* variables on top of the defaults, so a
run that exports the benchmark's OCR_MAX_NUM_SEQS etc. starts the tests' engine with the
same vLLM arguments and reuses the compiled kernels the benchmark left in vLLM's cache.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.config import Settings

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _gpu_missing() -> str | None:
    """Why these tests cannot run here, or None. Never initialises CUDA: vLLM must be free
    to fork its engine core (it spawns instead once CUDA is initialised)."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed"
    # Ask NVML, not the CUDA driver: a driver-based is_available() initialises CUDA in this
    # process, after which vLLM's forked engine core dies with "Cannot re-initialize CUDA
    # in forked subprocess" (seen on the H100 host).
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    try:
        import torch
    except Exception as exc:  # no torch, or one that fails to load its CUDA libraries
        return f"torch does not import: {exc}"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in item.path.parents]
    if not mine:
        return
    reason = _gpu_missing()
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("OCR_GPU_MODEL")
    if given:
        return Path(given)
    spec = importlib.util.spec_from_file_location(
        "ocr_make_model", REPO / "deploy" / "gpu" / "make_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path: Path = module.write_model(tmp_path_factory.mktemp("model"))
    return path


@pytest.fixture(scope="session")
def engine_options() -> dict[str, Any]:
    """VllmEngine options: the variant named by $OCR_TEST_VLLM_VARIANT (the GPU driver
    passes the one the benchmark found working), else the engine's defaults."""
    from consumer.engines.vllm import VARIANTS

    name = os.environ.get("OCR_TEST_VLLM_VARIANT", "").strip()
    return dict(VARIANTS[name]) if name else {}


@pytest.fixture(scope="session")
def gpu_settings(model_dir: Path) -> Iterator[Any]:
    """A factory of Settings for a dummy-weight engine; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"model": str(model_dir), "load_format": "dummy"}
        values.update(overrides)
        return Settings(**values)

    yield make
