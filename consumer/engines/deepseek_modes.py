"""DeepSeek-OCR resolution modes on vLLM: one mode per process, set before the engine starts.

vLLM's DeepSeek-OCR support reads the mode from module constants (`BASE_SIZE`, `IMAGE_SIZE`,
`CROP_MODE`) at call time: the processor sizes come from them and so does the number of
image placeholder tokens. Passing other sizes through `mm_processor_kwargs` alone changes the
first and not the second ("Attempted to assign 273 multimodal tokens to 903 placeholders"),
so another mode means rewriting the constants, in every process that handles images:

- this process (the frontend turns each image into tensors and placeholder tokens), and
- the engine core child, which builds dummy images to profile memory. A forked child
  inherits the patched modules; a spawned one (vLLM spawns when CUDA is already initialised
  or VLLM_WORKER_MULTIPROC_METHOD=spawn) re-imports vLLM and must patch itself: it does so
  through `vllm_general_plugin`, a `vllm.general_plugins` entry point that vLLM loads in
  every process, reading the mode from the environment variable `ENV_MODE`.

The crop flag also has to reach the processor call, whose `crop_mode` default is bound when
vLLM is imported; `mm_processor_kwargs()` gives the engine argument that passes it.

This module imports only the standard library at import time: vLLM loads it as a plugin in
its engine processes, which need not be able to import the rest of the consumer.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib import metadata

ENV_MODE = "OCR_VLLM_RESOLUTION_MODE"
PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_VALUE = "consumer.engines.deepseek_modes:vllm_general_plugin"

PROCESSOR_MODULE = "vllm.transformers_utils.processors.deepseek_ocr"
MODEL_MODULE = "vllm.model_executor.models.deepseek_ocr"


@dataclass(frozen=True, slots=True)
class Resolution:
    base_size: int  # the global view is padded to base_size x base_size
    image_size: int  # tile size (crop on) or the resize target of the image (crop off)
    crop: bool


# DeepSeek-OCR's own table (DeepSeek-OCR-vllm/config.py).
MODES: dict[str, Resolution] = {
    "tiny": Resolution(512, 512, False),
    "small": Resolution(640, 640, False),
    "base": Resolution(1024, 1024, False),
    "large": Resolution(1280, 1280, False),
    "gundam": Resolution(1024, 640, True),
}
DEFAULT_MODE = "gundam"  # what vLLM ships; needs no patch


class ModeError(RuntimeError):
    """The mode cannot be set in this process (unknown, or another mode is already live)."""


_active: str | None = None


def resolution(mode: str) -> Resolution:
    try:
        return MODES[mode]
    except KeyError:
        raise ModeError(f"unknown resolution mode {mode!r}; one of {', '.join(MODES)}") from None


def mm_processor_kwargs(mode: str) -> dict[str, object] | None:
    """Engine-level processor kwargs for `mode`: the crop flag, which the processor call
    takes from its keyword arguments (vLLM merges these into every call)."""
    if mode == DEFAULT_MODE:
        return None
    return {"crop_mode": resolution(mode).crop}


def num_image_tokens(mode: str, width: int, height: int) -> int | None:
    """Image placeholder tokens of one image in a mode without cropping (None for gundam,
    whose count depends on the tiling vLLM picks)."""
    spec = resolution(mode)
    if spec.crop:
        return None
    side = -(-(spec.base_size // 16) // 4)  # 16-px patches, 4x downsampling, rounded up
    return side * (side + 1) + 1  # a newline token ends each row, plus one separator


def _patch_modules(spec: Resolution) -> None:
    import importlib

    for name in (PROCESSOR_MODULE, MODEL_MODULE):
        module = importlib.import_module(name)
        module.BASE_SIZE = spec.base_size  # type: ignore[attr-defined]
        module.IMAGE_SIZE = spec.image_size  # type: ignore[attr-defined]
        module.CROP_MODE = spec.crop  # type: ignore[attr-defined]


def current_mode() -> str | None:
    """The mode this process's vLLM modules are set to, or None before any engine set one."""
    return _active


def activate(mode: str) -> None:
    """Set vLLM's DeepSeek-OCR constants for `mode` in this process (and, through the
    environment, in engine processes it spawns). Idempotent for the same mode; a different
    mode while one is active raises ModeError: the constants are process-wide."""
    global _active
    spec = resolution(mode)
    if _active is not None and _active != mode:
        raise ModeError(
            f"resolution mode {_active!r} is already active in this process; vLLM's "
            f"DeepSeek-OCR mode is process-wide, so {mode!r} needs its own process"
        )
    # vLLM's default needs no patch, and importing vLLM's model modules early is avoided
    # on the production path; only a process that had another mode set is reset.
    if mode != DEFAULT_MODE or MODEL_MODULE in sys.modules:
        _patch_modules(spec)
    os.environ[ENV_MODE] = mode
    _active = mode


def release(mode: str) -> None:
    """Back to vLLM's default once the engine that set `mode` has shut down."""
    global _active
    if _active != mode:
        return
    _active = None
    os.environ.pop(ENV_MODE, None)
    if mode != DEFAULT_MODE and MODEL_MODULE in sys.modules:
        _patch_modules(MODES[DEFAULT_MODE])


def plugin_registered() -> bool:
    """True when vLLM will find `vllm_general_plugin` (the package is installed with its
    entry point, or a dist-info folder on the path declares it)."""
    try:
        found = metadata.entry_points(group=PLUGIN_GROUP)
    except Exception:  # a broken distribution on the path must not break start-up
        return False
    return any(entry.value.replace(" ", "") == PLUGIN_VALUE for entry in found)


ENV_STACKS = "OCR_VLLM_STACKS_ON_SIGUSR1"


def vllm_general_plugin() -> None:
    """vLLM's hook in each of its processes: apply the mode the parent chose, if any.

    It also registers the model class of the uint8 pixel path when the parent turned it on
    (`deepseek_pixels.ENV`). With OCR_VLLM_STACKS_ON_SIGUSR1=1 it makes SIGUSR1 print every
    thread's stack, so that a stuck engine core can be inspected from outside (`kill -USR1 PID`).
    """
    mode = os.environ.get(ENV_MODE)
    if mode and mode in MODES and mode != DEFAULT_MODE:
        _patch_modules(MODES[mode])
    # Issue 21's uint8 pixels (consumer/engines/deepseek_pixels.py): the model class that
    # the parent's setting asks for, registered in this process too.
    from consumer.engines import deepseek_pixels

    deepseek_pixels.apply_from_env()
    if os.environ.get(ENV_STACKS) == "1":
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)
