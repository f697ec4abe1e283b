"""Markdown clean-up and Markdown-to-plain-text for engine output.

DeepSeek-OCR writes Markdown with HTML tables and LaTeX; `clean_markdown` removes what
must never reach a result (tags, special tokens, a tag or HTML tag cut off at the end) and
normalises the little things DeepSeek's own post-processing fixes. `markdown_to_text`
makes the `text` field: the same lines without Markdown syntax, for search and for
consumers that do not render Markdown.
"""

from __future__ import annotations

import html
import re

from consumer.postprocess.grounding import (
    strip_partial_tag_at_end,
    strip_special_tokens,
    strip_tags,
)

# Every pattern here runs on model output, which a page can steer (16,000 spaces, `[[[[`),
# so none may backtrack super-linearly: a quadratic pattern holds the GIL for seconds on a
# 16K-character line (tests/unit/test_postprocess_linear.py). The rules used below: a
# repeated class never sits next to another that matches the same characters (possessive
# `*+` where it would), a delimited span cannot contain its own opening delimiter (so each
# start scans only to the next start), and trailing-space work is done per line in Python.
_BLANK_RUNS = re.compile(r"\n{3,}")
# An HTML tag cut off by the token cap (`<table><tr><td`): half a tag is noise.
# Only the tags DeepSeek-OCR writes, and attributes only with '=', so that text such as
# "if a <b holds" survives.
_PARTIAL_HTML_AT_END = re.compile(
    r"</?(?:table|thead|tbody|tr|td|th|br|sup|sub|span|div|p|b|i|u|s|img|caption|center)?"
    r"(?:\s+[A-Za-z-]+=[^<>\n]{0,80})?\s*$",
    re.IGNORECASE,
)
# A cut-off special tag and a cut-off HTML tag before it are all the end can hold; more
# rounds would only eat a text of '<' one character per O(n) round.
_CUT_ROUNDS = 3

# DeepSeek-OCR's own post-processing rewrites these two macros (they do not render in
# common Markdown math engines).
_LATEX_FIXES = (("\\coloneqq", ":="), ("\\eqqcolon", "=:"))

# Label and target exclude '[': from each '[' the scan stops at the next one (unbounded,
# 20,000 '[' took 7 s on the 2-CPU VM with the GIL held).
_IMAGE = re.compile(r"!\[([^\[\]\n]*)\]\([^\[)\n]*\)")
_LINK = re.compile(r"\[([^\[\]\n]+)\]\([^\[)\n]*\)")
# The heading's text is taken whole; its closing `#`s are cut in _heading_text.
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]++(.*)$", re.MULTILINE)
_SETEXT_RULE = re.compile(r"^[ \t]*+(?:=++|-{3,}+|\*{3,}+|_{3,}+)[ \t]*+$", re.MULTILINE)
_BLOCKQUOTE = re.compile(r"^[ \t]*+(?:>[ \t]?)+", re.MULTILINE)
_BULLET = re.compile(r"^([ \t]*+)[-*+][ \t]+", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]*+(?:```|~~~).*$", re.MULTILINE)
# Bold and strike content cannot pass its own delimiter.
_BOLD = re.compile(r"(\*\*|__)(?=\S)((?:(?!\1).)+?)(?<=\S)\1")
_STAR_EM = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
# Underscore emphasis only at word boundaries, so snake_case survives.
_UNDERSCORE_EM = re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)((?:(?!~~).)+?)(?<=\S)~~")
# Opened only at the start of a run of backticks, which is scanned once.
_CODE = re.compile(r"(?<!`)`++([^`\n]*+)`+")
_TABLE_SEPARATOR = re.compile(
    r"^[ \t]*+\|?+(?:[ \t]*+:?+-{2,}+:?+[ \t]*+\|)++[ \t]*+:?+-*+:?+[ \t]*+$"
)
_MATH_DELIMITERS = re.compile(r"\\[\[\]()]|\$\$")
_ROW_END = re.compile(r"</tr\s*>|<br\s*/?>|</(?:p|div|h[1-6]|li|caption)\s*>", re.IGNORECASE)
_CELL_END = re.compile(r"</t[dh]\s*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*+(?:\s[^<>]*+)?/?>")
_SPACES = re.compile(r"[ \t]{2,}")


def _without_trailing_space(text: str) -> str:
    # Not `[ \t]+$`: searched, it rescans a run of spaces from each of its characters.
    return "\n".join(line.rstrip(" \t") for line in text.split("\n"))


def _heading_text(match: re.Match[str]) -> str:
    """A heading's text without its optional closing sequence (`## Title ##`)."""
    text = match.group(1).rstrip(" \t")
    bare = text.rstrip("#")
    if bare != text and (not bare or bare[-1] in " \t"):
        return bare.rstrip(" \t")
    return text


def clean_markdown(raw: str) -> str:
    """Markdown fit for a result: no tags or special tokens, tidy blank lines."""
    text = strip_tags(strip_special_tokens(raw))
    for _ in range(_CUT_ROUNDS):  # '...<td><|de' is cut twice: first the tag, then the HTML
        cut = _PARTIAL_HTML_AT_END.sub("", strip_partial_tag_at_end(text))
        if cut == text:
            break
        text = cut
    for old, new in _LATEX_FIXES:
        text = text.replace(old, new)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _without_trailing_space(text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


def _table_row(line: str) -> str:
    """`| a | b |` -> `a b`: one line per row, cells separated by a space."""
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return " ".join(cell for cell in cells if cell)


def markdown_to_text(md: str) -> str:
    """Plain text with the Markdown's line structure; at most one blank line in a row."""
    text = _IMAGE.sub("", md)  # figures have no text of their own
    text = _LINK.sub(r"\1", text)
    # HTML (DeepSeek writes tables as HTML): one line per row, cells split by a space.
    text = _ROW_END.sub("\n", text)
    text = _CELL_END.sub(" ", text)
    text = _ANY_TAG.sub("", text)
    text = _FENCE.sub("", text)
    text = _HEADING.sub(_heading_text, text)
    text = _SETEXT_RULE.sub("", text)
    text = _BLOCKQUOTE.sub("", text)
    text = _BULLET.sub(r"\1", text)
    text = _CODE.sub(r"\1", text)
    text = _BOLD.sub(r"\2", text)
    text = _STRIKE.sub(r"\1", text)
    text = _STAR_EM.sub(r"\1", text)
    text = _UNDERSCORE_EM.sub(r"\1", text)
    text = _MATH_DELIMITERS.sub("", text)
    # Entities last: '&lt;b&gt;' is text, not a tag to remove.
    text = html.unescape(text).replace("\r\n", "\n").replace("\r", "\n")
    lines: list[str] = []
    for line in text.split("\n"):
        if _TABLE_SEPARATOR.match(line):
            continue
        if line.lstrip().startswith("|"):
            line = _table_row(line)
        line = _SPACES.sub(" ", line).strip()
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)
