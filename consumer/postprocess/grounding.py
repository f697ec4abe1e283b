"""Parse DeepSeek-OCR's grounded output (`<|ref|>label<|/ref|><|det|>[[...]]<|/det|>text`).

With a grounding prompt DeepSeek-OCR writes one span per layout element: a label, one or
more boxes (integers normalised to 0..999 of the image) and the element's Markdown. The
parser is a small tokenizer plus state machine rather than one big regex because the text
it reads is model output: it may be cut mid-tag by the token cap, carry full-width
look-alikes of the tags (`<｜ref｜>`, `［［...］］`), boxes written the seed's other ways
(`【】`, `、`, corner point pairs), special tokens such as `<｜end▁of▁sentence｜>`, stray or
unclosed tags and junk inside the boxes. Every such case
degrades to "less structure", never to an exception.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum

BOX_MAX = 999  # DeepSeek-OCR normalises coordinates to 0..999 of the image side

Box4 = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class GroundedSpan:
    """One element of the page.

    `label` is the text inside `<|ref|>` (title, text, table, image, ... or the query of a
    locate prompt), whitespace-collapsed; '' for text outside any tag (free OCR output, or
    text before the first tag). `boxes` are clamped to 0..999 with x1<=x2 and y1<=y2.
    `text` is what follows the det tag up to the next ref tag, stripped of surrounding
    whitespace and of stray tags.
    """

    label: str
    boxes: tuple[Box4, ...]
    text: str


# Tags, tolerant of full-width bars/brackets, stray spaces and case.
# Spaces but not newlines: text is only ever removed around newlines (trailing spaces),
# so no clean-up step can join two fragments into a new tag.
_TAG = re.compile(r"[<＜][ \t]?[|｜][ \t]?(/?)[ \t]?(ref|det)[ \t]?[|｜][ \t]?[>＞]", re.IGNORECASE)
# End-of-sentence: anything after it is not part of the answer (e.g. ignore_eos runs).
_EOS = re.compile(r"[<＜][|｜]\s?end[▁_ ]?of[▁_ ]?sentence\s?[|｜][>＞]", re.IGNORECASE)
# Other special tokens. Full-width bars never occur in document text, so any such token is
# dropped; with ASCII bars only DeepSeek's own names are, so that an OCR'd ML paper that
# prints `<|endoftext|>` keeps it.
_SPECIAL = re.compile(
    r"[<＜]｜(?!\s?/?\s?(?:ref|det)\s?[|｜])[^<>＜＞|｜\n]{0,40}｜[>＞]"
    r"|<\|(?:[^<>|\n]{0,40}▁[^<>|\n]{0,40}|grounding|user|assistant|pad|bos|eos)\|>",
    re.IGNORECASE,
)
# A tag cut off by the end of the output: '<', '<|', '<|/de', '<｜end▁of', '<|ref|' ...
_PARTIAL_TAG_AT_END = re.compile(r"[<＜](?:\s?[|｜][^<>＜＞|｜\n]{0,40}[|｜]?)?$")
# Inside a det tag: brackets, and the runs of text between them.
_BRACKET_PIECES = re.compile(r"[\[\]]|[^\[\]]+")
_SEPARATORS = re.compile(r"[,\s;]+")
# Box punctuation NFKC leaves alone: lenticular and tortoise-shell brackets, the
# ideographic comma.
_BOX_PUNCTUATION = str.maketrans({"【": "[", "】": "]", "〔": "[", "〕": "]", "、": ","})
_NUMBER = re.compile(r"^[+-]?\d{1,12}(?:\.\d{0,12})?$")
_WHITESPACE = re.compile(r"\s+")


class _Tok(Enum):
    TEXT = 0
    REF_OPEN = 1
    REF_CLOSE = 2
    DET_OPEN = 3
    DET_CLOSE = 4


class _Phase(Enum):
    LEADING = 0  # text before any tag, or after a span whose label was never closed
    LABEL = 1  # inside <|ref|> ... <|/ref|>
    AFTER_LABEL = 2  # label closed, det may follow
    DET = 3  # inside <|det|> ... <|/det|>
    BODY = 4  # the element's text


def strip_special_tokens(text: str) -> str:
    """Cut at end-of-sentence and drop other special tokens (not ref/det tags)."""
    eos = _EOS.search(text)
    if eos is not None:
        text = text[: eos.start()]
    return _SPECIAL.sub("", text)


def strip_partial_tag_at_end(text: str) -> str:
    return _PARTIAL_TAG_AT_END.sub("", text)


# The longest tag or special token the two patterns above match.
_LONGEST_TAG = 90
_OPENERS = frozenset("<＜")
_CLOSERS = frozenset(">＞")


def strip_tags(text: str) -> str:
    """Remove every ref/det tag and special token (for text that must not show them).

    Removing one can form another (`<|re<|det|>f|>` holds `<|ref|>` once `<|det|>` is
    gone), so the text is rebuilt left to right and a tag is removed as soon as its
    closing bracket arrives. A tag contains no ASCII '<', and only the `<|...▁...|>`
    tokens may contain a full-width '＜', so a tag ending at this bracket starts at the
    last opening bracket kept or at the last ASCII '<' kept: two candidates, not every
    earlier position. A removal takes only the end of what was kept, so nothing before it
    can form a tag anew. One pass, where repeating the regexes until nothing changed took
    one pass per nesting level (quadratic).
    """
    if not any(bracket in text for bracket in _CLOSERS):
        return text
    kept: list[str] = []
    openers: list[int] = []  # indexes in `kept` of opening brackets, both widths
    ascii_openers: list[int] = []  # of ASCII '<' only
    for char in text:
        if char in _OPENERS:
            openers.append(len(kept))
            if char == "<":
                ascii_openers.append(len(kept))
        kept.append(char)
        if char not in _CLOSERS or not openers:
            continue
        starts = sorted({openers[-1], *ascii_openers[-1:]})  # leftmost first, as re.sub
        for start in starts:
            if len(kept) - start > _LONGEST_TAG:
                continue
            candidate = "".join(kept[start:])
            if _TAG.fullmatch(candidate) or _SPECIAL.fullmatch(candidate):
                del kept[start:]
                while openers and openers[-1] >= start:
                    openers.pop()
                while ascii_openers and ascii_openers[-1] >= start:
                    ascii_openers.pop()
                break
    return "".join(kept)


def _tokens(raw: str) -> list[tuple[_Tok, str]]:
    text = strip_partial_tag_at_end(strip_special_tokens(raw))
    out: list[tuple[_Tok, str]] = []
    position = 0
    for match in _TAG.finditer(text):
        if match.start() > position:
            out.append((_Tok.TEXT, text[position : match.start()]))
        closing = bool(match.group(1))
        if match.group(2).lower() == "ref":
            out.append((_Tok.REF_CLOSE if closing else _Tok.REF_OPEN, ""))
        else:
            out.append((_Tok.DET_CLOSE if closing else _Tok.DET_OPEN, ""))
        position = match.end()
    if position < len(text):
        out.append((_Tok.TEXT, text[position:]))
    return out


def _clamp(value: float) -> int:
    return max(0, min(BOX_MAX, round(value)))


def _box(x1: float, y1: float, x2: float, y2: float) -> Box4:
    a, b, c, d = _clamp(x1), _clamp(y1), _clamp(x2), _clamp(y2)
    return (min(a, c), min(b, d), max(a, c), max(b, d))


# A bracket group as read: its numbers and sub-groups in order, or None for anything else
# (words, a number too long to be a coordinate), which disqualifies the group as a box.
_Item = float | list["_Item"] | None


def _group_items(det: str) -> list[_Item]:
    """The bracket groups of `det`, nested; a group cut off by the end of the output is
    dropped, the complete groups inside it are kept.

    A stack instead of recursion: the depth is the model's to choose.
    """
    stack: list[list[_Item]] = [[]]
    for piece in _BRACKET_PIECES.findall(det):
        if piece == "[":
            stack.append([])
        elif piece == "]":
            if len(stack) > 1:
                closed = stack.pop()
                stack[-1].append(closed)
            # A stray closing bracket at the top level closes nothing: dropped.
        else:
            for item in _SEPARATORS.split(piece):
                if item:
                    stack[-1].append(float(item) if _NUMBER.match(item) else None)
    while len(stack) > 1:
        # Output cut inside a group: the group is incomplete, its complete groups are not.
        unclosed = stack.pop()
        stack[-1].extend(item for item in unclosed if isinstance(item, list))
    return stack[0]


def _numbers(item: _Item, count: int) -> list[float] | None:
    """`item`'s values when it is a group of exactly `count` numbers."""
    if not isinstance(item, list) or len(item) != count:
        return None
    values = [value for value in item if isinstance(value, float)]
    return values if len(values) == count else None


def _collect_boxes(items: list[_Item], boxes: list[Box4]) -> None:
    for item in items:
        if not isinstance(item, list):
            continue
        coordinates = _numbers(item, 4)
        points = [_numbers(point, 2) for point in item]
        corners = [point for point in points if point is not None]
        if coordinates is not None:
            x1, y1, x2, y2 = coordinates
            boxes.append(_box(x1, y1, x2, y2))
        elif len(corners) >= 2 and len(corners) == len(item):
            # Corner points, `[[x1,y1],[x2,y2]]` (or a polygon's): their bounding box.
            xs = [x for x, _ in corners]
            ys = [y for _, y in corners]
            boxes.append(_box(min(xs), min(ys), max(xs), max(ys)))
        else:
            _collect_boxes(item, boxes)


def parse_boxes(det: str) -> tuple[Box4, ...]:
    """Boxes from the inside of a det tag, as tolerant as DeepSeek's own reader.

    A box is a bracket group of four numbers `[x1, y1, x2, y2]`, or a group of two (or more)
    points `[[x1, y1], [x2, y2]]` (their bounding box). Brackets may be ASCII, full-width
    (`［］`) or lenticular (`【】`); numbers may be separated by commas (also `，` and `、`),
    semicolons or spaces; full-width digits count. Groups that are neither are skipped.
    """
    # NFKC folds full-width brackets, commas and digits to ASCII; the rest by hand.
    det = unicodedata.normalize("NFKC", det).translate(_BOX_PUNCTUATION)
    boxes: list[Box4] = []
    _collect_boxes(_group_items(det), boxes)
    return tuple(boxes)


def _label(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(slots=True)
class _Builder:
    label: str = ""
    det: str = ""
    boxes: tuple[Box4, ...] = ()
    text: str = ""
    phase: _Phase = _Phase.LEADING

    def span(self) -> GroundedSpan | None:
        # Text pieces around a dropped stray tag can join into a new tag: strip again.
        text = strip_tags(self.text).strip()
        if self.phase is _Phase.LEADING and not text:
            return None
        return GroundedSpan(label=_label(strip_tags(self.label)), boxes=self.boxes, text=text)


def parse_grounded(raw: str) -> list[GroundedSpan]:
    """Split raw DeepSeek-OCR output into spans; never raises."""
    spans: list[GroundedSpan] = []
    current = _Builder()

    def finish(done: _Builder, next_phase: _Phase) -> _Builder:
        span = done.span()
        if span is not None:
            spans.append(span)
        return _Builder(phase=next_phase)

    for kind, value in _tokens(raw):
        phase = current.phase
        if kind is _Tok.TEXT:
            if phase is _Phase.LABEL:
                current.label += value
            elif phase is _Phase.DET:
                current.det += value
            else:
                if phase is _Phase.AFTER_LABEL:
                    current.phase = _Phase.BODY  # a ref without det: label and text, no box
                current.text += value
        elif kind is _Tok.REF_OPEN:
            if phase is _Phase.LABEL:
                # The previous ref never closed: what we took for its label was text.
                current.text, current.label = current.label, ""
                current.phase = _Phase.LEADING
            current = finish(current, _Phase.LABEL)
        elif kind is _Tok.REF_CLOSE:
            if phase is _Phase.LABEL:
                current.phase = _Phase.AFTER_LABEL
            # A stray closing ref elsewhere carries nothing: drop it.
        elif kind is _Tok.DET_OPEN:
            if phase is _Phase.LABEL:
                current.phase = _Phase.DET  # the label's close tag was lost
            elif phase is _Phase.AFTER_LABEL or (phase is _Phase.BODY and not current.text.strip()):
                current.phase = _Phase.DET  # a second det right after the first adds boxes
            else:
                current = finish(current, _Phase.DET)  # boxes with no label: a span of its own
        elif kind is _Tok.DET_CLOSE and phase is _Phase.DET:
            current.boxes += parse_boxes(current.det)
            current.det = ""
            current.phase = _Phase.BODY
    if current.phase is _Phase.LABEL:
        return spans  # output cut inside a label: the span has nothing yet
    if current.phase is _Phase.DET:
        current.boxes += parse_boxes(current.det)  # cut inside det: keep the complete boxes
    span = current.span()
    if span is not None:
        spans.append(span)
    return spans


def render_grounded(spans: list[GroundedSpan]) -> str:
    """The raw form DeepSeek-OCR writes for `spans` (tests and fixtures)."""
    parts: list[str] = []
    for span in spans:
        if span.label or span.boxes:
            boxes = ", ".join(f"[{x1}, {y1}, {x2}, {y2}]" for x1, y1, x2, y2 in span.boxes)
            parts.append(f"<|ref|>{span.label}<|/ref|><|det|>[{boxes}]<|/det|>\n{span.text}\n")
        else:
            parts.append(f"{span.text}\n")
    return "\n".join(parts)
