from __future__ import annotations

import re

import pytest

from inbox.markdown import excerpt, render_markdown, sanitize, split_content
from tests.review.xss import FORBIDDEN, PAYLOADS, executable_markup

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize("payload", PAYLOADS)
def test_sanitizer_leaves_nothing_executable(payload: str) -> None:
    html = render_markdown(f"Intro\n\n{payload}\n\n**bold** {payload}").lower()
    # Escaped text is harmless; markup is what counts: no raw tag or attribute survives.
    assert executable_markup(html) == [], html
    markup = " ".join(re.findall(r"<[^>]*>", html))
    for bad in FORBIDDEN:
        assert bad not in markup, (payload, html)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_sanitizer_strips_payloads_given_as_html(payload: str) -> None:
    # Defence in depth: even markup that reached the sanitizer directly is cleaned.
    assert executable_markup(str(sanitize(payload))) == []
    markup = " ".join(re.findall(r"<[^>]*>", str(sanitize(payload)).lower()))
    for bad in FORBIDDEN:
        assert bad not in markup, (payload, markup)


def test_markdown_renders_headings_emphasis_tables_and_safe_links() -> None:
    html = render_markdown(
        "# Title\n\n*em* **strong** [site](https://example.com)\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    )
    assert "<h3>Title</h3>" in html  # below the page's own h1 and h2
    assert "<em>em</em>" in html and "<strong>strong</strong>" in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">site</a>' in html
    assert "<table>" in html and "<td>1</td>" in html


def test_raw_html_is_shown_as_text_not_markup() -> None:
    html = render_markdown("<b>bold?</b>")
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html


def test_content_splits_at_placeholders_and_unknown_placeholders_vanish() -> None:
    segments, rest = split_content(
        "Before\n\n{{#$output.note#}}\n\nMiddle {{#$output.ghost#}} end\n\n{{#$output.note#}}",
        ["note", "choice"],
    )
    kinds = [("field", s.input_name) if s.input_name else ("html", str(s.html)) for s in segments]
    assert kinds == [
        ("html", "<p>Before</p>\n"),
        ("field", "note"),
        ("html", "<p>Middle</p>\n"),
        ("html", "<p>end</p>\n"),
    ]
    assert rest == ["choice"]
    assert "ghost" not in "".join(str(s.html) for s in segments)


def test_excerpt_is_one_plain_line() -> None:
    assert excerpt("# Refund & co\n\nAda wants **120 EUR**.\n\n{{#$output.note#}}") == (
        "Refund & co Ada wants 120 EUR."
    )
    assert len(excerpt("word " * 100)) <= 140


def test_quick_excerpt_drops_marks_and_keeps_link_text() -> None:
    from inbox.markdown import quick_excerpt

    text = "# Order **#4411**: see [the ticket](https://x.test/1)\n\n> quoted `code`\n\n{{#$output.note#}}"
    assert quick_excerpt(text) == "Order 4411: see the ticket quoted code"
