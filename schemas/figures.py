"""How a figure appears in a page result's Markdown: a link to its stored file, or a
placeholder that says why there is none. Readers (ocr-collect, downstream renderers) may
rely on both forms; the consumer and the tools write them only through these functions.
"""

from __future__ import annotations

import re

# A reason is one line of plain words inside `*[...]*`: nothing that ends the emphasis or
# the brackets early, or starts Markdown of its own (intraword `_` is not emphasis).
_UNSAFE_IN_PLACEHOLDER = re.compile(r"[\[\]*`<>\\\n\r]+")
MAX_REASON = 300


def figure_placeholder(page: int, index: int, reason: str, *, missing: str = "not stored") -> str:
    """The Markdown of a figure that has no file (yet), saying why."""
    cleaned = " ".join(_UNSAFE_IN_PLACEHOLDER.sub(" ", reason).split())[:MAX_REASON]
    return f"*[figure {index} of page {page} {missing}: {cleaned}]*"


def figure_link(index: int, uri: str) -> str:
    """The Markdown of a stored figure. Store URIs have no spaces or parentheses (folder
    URIs are percent-encoded; S3 prefixes are restricted to safe characters)."""
    return f"![figure {index}]({uri})"
