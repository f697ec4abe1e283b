"""The batched no-repeat n-gram rule as a vLLM V1 logits processor.

vLLM loads this class by name (`NGRAM_PROCESSORS` in consumer/engines/vllm_params.py) inside
its engine core, so the module imports vLLM and torch at the top and is never imported by
the consumer itself. The rule and the row bookkeeping live in ngram_ban.py; this is only
the glue: requests opt in through `SamplingParams.extra_args` (see `rule_extra_args`),
and the bans of a step reach the logits as a single indexed write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from consumer.engines.ngram_ban import NgramBook, rule_from_extra_args

if TYPE_CHECKING:
    from vllm.config import VllmConfig


class BatchedNoRepeatNGram(LogitsProcessor):  # type: ignore[misc]
    """DeepSeek-OCR's no-repeat n-gram rule for every page of the batch in one step."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        # Raised here, a bad rule fails the one request when it is submitted.
        rule_from_extra_args(sampling_params.extra_args)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self._book = NgramBook()
        self._device = device
        self._pin = is_pin_memory
        self._neg_inf: torch.Tensor | None = None

    def is_argmax_invariant(self) -> bool:
        return False  # it bans tokens, greedy decoding included

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self._book.update(batch_update)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not len(self._book):
            return logits
        rows, tokens = self._book.banned()
        if rows.size == 0:
            return logits
        # One host-to-device copy and one scatter for the whole batch.
        pairs = torch.from_numpy(np.stack((rows, tokens)))
        if self._pin:
            pairs = pairs.pin_memory()
        pairs = pairs.to(logits.device, non_blocking=True)
        # The value as a tensor already on the device, as vLLM's own processors do: a
        # Python float would become a new scalar tensor every step, and a host scalar can
        # cost a copy that waits for the GPU, in the middle of the engine's step.
        logits.index_put_((pairs[0], pairs[1]), self._negative_infinity(logits))
        return logits

    def _negative_infinity(self, logits: torch.Tensor) -> torch.Tensor:
        value = self._neg_inf
        if value is None or value.dtype != logits.dtype or value.device != logits.device:
            value = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
            self._neg_inf = value
        return value
