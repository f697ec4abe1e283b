"""DeepSeek-OCR's official prompts, and what its raw output needs before post-processing.

Pure functions with no vLLM import, so prompt construction is tested on any machine.
"""

from __future__ import annotations

import re

from consumer.errors import EngineError
from schemas.common import ErrorCode
from schemas.request import PromptKind

IMAGE_TOKEN = "<image>"
EOS_TEXT = "<｜end▁of▁sentence｜>"

# The prompts of DeepSeek-OCR's README and its vLLM scripts, verbatim: the model was trained
# on exactly these strings, so rewording them costs accuracy.
PROMPTS: dict[PromptKind, str] = {
    PromptKind.MARKDOWN: "<image>\n<|grounding|>Convert the document to markdown.",
    PromptKind.OCR: "<image>\n<|grounding|>OCR this image.",
    PromptKind.FREE_OCR: "<image>\nFree OCR.",
    PromptKind.FIGURE: "<image>\nParse the figure.",
    PromptKind.DESCRIBE: "<image>\nDescribe this image in detail.",
    PromptKind.LOCATE: "<image>\nLocate <|ref|>{text}<|/ref|> in the image.",
}

# Token ids of `<td>` and `</td>` in DeepSeek-OCR's vocabulary. A table legitimately repeats
# them far more often than any n-gram window allows, so the no-repeat guard must not ban them
# (the whitelist DeepSeek's own scripts pass).
NGRAM_WHITELIST_TOKEN_IDS = frozenset({128821, 128822})

MAX_LOCATE_TEXT = 512
# Anything that the tokenizer would read as a special token: `<image>` would add an image
# placeholder the request has no image for (the processor then fails the request), and
# `<|...|>` / `<｜...｜>` tags would change the task the model is given.
_SPECIAL_MARKUP = re.compile(r"<image>|<\|[^|>]{0,32}\|>|<｜[^｜>]{0,32}｜>")


def clean_locate_text(text: str) -> str:
    """User text for the locate prompt, with special-token markup and control chars removed."""
    text = _SPECIAL_MARKUP.sub(" ", text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:MAX_LOCATE_TEXT]


def build_prompt(kind: PromptKind, locate_text: str | None = None) -> str:
    """The prompt string for `kind`; `locate` needs the text to find."""
    template = PROMPTS.get(kind)
    if template is None:  # a PromptKind added to the schema but not taught to this engine
        raise EngineError(
            f"prompt {kind!s} is not supported by DeepSeek-OCR", ErrorCode.PROMPT_UNSUPPORTED
        )
    if kind is PromptKind.LOCATE:
        text = clean_locate_text(locate_text or "")
        if not text:
            raise EngineError(
                "prompt 'locate' needs a non-empty locate_text", ErrorCode.PROMPT_UNSUPPORTED
            )
        return template.format(text=text)
    return template


def strip_eos(raw: str) -> str:
    """Raw output without the end-of-sentence marker.

    vLLM leaves the EOS token out of the text when it stops on it, but an output that ends
    by a stop string or the length cap right after emitting it keeps the marker (DeepSeek's
    own scripts strip it the same way).
    """
    if raw.endswith(EOS_TEXT):
        raw = raw[: -len(EOS_TEXT)]
    return raw
