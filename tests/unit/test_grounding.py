"""DeepSeek-OCR grounded output: parser examples and properties on malformed input."""

from __future__ import annotations

import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from consumer.page_image import PageImage
from consumer.postprocess.grounding import (
    GroundedSpan,
    parse_boxes,
    parse_grounded,
    render_grounded,
)
from consumer.postprocess.page import deepseek_page_text

FAST = settings(max_examples=200, deadline=None)
# Any complete ref/det tag, ASCII or full-width, with or without spaces.
ANY_TAG = re.compile(r"[<＜]\s*[|｜]\s*/?\s*(?:ref|det)\s*[|｜]\s*[>＞]", re.IGNORECASE)

SAMPLE = (
    "<|ref|>title<|/ref|><|det|>[[62, 40, 938, 88]]<|/det|>\n# Annual Report\n\n"
    "<|ref|>text<|/ref|><|det|>[[62, 100, 938, 180], [62, 190, 500, 220]]<|/det|>\n"
    "Revenue grew **12%**.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 300, 900, 600]]<|/det|>\n\n"
    "<|ref|>table<|/ref|><|det|>[[62, 620, 938, 900]]<|/det|>\n"
    "<table><tr><td>Q1</td><td>10</td></tr></table>"
    "<｜end▁of▁sentence｜>"
)


def page_image(width: int = 1000, height: int = 2000, pdf: bool = True) -> PageImage:
    return PageImage(
        task_id="doc-1",
        page=2,
        image=Image.new("RGB", (width, height), "white"),
        dpi=144,
        width_pt=500.0 if pdf else None,
        height_pt=1000.0 if pdf else None,
    )


# ---------------------------------------------------------------------------- examples


def test_parses_labels_boxes_and_text() -> None:
    spans = parse_grounded(SAMPLE)
    assert [span.label for span in spans] == ["title", "text", "image", "table"]
    assert spans[0] == GroundedSpan("title", ((62, 40, 938, 88),), "# Annual Report")
    assert spans[1].boxes == ((62, 100, 938, 180), (62, 190, 500, 220))
    assert spans[1].text == "Revenue grew **12%**."
    assert spans[2].text == ""
    assert spans[3].text == "<table><tr><td>Q1</td><td>10</td></tr></table>"


def test_plain_text_without_tags_is_one_unlabelled_span() -> None:
    assert parse_grounded("Just text.\nSecond line.\n") == [
        GroundedSpan("", (), "Just text.\nSecond line.")
    ]
    assert parse_grounded("") == []
    assert parse_grounded("  \n ") == []


def test_full_width_tags_brackets_and_digits() -> None:
    raw = "<｜ref｜>title<｜/ref｜><｜det｜>［［１０，２０，３０，４０］］<｜/det｜>\nHello"
    assert parse_grounded(raw) == [GroundedSpan("title", ((10, 20, 30, 40),), "Hello")]


def test_output_cut_inside_a_tag() -> None:
    base = "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nBody"
    for cut in ("<", "<|", "<|re", "<|ref|", "<｜/de", "<｜end▁of"):
        assert parse_grounded(base + cut) == [GroundedSpan("text", ((1, 2, 3, 4),), "Body")]
    # Cut inside the next span's label: that span has nothing yet.
    assert parse_grounded(base + "<|ref|>tab") == [GroundedSpan("text", ((1, 2, 3, 4),), "Body")]
    # Cut inside det: complete boxes are kept, the partial one dropped.
    cut_det = "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4], [5, 6"
    assert parse_grounded(cut_det) == [GroundedSpan("text", ((1, 2, 3, 4),), "")]


def test_special_tokens_and_text_after_eos() -> None:
    raw = "<｜begin▁of▁sentence｜>Hello<｜▁pad▁｜> world<｜end▁of▁sentence｜>garbage after eos"
    assert parse_grounded(raw) == [GroundedSpan("", (), "Hello world")]
    # An ASCII token that a document may print is text, not a special token.
    assert parse_grounded("use <|endoftext|> here")[0].text == "use <|endoftext|> here"


def test_stray_ref_without_det_and_det_without_ref() -> None:
    assert parse_grounded("<|ref|>text<|/ref|>Para") == [GroundedSpan("text", (), "Para")]
    assert parse_grounded("<|det|>[[1,2,3,4]]<|/det|>Body") == [
        GroundedSpan("", ((1, 2, 3, 4),), "Body")
    ]
    # A ref that never closes before the next ref: its 'label' was text.
    assert parse_grounded("<|ref|>loose words <|ref|>x<|/ref|>y") == [
        GroundedSpan("", (), "loose words"),
        GroundedSpan("x", (), "y"),
    ]
    # Stray closing tags vanish.
    assert parse_grounded("a<|/det|>b<|/ref|>c") == [GroundedSpan("", (), "abc")]


def test_second_det_adds_boxes_and_label_whitespace_collapses() -> None:
    raw = "<|ref|>  sub_title \n<|/ref|><|det|>[[1,1,2,2]]<|/det|> <|det|>[[3,3,4,4]]<|/det|>T"
    assert parse_grounded(raw) == [GroundedSpan("sub_title", ((1, 1, 2, 2), (3, 3, 4, 4)), "T")]


def test_box_junk_clamping_and_ordering() -> None:
    assert parse_boxes("[[-5, 3000, 4, 2]]") == ((0, 2, 4, 999),)
    assert parse_boxes("[[10, 20, 5, 1]]") == ((5, 1, 10, 20),)
    assert parse_boxes("[[1.6, 2, 3, 4]]") == ((2, 2, 3, 4),)
    assert parse_boxes("[[a, b, c, d], [1, 2, 3], [1, 2, 3, 4, 5], [9, 9, 9, 9]]") == (
        (9, 9, 9, 9),
    )
    assert parse_boxes("[[" + "9" * 5000 + ", 1, 2, 3]]") == ()  # no int-parsing DoS
    assert parse_boxes("[1, 2, 3, 4]") == ((1, 2, 3, 4),)  # single-level list
    assert parse_boxes("garbage") == ()


def test_box_punctuation_and_point_pairs_of_the_seed() -> None:
    assert parse_boxes("【【10、20、30、40】】") == ((10, 20, 30, 40),)
    assert parse_boxes("［［１０，２０，３０，４０］］、［［5，6，7，8］］") == (
        (10, 20, 30, 40), (5, 6, 7, 8),
    )
    assert parse_boxes("〔10; 20; 30; 40〕") == ((10, 20, 30, 40),)
    # Corner points: one box each, in any corner order; a polygon gives its bounding box.
    assert parse_boxes("[[100, 200], [300, 400]]") == ((100, 200, 300, 400),)
    assert parse_boxes("[[300, 400], [100, 200]]") == ((100, 200, 300, 400),)
    assert parse_boxes("[[[1, 2], [3, 4]], [[5, 6], [7, 8]]]") == ((1, 2, 3, 4), (5, 6, 7, 8))
    assert parse_boxes("【【1、2】、【3、4】】") == ((1, 2, 3, 4),)
    assert parse_boxes("[[1, 2], [3, 4], [5, 0]]") == ((1, 0, 5, 4),)
    # Not boxes: a lone point, points mixed with words, a cut-off point pair.
    assert parse_boxes("[[1, 2]]") == ()
    assert parse_boxes("[[1, 2], [3, 4], x]") == ()
    assert parse_boxes("[[1, 2], [3") == ()
    raw = "<|ref|>image<|/ref|><|det|>【【100、200】、【300、400】】<|/det|>\n"
    assert parse_grounded(raw) == [GroundedSpan("image", ((100, 200, 300, 400),), "")]


def test_locate_output() -> None:
    raw = "<|ref|>total amount<|/ref|><|det|>[[100, 200, 300, 220], [100, 500, 300, 520]]<|/det|>"
    assert parse_grounded(raw) == [
        GroundedSpan("total amount", ((100, 200, 300, 220), (100, 500, 300, 520)), "")
    ]


def test_page_text_blocks_markdown_and_figures() -> None:
    page = page_image()
    result = deepseek_page_text(SAMPLE, page, crop_figures=True)
    placeholder = (
        "*[figure 1 of page 2 not stored: the consumer did not hand it to the artifact store]*"
    )
    assert result.markdown == (
        f"# Annual Report\n\nRevenue grew **12%**.\n\n{placeholder}\n\n"
        "<table><tr><td>Q1</td><td>10</td></tr></table>"
    )
    assert result.text == "Annual Report\n\nRevenue grew 12%.\n\nQ1 10"
    labels = [block.label for block in result.blocks]
    assert labels == ["title", "text", "text", "image", "table"]
    title = result.blocks[0]
    assert title.text == "Annual Report"
    assert title.bbox_px == [62.06, 80.08, 938.94, 176.18]
    assert title.bbox_pdf == [31.03, 40.04, 469.47, 88.09]
    # A span with two boxes: its text rides on the first block only.
    assert result.blocks[1].text == "Revenue grew 12%." and result.blocks[2].text == ""
    (figure,) = result.figures
    assert (figure.index, figure.block, figure.placeholder) == (1, 3, placeholder)
    assert (figure.width_px, figure.height_px) == (801, 602)
    with Image.open(io.BytesIO(figure.png)) as image:
        assert (image.format, image.size) == ("PNG", (801, 602))


def test_figures_without_a_store_are_not_cut_and_say_why() -> None:
    result = deepseek_page_text(SAMPLE, page_image(pdf=False))
    assert all(block.bbox_pdf is None for block in result.blocks)
    assert result.figures == []
    assert (
        "*[figure 1 of page 2 not stored: no artifact store is configured "
        "(OCR_ARTIFACTS_URI)]*" in result.markdown
    )
    assert "](" not in result.markdown  # no link to a file nobody wrote


def test_figure_with_an_empty_box_is_not_cut() -> None:
    raw = "<|ref|>image<|/ref|><|det|>[[10, 10, 10, 500], [0, 0, 500, 500]]<|/det|>"
    result = deepseek_page_text(raw, page_image(999, 999), crop_figures=True)
    assert [figure.index for figure in result.figures] == [2]
    assert "figure 1 of page 2 not stored: its box on the page is empty" in result.markdown


def test_page_text_of_free_ocr_output() -> None:
    result = deepseek_page_text("Line one\nLine **two**\n\n\n\nEnd", page_image())
    assert result.markdown == "Line one\nLine **two**\n\nEnd"
    assert result.text == "Line one\nLine two\n\nEnd"
    assert result.blocks == []


def test_long_label_is_cut_to_the_schema_limit() -> None:
    raw = "<|ref|>" + "q" * 300 + "<|/ref|><|det|>[[0, 0, 10, 10]]<|/det|>"
    (block,) = deepseek_page_text(raw, page_image()).blocks
    assert block.label == "q" * 64


# -------------------------------------------------------------------------- properties

# Pieces of tags, boxes, special tokens and text that malformed output is made of.
FRAGMENTS = st.sampled_from(
    [
        *[
            "<|ref|>",
            "<|/ref|>",
            "<|det|>",
            "<|/det|>",
            "<｜ref｜>",
            "<｜/ref｜>",
            "<｜det｜>",
            "<｜/det｜>",
        ],
        *[
            "<|",
            "<",
            "｜>",
            "|>",
            "<|re",
            "f|>",
            "<｜end▁of▁sentence｜>",
            "<｜▁pad▁｜>",
            "[[",
            "]]",
            "[",
            "]",
            "［",
            "］",
            "，",
            "-",
            "【",
            "】",
            "、",
            "[[1, 2], [3, 4]]",
            "[[5, 6]",
        ],
        *[
            "title",
            "text",
            "image",
            "table",
            "#",
            "**",
            "|",
            "<table>",
            "<td>",
            "</td>",
            "0",
            "999",
            "1000",
            "-12",
            "3.5",
            "abc",
            "é",
            "表",
        ],
        "< |ref| >",
        ", ",
        "\n",
        " ",
        "\n\n",
        "123456789012345",
    ]
)
SOUP = st.one_of(
    st.lists(st.one_of(FRAGMENTS, st.integers(-2000, 5000).map(str)), max_size=40).map("".join),
    st.text(max_size=80),
)


def assert_boxes_valid(boxes: tuple[tuple[int, int, int, int], ...]) -> None:
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 <= x2 <= 999
        assert 0 <= y1 <= y2 <= 999


@FAST
@given(SOUP)
def test_parser_never_raises_and_boxes_are_valid(raw: str) -> None:
    for span in parse_grounded(raw):
        assert_boxes_valid(span.boxes)
        assert not ANY_TAG.search(span.text)
        assert not ANY_TAG.search(span.label)
        assert span.text == span.text.strip()


@FAST
@given(SOUP, st.integers(1, 300), st.integers(1, 300), st.booleans(), st.booleans())
def test_page_text_never_shows_tags_and_boxes_fit(
    raw: str, width: int, height: int, pdf: bool, crop: bool
) -> None:
    page = PageImage(
        "t",
        1,
        Image.new("RGB", (width, height)),
        72,
        width_pt=width * 0.5 if pdf else None,
        height_pt=height * 0.5 if pdf else None,
    )
    result = deepseek_page_text(raw, page, crop_figures=crop)
    for shown in (result.markdown, result.text):
        assert not ANY_TAG.search(shown)
        assert "end▁of▁sentence" not in shown
    # The runner finds each figure's placeholder to put its link there.
    for figure in result.figures:
        assert figure.placeholder in result.markdown
        assert figure.placeholder not in result.text
        assert figure.block is None or result.blocks[figure.block].label.lower() == "image"
    for block in result.blocks:
        x1, y1, x2, y2 = block.bbox_px
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        if pdf:
            assert block.bbox_pdf is not None
            px1, py1, px2, py2 = block.bbox_pdf
            assert 0 <= px1 <= px2 <= width * 0.5 and 0 <= py1 <= py2 <= height * 0.5
        else:
            assert block.bbox_pdf is None


COORD = st.integers(0, 999)
BOX = st.tuples(COORD, COORD, COORD, COORD).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
)
LABEL = st.from_regex(r"[a-z][a-z_]{0,10}( [a-z0-9]{1,6}){0,2}", fullmatch=True)
# Text the model writes: Markdown, HTML tables, any language; no tags (not text's job).
BODY = (
    st.lists(st.sampled_from([*"abcXYZ 019#*_|-.,:;\n\tàé表€", "<td>", "</td>", "**"]), max_size=30)
    .map("".join)
    .map(str.strip)
)
SPAN = st.builds(GroundedSpan, LABEL, st.lists(BOX, max_size=3).map(tuple), BODY)


@FAST
@given(st.lists(SPAN, max_size=6), st.one_of(st.just(""), BODY))
def test_round_trip_of_well_formed_spans(spans: list[GroundedSpan], leading: str) -> None:
    expected = ([GroundedSpan("", (), leading)] if leading else []) + spans
    assert parse_grounded(render_grounded(expected)) == expected


@FAST
@given(st.lists(SPAN, min_size=1, max_size=4), st.integers(0, 400))
def test_truncated_well_formed_output_parses_to_a_prefix(
    spans: list[GroundedSpan], cut: int
) -> None:
    raw = render_grounded(spans)
    parsed = parse_grounded(raw[:cut])
    assert len(parsed) <= len(spans)
    # Every span but the last (which the cut may shorten) comes back whole.
    assert parsed[:-1] == spans[: max(len(parsed) - 1, 0)]
    for span in parsed:
        assert_boxes_valid(span.boxes)


# How DeepSeek-OCR (and hand-written fixtures of the seed) may write the same boxes.
BRACKETS = st.sampled_from([("[", "]"), ("［", "］"), ("【", "】")])
SEPARATOR = st.sampled_from([", ", ",", "，", "、", " ", "; "])
FULL_WIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")


def render_boxes(
    boxes: list[tuple[int, int, int, int]], brackets: tuple[str, str], separator: str,
    full_width: bool, points: bool,
) -> str:
    left, right = brackets

    def group(values: list[str]) -> str:
        return left + separator.join(values) + right

    parts = []
    for x1, y1, x2, y2 in boxes:
        if points:
            parts.append(group([group([str(x1), str(y1)]), group([str(x2), str(y2)])]))
        else:
            parts.append(group([str(x1), str(y1), str(x2), str(y2)]))
    text = left + separator.join(parts) + right
    return text.translate(FULL_WIDTH_DIGITS) if full_width else text


@FAST
@given(st.lists(BOX, min_size=1, max_size=4), BRACKETS, SEPARATOR, st.booleans(), st.booleans())
def test_every_box_style_reads_the_same(
    boxes: list[tuple[int, int, int, int]], brackets: tuple[str, str], separator: str,
    full_width: bool, points: bool,
) -> None:
    det = render_boxes(boxes, brackets, separator, full_width, points)
    assert parse_boxes(det) == tuple(boxes)
    raw = f"<|ref|>image<|/ref|><|det|>{det}<|/det|>\nCaption"
    assert parse_grounded(raw) == [GroundedSpan("image", tuple(boxes), "Caption")]


@FAST
@given(st.lists(BOX, min_size=1, max_size=4), BRACKETS, SEPARATOR, st.booleans(),
       st.integers(0, 200))
def test_boxes_cut_off_keep_the_complete_ones(
    boxes: list[tuple[int, int, int, int]], brackets: tuple[str, str], separator: str,
    points: bool, cut: int,
) -> None:
    det = render_boxes(boxes, brackets, separator, False, points)[:cut]
    parsed = parse_boxes(det)
    assert parsed == tuple(boxes[: len(parsed)])


def figure_span(boxes: list[tuple[int, int, int, int]]) -> str:
    listed = ", ".join(f"[{x1}, {y1}, {x2}, {y2}]" for x1, y1, x2, y2 in boxes)
    return f"<|ref|>image<|/ref|><|det|>[{listed}]<|/det|>\n"


@FAST
@given(SOUP, st.lists(BOX, min_size=1, max_size=3), SOUP, st.integers(1, 300),
       st.integers(1, 300))
def test_every_figure_has_one_findable_placeholder(
    before: str, boxes: list[tuple[int, int, int, int]], after: str, width: int, height: int
) -> None:
    page = PageImage("t", 3, Image.new("RGB", (width, height)), 72)
    result = deepseek_page_text(before + "\n" + figure_span(boxes) + after, page,
                                crop_figures=True)
    for figure in result.figures:
        assert result.markdown.count(figure.placeholder) == 1
        assert figure.placeholder not in result.text
        assert 1 <= figure.width_px <= width and 1 <= figure.height_px <= height
    indexes = [figure.index for figure in result.figures]
    assert indexes == sorted(set(indexes))
