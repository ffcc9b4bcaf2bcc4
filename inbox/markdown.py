"""Markdown from Dify, turned into HTML that is safe to put in a page.

Form content is written by a workflow author and filled with workflow variables, often with LLM
output: it is untrusted. markdown-it renders it with raw HTML disabled, and nh3 (an allow-list
sanitizer) cleans the result anyway, so a renderer bug or a future option cannot let markup
through.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

import nh3
from django.utils.html import strip_tags
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

# Dify marks where an input's field belongs with `{{#$output.<name>#}}`; its own form page splits
# the content on this pattern and renders each piece separately, and so do we.
PLACEHOLDER = re.compile(r"\{\{#\$output\.([^#{}]+?)#\}\}")

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "details", "dd", "dl", "dt", "em",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p",
    "pre", "s", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead",
    "tr", "ul",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "th": {"align", "colspan", "rowspan"},
    "td": {"align", "colspan", "rowspan"},
    "code": {"class"},
}
_URL_SCHEMES = {"http", "https", "mailto"}

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)


def sanitize(html: str) -> SafeString:
    """Keep only harmless markup: no scripts, handlers, styles, frames or non-web URLs."""
    cleaned = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        # Links open content the workflow chose; they must not reach back into our page.
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    return mark_safe(cleaned)  # noqa: S308 - nh3 output is the allow-listed subset


def render_markdown(text: str) -> SafeString:
    tokens = _md.parse(text or "")
    for token in tokens:
        # The page has its own h1 and h2; content headings sit below them in the outline.
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + 2, 6)}"
    return sanitize(_md.renderer.render(tokens, _md.options, {}))


@dataclass(frozen=True)
class Segment:
    """A piece of form content: either HTML, or the place where an input's field goes."""

    html: SafeString | None = None
    input_name: str | None = None


def split_content(text: str, input_names: list[str]) -> tuple[list[Segment], list[str]]:
    """Split content at its placeholders; return the segments and the inputs left to place.

    A placeholder naming no input shows nothing, as in Dify. A second placeholder for an input
    already placed also shows nothing: one field per input keeps the submitted value unambiguous.
    Inputs without a placeholder are returned so the page can put them after the content.
    """
    known = set(input_names)
    placed: list[str] = []
    segments: list[Segment] = []
    pos = 0
    for match in PLACEHOLDER.finditer(text or ""):
        before = text[pos : match.start()]
        if before.strip():
            segments.append(Segment(html=render_markdown(before)))
        name = match.group(1).strip()
        if name in known and name not in placed:
            placed.append(name)
            segments.append(Segment(input_name=name))
        pos = match.end()
    rest = (text or "")[pos:]
    if rest.strip():
        segments.append(Segment(html=render_markdown(rest)))
    return segments, [name for name in input_names if name not in placed]


def excerpt(text: str, length: int = 140) -> str:
    """One line of plain text for a list row: markup, placeholders and blank lines removed."""
    plain = html.unescape(strip_tags(_md.render(PLACEHOLDER.sub(" ", text or ""))))
    line = " ".join(plain.split())
    return line if len(line) <= length else line[: length - 1].rstrip() + "…"


_MARKUP = re.compile(r"!?\[([^\]]*)\]\([^)]*\)|[*_`~>#|]+|<[^>]*>")


def quick_excerpt(text: str, length: int = 140) -> str:
    """A list row's excerpt without a full Markdown parse: links keep their text, emphasis,
    heading and quote marks and inline tags go. Good enough for one line of preview, and
    cheap enough for fifty rows per page."""
    plain = _MARKUP.sub(lambda m: m.group(1) or "", PLACEHOLDER.sub(" ", text or ""))
    line = " ".join(html.unescape(plain).split())
    return line if len(line) <= length else line[: length - 1].rstrip() + "…"
