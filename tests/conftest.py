"""Shared test set-up.

Hypothesis runs under the "ci" profile by default: on a busy 2-core machine the default
200 ms deadline fails examples for timing noise, not for bugs. HYPOTHESIS_PROFILE=dev keeps
the deadline for local runs that want it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# What VllmEngine.start() and the resolution-mode switch export to vLLM's engine core
# through os.environ (consumer/engines/vllm.py, deepseek_modes.py, deepseek_pixels.py).
# A test that starts an engine on a fake backend would otherwise leave them set for every
# later test and the processes it starts (a base install then loaded our vLLM model class).
ENGINE_EXPORTS = (
    "VLLM_USE_V2_MODEL_RUNNER",
    "VLLM_WORKER_MULTIPROC_METHOD",
    "OCR_VISION_UINT8",
    "OCR_VLLM_RESOLUTION_MODE",
    "VLLM_TUNED_CONFIG_FOLDER",
)


@pytest.fixture(autouse=True)
def _engine_exports_stay_in_their_test(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENGINE_EXPORTS:
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])  # restored as it was
        else:
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)  # removed again after the test


@pytest.fixture(autouse=True)
def _logging_setup_stays_in_its_test() -> Iterator[None]:
    """A test (or a tool's main run in-process) that configures logging, e.g. at WARNING,
    would filter later tests' events before `capture_logs` sees them: restored after."""
    config = structlog.get_config()
    saved = {**config, "processors": list(config["processors"])}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
