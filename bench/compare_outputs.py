"""Do two benchmark runs give the same text, page by page?

`ocr-bench` records a digest of every page's raw output (`output_digests`, by page index;
under `passes` for `ocr-bench decoding`). Greedy decoding of the same pages with the same
weights and rule should give the same text whatever the engine settings (vision encoder
graphs, n-gram implementation, detokenization); this says how many pages agree.

    python bench/compare_outputs.py A.json B.json            # top-level digests
    python bench/compare_outputs.py A.json B.json --pass batched+final

Dummy weights are drawn from a fixed seed, so two runs of one model folder are comparable;
bf16 kernels that batch differently may still flip a greedy choice, so a share just under
1.0 is expected and the first differing pages are listed for a closer look.
Exit status: 0 when every shared page agrees, 1 otherwise, 2 when nothing can be compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Run by path: the repository root goes first, so `bench` is this folder's package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_engine import compare_digests as compare


def digests(result: dict[str, Any], pass_name: str | None) -> list[str | None]:
    source = result if pass_name is None else result.get("passes", {}).get(pass_name, {})
    found = source.get("output_digests")
    if not isinstance(found, list):
        where = "the result" if pass_name is None else f"pass {pass_name!r}"
        raise SystemExit(f"error: no output_digests in {where} (recorded since 2026-12-03)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--pass", dest="pass_name", default=None, help="a decoding pass")
    args = parser.parse_args(argv)
    first = digests(json.loads(args.first.read_text()), args.pass_name)
    second = digests(json.loads(args.second.read_text()), args.pass_name)
    figures = compare(first, second)
    print(json.dumps(figures))
    if not figures["pages_compared"]:
        return 2
    return 0 if figures["pages_same"] == figures["pages_compared"] else 1


if __name__ == "__main__":
    sys.exit(main())
