"""py-spy samples of the two vLLM processes, filed by stage.

`py-spy record --format raw` writes collapsed stacks (`frame;frame;... count`). Each stack
goes to the first stage of the process's list whose pattern occurs in it, so the order of
the lists matters: the narrower pattern first. Shares are of the samples taken (py-spy
skips idle threads unless asked, so a share is of the process's busy CPU time, summed over
its threads; the engine core's main thread is the one that matters for the GPU).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

# The frontend: this process (the benchmark or the consumer) with vLLM's AsyncLLM in it.
FRONTEND_STAGES: tuple[tuple[str, str], ...] = (
    ("detokenisation", r"tokeniz|_page_text.*decode|\bdecode \(tokenizers"),
    ("post-processing", r"consumer/postprocess|deepseek_page_text|classify_finish"),
    ("image preprocessing", r"_process_multimodal|processors/deepseek_ocr|image_process|PIL/"),
    ("request to core (serialise, send)", r"serial_utils|msgpack|add_request|core_client"),
    ("outputs from core", r"output_processor|process_outputs|output_handler"),
    ("kafka / redis / consumer loop", r"aiokafka|redis/|consumer/(loop|tasks|publisher|state)"),
    ("benchmark", r"bench/|producer_tools/"),
    ("event loop, other", r"asyncio|selectors|base_events"),
)
# The engine core process.
CORE_STAGES: tuple[tuple[str, str], ...] = (
    ("n-gram rule", r"ngram_ban|ngram_processor"),
    ("vision encoder (launch, graphs)", r"_execute_mm_encoder|encoder_cudagraph|deepseek_ocr\.py"),
    ("scheduler", r"v1/core/sched/|scheduler\.py"),
    ("sampler", r"v1/sample/"),
    (
        "model forward (launch)",
        r"gpu_model_runner\.py.*(execute_model|_model_forward)|cuda_graph|cudagraph",
    ),
    ("input batch bookkeeping", r"gpu_input_batch|_update_states|_prepare_inputs|block_table"),
    ("requests in (deserialise)", r"process_input_sockets|serial_utils.*decode|msgpack"),
    ("outputs out (serialise)", r"process_output_sockets|serial_utils.*encode"),
    ("GPU wait / sync", r"synchronize|_to_list|\.tolist|async_output|wait_for"),
    ("engine core loop, other", r"v1/engine/core\.py"),
)


def parse_collapsed(text: str) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def classify(stacks: Counter[str], stages: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Samples and shares by stage; stacks no pattern matches are `other`."""
    compiled = [(name, re.compile(pattern)) for name, pattern in stages]
    totals: Counter[str] = Counter()
    for stack, count in stacks.items():
        for name, pattern in compiled:
            if pattern.search(stack):
                totals[name] += count
                break
        else:
            totals["other"] += count
    samples = sum(totals.values())
    order = [name for name, _ in stages] + ["other"]
    return {
        "samples": samples,
        "shares": {
            name: round(totals[name] / samples, 4) if samples else 0.0
            for name in order
            if totals[name]
        },
    }
