"""Cost of one decode step of the batched no-repeat n-gram rule, on the CPU alone.

The rule runs inside vLLM's engine core between the forward pass and the sampler, so its
time a step is time the GPU can wait. This drives `NgramBook` the way vLLM does (one token
appended to every page's list per step, DeepSeek-OCR's n=30 / window 90 / whitelist) and
reports the median time of `banned()` a step, for three batches: pages of text (tokens
that rarely repeat), one page in eight looping over a 40-token phrase, and every page
looping over a 4-token phrase (a stuck page, and what dummy weights emit on the GPU host).
No GPU, vLLM or torch needed:

    .venv/bin/python bench/ngram_step.py --pages 256 --steps 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from consumer.engines.deepseek_prompts import NGRAM_WHITELIST_TOKEN_IDS
from consumer.engines.ngram_ban import NgramBook, NgramRule, rule_extra_args


class _Params:
    def __init__(self, rule: NgramRule) -> None:
        self.extra_args = rule_extra_args(rule)


class _Added:
    def __init__(self, added: list[tuple[int, Any, Any, list[int]]]) -> None:
        self.removed: list[int] = []
        self.added = added
        self.moved: list[tuple[int, int, Any]] = []


# (name, share of the pages that loop, the loop's period in tokens)
BATCHES = (("text", 0.0, 40), ("one-in-eight-looping", 0.125, 40), ("all-looping", 1.0, 4))


def measure(
    pages: int, steps: int, vocabulary: int, seed: int, looping_share: float, period: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rule = NgramRule(30, 90, frozenset(NGRAM_WHITELIST_TOKEN_IDS))
    outputs: list[list[int]] = [[] for _ in range(pages)]
    book = NgramBook()
    book.update(_Added([(row, _Params(rule), None, outputs[row]) for row in range(pages)]))
    # Pages that loop (a phrase repeated) make the rule ban, as a stuck page does.
    phrase = rng.integers(0, vocabulary, size=period).tolist()
    looping = set(range(round(pages * looping_share)))
    timings: list[float] = []
    bans = 0
    for step in range(steps):
        for row, ids in enumerate(outputs):
            ids.append(phrase[step % period] if row in looping else int(rng.integers(vocabulary)))
        began = time.perf_counter()
        rows, _tokens = book.banned()
        timings.append(time.perf_counter() - began)
        bans += rows.size
    return {
        "looping_pages": len(looping),
        "loop_period": period,
        "steps": steps,
        "rule": {"ngram": rule.ngram, "window": rule.window},
        "median_ms_per_step": round(1000 * statistics.median(timings), 3),
        "p99_ms_per_step": round(1000 * sorted(timings)[int(0.99 * len(timings))], 3),
        "bans": bans,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--vocabulary", type=int, default=129_280)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    report = {
        "pages": args.pages,
        "steps": args.steps,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
        f"python {platform.python_version()}, numpy {np.__version__}",
        "batches": {
            name: measure(args.pages, args.steps, args.vocabulary, args.seed, share, period)
            for name, share, period in BATCHES
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
