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

# The frontend: this process (the benchmark or the consumer) with vLLM's AsyncLLM in it. The
# renderer's thread pool lives in vllm/tokenizers/, hence preprocessing before detokenising.
FRONTEND_STAGES: tuple[tuple[str, str], ...] = (
    (
        "image preprocessing",
        r"_process_multimodal|processors/deepseek_ocr|multimodal/processing|PIL/|torchvision",
    ),
    ("post-processing", r"consumer/postprocess|deepseek_page_text|classify_finish"),
    ("detokenisation", r"_page_text|tokenization_utils|tokenizers/"),
    ("request to core (serialise, send)", r"MsgpackEncoder|add_request|core_client"),
    ("outputs from core", r"output_processor|process_outputs|output_handler|EngineCoreOutputs"),
    ("kafka / redis / consumer loop", r"aiokafka|redis/|consumer/(loop|tasks|publisher|state)"),
    ("benchmark", r"bench/|producer_tools/"),
    ("event loop, other", r"asyncio|selectors|base_events"),
)
# The engine core process. The vision encoder's CPU work comes first: it runs inside the
# model runner's step, which the later patterns would otherwise claim.
CORE_STAGES: tuple[tuple[str, str], ...] = (
    ("vision: pixel tensors batched on the CPU", r"group_and_batch_mm_kwargs"),
    ("vision: waiting for the encoder's output", r"postprocess_encoder_output"),
    ("vision: encoder launch and input copies", r"_execute_mm_encoder|encoder_cudagraph"),
    ("n-gram rule", r"ngram_ban|ngram_processor"),
    ("scheduler", r"v1/core/sched/"),
    ("sampler", r"v1/sample/"),
    ("GPU wait / sync", r"synchronize|_to_list|tolist|async_output|wait_for"),
    ("input batch bookkeeping", r"_update_states|gpu_input_batch|_prepare_inputs|block_table"),
    ("model forward (launch)", r"_model_forward|gpu_model_runner\.py.*execute_model"),
    ("requests in (deserialise)", r"process_input_sockets|MsgpackDecoder"),
    ("outputs out (serialise)", r"process_output_sockets|MsgpackEncoder"),
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


def top_leaves(stacks: Counter[str], limit: int = 15) -> list[tuple[str, float]]:
    """The frames samples were taken in (a stack's last frame), by share."""
    total = sum(stacks.values())
    leaves: Counter[str] = Counter()
    for stack, count in stacks.items():
        leaves[stack.rsplit(";", 1)[-1]] += count
    return [(frame, round(count / total, 3)) for frame, count in leaves.most_common(limit)]


def main(argv: list[str] | None = None) -> int:
    """`python bench/pyspy_summary.py core|frontend FILE...`: each file's stage shares and
    the frames most samples were taken in, as JSON (files may be .xz)."""
    import json
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("core", "frontend"):
        print(main.__doc__, file=sys.stderr)
        return 2
    stages = CORE_STAGES if args[0] == "core" else FRONTEND_STAGES
    out = {}
    for name in args[1:]:
        path = Path(name)
        opener = __import__("lzma").open if path.suffix == ".xz" else open
        with opener(path, "rt") as handle:
            stacks = parse_collapsed(handle.read())
        out[path.name] = classify(stacks, stages) | {"top_leaves": top_leaves(stacks)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
