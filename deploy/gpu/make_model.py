"""Write a DeepSeek-OCR model folder for `load_format=dummy` runs (no weights needed).

vLLM's dummy loader gives random weights of the real architecture (real speed and memory,
garbage text) but still reads `config.json` and a tokenizer. This writes:

- `config.json`: DeepSeek-OCR's published configuration (DeepSeek-V2 MoE decoder with 12
  layers, 64 routed experts, SAM-B + CLIP-L vision encoders);
- a byte-level BPE tokenizer that fills the whole 129,280-id vocabulary, with the special
  tokens at their real ids. Random weights emit ids from the entire vocabulary; a toy
  vocabulary makes vLLM's detokenizer take a slow path for unknown ids, so only a full one
  gives real detokenization cost. Byte-level BPE is what the real tokenizer is, so decoding
  random ids exercises the same incremental UTF-8 handling.

Needs `tokenizers` and `transformers` (present wherever vLLM is), not torch.
Usage: python deploy/gpu/make_model.py OUT_DIR [--layers 12]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

VOCAB_SIZE = 129_280
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
# DeepSeek-OCR's special tokens at their ids in the real vocabulary.
SPECIAL_IDS: dict[str, int] = {
    BOS: 0,
    EOS: 1,
    PAD: 2,
    "<image>": 128815,
    "<|ref|>": 128816,
    "<|/ref|>": 128817,
    "<|det|>": 128818,
    "<|/det|>": 128819,
    "<|grounding|>": 128820,
    "<td>": 128821,
    "</td>": 128822,
}
MAX_TOKEN_CHARS = 16  # real BPE vocabularies are mostly short pieces


def language_config(layers: int) -> dict[str, Any]:
    return {
        "architectures": ["DeepseekV2ForCausalLM"],
        "bos_token_id": 0,
        "eos_token_id": 1,
        "first_k_dense_replace": 1,
        "hidden_size": 1280,
        "intermediate_size": 6848,
        "kv_lora_rank": None,
        "lm_head": True,
        "max_position_embeddings": 8192,
        "moe_intermediate_size": 896,
        "n_group": 1,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_attention_heads": 10,
        "num_experts_per_tok": 6,
        "num_hidden_layers": layers,
        "num_key_value_heads": 10,
        "q_lora_rank": None,
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "rm_head": False,
        "topk_group": 1,
        "topk_method": "greedy",
        "torch_dtype": "bfloat16",
        "use_mla": False,
        "v_head_dim": 0,
        "vocab_size": VOCAB_SIZE,
    }


def model_config(layers: int) -> dict[str, Any]:
    language = language_config(layers)
    config: dict[str, Any] = {
        "architectures": ["DeepseekOCRForCausalLM"],
        "model_type": "deepseek_vl_v2",
        "candidate_resolutions": [[1024, 1024]],
        "global_view_pos": "head",
        "tile_tag": "2D",
        "torch_dtype": "bfloat16",
        # As in the released config. Without it transformers 5 takes the folder for an
        # old Mistral tokenizer and warns on every tokenizer load.
        "transformers_version": "4.46.3",
        "language_config": language,
        "projector_config": {
            "input_dim": 2048,
            "model_type": "mlp_projector",
            "n_embed": 1280,
            "projector_type": "linear",
        },
        "vision_config": {
            "image_size": 1024,
            "mlp_ratio": 3.7362,
            "model_name": "deeplip_b_l",
            "model_type": "vision",
            "width": {
                "clip-l-14-224": {
                    "heads": 16,
                    "image_size": 224,
                    "layers": 24,
                    "patch_size": 14,
                    "width": 1024,
                },
                "sam_vit_b": {
                    "downsample_channels": [512, 1024],
                    "global_attn_indexes": [2, 5, 8, 11],
                    "heads": 12,
                    "layers": 12,
                    "width": 768,
                },
            },
        },
    }
    # The released config repeats the language fields at the top level; vLLM reads both.
    for key, value in language.items():
        if key not in ("architectures", "torch_dtype"):
            config[key] = value
    return config


def bpe_vocab(seed: int = 0) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A valid byte-level BPE over exactly VOCAB_SIZE ids: the 256 byte symbols, then
    merged pieces (each the concatenation of two earlier ones, so every piece is reachable
    by the merge list), with the special tokens at their fixed ids."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    reserved = set(SPECIAL_IDS.values())
    free_ids = (i for i in range(VOCAB_SIZE) if i not in reserved)
    vocab: dict[str, int] = dict(SPECIAL_IDS)
    pieces: list[str] = []
    for symbol in alphabet:
        vocab[symbol] = next(free_ids)
        pieces.append(symbol)
    merges: list[tuple[str, str]] = []
    rng = random.Random(seed)
    for token_id in free_ids:
        while True:
            # Left part from anywhere so far, right part from the early (short) pieces:
            # lengths then spread like a trained vocabulary's instead of doubling.
            left = pieces[rng.randrange(len(pieces))]
            right = pieces[rng.randrange(min(len(pieces), 4096))]
            merged = left + right
            if len(merged) <= MAX_TOKEN_CHARS and merged not in vocab:
                break
        vocab[merged] = token_id
        pieces.append(merged)
        merges.append((left, right))
    if len(vocab) != VOCAB_SIZE or sorted(vocab.values()) != list(range(VOCAB_SIZE)):
        raise RuntimeError("vocabulary does not cover every id exactly once")
    return vocab, merges


def write_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = bpe_vocab()
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Like the real tokenizer, plain encode() starts with BOS (DeepSeek-OCR's processor
    # encodes without special tokens and adds BOS itself).
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[t for t, i in SPECIAL_IDS.items() if i > 2],
    )
    fast.model_max_length = 8192
    fast.save_pretrained(str(out))
    for token, token_id in SPECIAL_IDS.items():
        if fast.convert_tokens_to_ids(token) != token_id:
            raise RuntimeError(f"{token} got id {fast.convert_tokens_to_ids(token)}")
    return len(fast)


def write_model(out: Path, layers: int = 12) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    size = write_tokenizer(out)
    (out / "config.json").write_text(json.dumps(model_config(layers), indent=1))
    print(f"wrote {out}: {layers} layers, tokenizer of {size} ids", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=12, help="decoder layers (real: 12)")
    args = parser.parse_args(argv)
    write_model(args.out, args.layers)


if __name__ == "__main__":
    main()
