"""Does decoding a page's ids once give the text vLLM's incremental decoding gives?

vLLM 0.26 detokenizes with the `tokenizers` library's DecodeStream, primed with the prompt
(FastIncrementalDetokenizer); OCR_DETOKENIZE=final decodes the whole id list once instead.
This compares the two on the benchmark tokenizer (deploy/gpu/make_model.py: byte-level BPE
over DeepSeek-OCR's 129,280 ids): real text, and random ids, whose byte runs are often not
valid UTF-8.

    python -m venv /tmp/tok && /tmp/tok/bin/pip install tokenizers transformers
    /tmp/tok/bin/python deploy/gpu/make_model.py /tmp/tokmodel
    /tmp/tok/bin/python bench/detokenize_check.py /tmp/tokmodel/tokenizer.json
"""

from __future__ import annotations

import random
import sys

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
TEXTS = [
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 120]]<|/det|>\n# Quarterly report\n\n"
    "Revenue grew by 12% — naïve café 数据 表格 😀\n<table><tr><td>a</td><td>b</td></tr></table>",
    "Plain line\n\n- item one\n- item two, ₹ 1,234.56 ½",
]


def incremental(tokenizer: Tokenizer, prompt: list[int], ids: list[int]) -> str:
    stream = DecodeStream(ids=prompt, skip_special_tokens=False)
    pieces = []
    for token in ids:
        try:
            piece = stream.step(tokenizer, token)
        except Exception:  # vLLM resets the stream on an invalid prefix, and so do we
            stream = DecodeStream(skip_special_tokens=False)
            piece = stream.step(tokenizer, token)
        pieces.append(piece or "")
    return "".join(pieces)


def main(path: str) -> int:
    tokenizer = Tokenizer.from_file(path)
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    failures = 0
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        same = incremental(tokenizer, prompt, ids) == tokenizer.decode(ids, False)
        failures += not same
        print(f"real text, {len(ids)} ids: {'same' if same else 'DIFFERENT'}")
    rng = random.Random(1)
    same_random = 0
    for _ in range(200):
        ids = [rng.randrange(tokenizer.get_vocab_size()) for _ in range(300)]
        same_random += incremental(tokenizer, prompt, ids) == tokenizer.decode(ids, False)
    print(f"random ids: {same_random}/200 the same (the rest hold invalid UTF-8 byte runs)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
