"""A page's Markdown as HTML that is safe to put into the web page.

OCR output is untrusted text (a scanned page can say `<script>`), and DeepSeek-OCR writes
tables as HTML, so HTML is let through the Markdown parser and then reduced to an
allow-list by nh3 (the Ammonia sanitiser): formatting and table tags only, no attributes
but colspan/rowspan, no scripts, styles, event handlers, links or images.
"""

from __future__ import annotations

from typing import Final

import nh3
from markdown_it import MarkdownIt

_TAGS: Final = frozenset({
    "h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "blockquote", "pre", "code",
    "em", "strong", "b", "i", "u", "s", "del", "sub", "sup", "ul", "ol", "li",
    "table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "span", "div",
})
_ATTRIBUTES: Final = {"td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}}

_MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough")


def markdown_html(markdown: str) -> str:
    return nh3.clean(
        _MARKDOWN.render(markdown),
        tags=set(_TAGS),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        url_schemes=set(),
        link_rel=None,
        strip_comments=True,
    )
