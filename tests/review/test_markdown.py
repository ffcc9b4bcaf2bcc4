from __future__ import annotations

import re
from typing import Any

import pytest
from django.utils import translation

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


def test_a_single_newline_is_a_line_break_as_on_dify_s_pages() -> None:
    html = str(render_markdown("**Customer:** Ada\n**Amount:** 120 EUR\n\nNext paragraph"))
    assert html == (
        "<p><strong>Customer:</strong> Ada<br>\n<strong>Amount:</strong> 120 EUR</p>\n"
        "<p>Next paragraph</p>\n"
    )


def test_raw_html_is_shown_as_text_not_markup() -> None:
    html = render_markdown("<b>bold?</b>")
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html


def test_content_splits_at_placeholders_and_unknown_placeholders_vanish() -> None:
    segments, rest = split_content(
        "Before\n\n{{#$output.note#}}\n\nMiddle {{#$output.ghost#}} end\n\n{{#$output.note#}}",
        ["note", "choice"],
    )
    kinds = [("field", s.input_name) if s.input_name else ("html", str(s.html)) for s in segments]
    # A placeholder that places nothing is taken out of the text, which stays whole.
    assert kinds == [
        ("html", "<p>Before</p>\n"),
        ("field", "note"),
        ("html", "<p>Middle  end</p>\n"),
    ]
    assert rest == ["choice"]
    assert "ghost" not in "".join(str(s.html) for s in segments)
    # A quote around an unknown or a second placeholder is one quote, not two broken pieces.
    segments, _rest = split_content(
        "{{#$output.note#}}\n\n> first line {{#$output.ghost#}}\n> second {{#$output.note#}} line",
        ["note"],
    )
    [quote] = [str(s.html) for s in segments if s.html is not None]
    assert quote.count("<blockquote>") == 1 and "second" in quote and "line" in quote


def test_excerpt_is_one_plain_line() -> None:
    assert excerpt("# Refund & co\n\nAda wants **120 EUR**.\n\n{{#$output.note#}}") == (
        "Refund & co · Ada wants 120 EUR."
    )
    # Lines do not run into one phrase: a heading, a field and its value, a list item each end
    # with " · "; a line that ends its sentence is followed by the next as in a paragraph.
    assert excerpt("## Refund\n**Customer:** Ada\n**Amount:** 120 EUR\nShe asks. Approve?") == (
        "Refund · Customer: Ada · Amount: 120 EUR · She asks. Approve?"
    )
    assert excerpt("退款申请：\n客户很满意。\n金额\n120") == "退款申请：客户很满意。金额 · 120"  # noqa: RUF001
    assert len(excerpt("word " * 100)) <= 140


def test_quick_excerpt_drops_marks_and_keeps_link_text() -> None:
    from inbox.markdown import quick_excerpt

    text = "# Order **#4411**: see [the ticket](https://x.test/1)\n\n> quoted `code`\n\n{{#$output.note#}}"
    # "#4411" is how the order is written: only a heading's "#" goes.
    assert quick_excerpt(text) == "Order #4411: see the ticket · quoted code"


def test_a_remote_image_becomes_a_link_marked_as_an_image_not_loaded() -> None:
    html = render_markdown("See ![the chart](https://attacker.example/c.png?q=secret)")
    assert "<img" not in html
    assert html == (
        '<p>See <a href="https://attacker.example/c.png?q=secret"'
        ' rel="noopener noreferrer nofollow">the chart</a>'
        ' <span class="image-blocked">Image not loaded: attacker.example</span></p>\n'
    )


def test_an_image_without_alt_text_is_linked_by_its_host() -> None:
    html = render_markdown("![](https://attacker.example/pixel.gif)")
    assert "<img" not in html
    assert (
        '<a href="https://attacker.example/pixel.gif" rel="noopener noreferrer nofollow">'
        "attacker.example</a>"
    ) in html


def test_an_https_image_from_an_allowed_host_is_shown(settings: Any) -> None:
    settings.INBOX_MARKDOWN_IMAGE_HOSTS = ["images.example.com"]
    html = render_markdown('![Q3 chart](https://images.example.com/q3.png "Revenue")')
    assert html == (
        '<p><img src="https://images.example.com/q3.png" alt="Q3 chart" title="Revenue"></p>\n'
    )


@pytest.mark.parametrize(
    "url",
    [
        # Sent in clear text, and not what the Content-Security-Policy allows.
        "http://images.example.com/q3.png",
        "https://images.example.com:8443/q3.png",
        "https://user@images.example.com/q3.png",
        "https://images.example.com.attacker.example/q3.png",
        "https://attacker.example/images.example.com/q3.png",
    ],
)
def test_an_image_only_near_an_allowed_host_is_not_loaded(settings: Any, url: str) -> None:
    settings.INBOX_MARKDOWN_IMAGE_HOSTS = ["images.example.com"]
    html = render_markdown(f"![chart]({url})")
    assert "<img" not in html
    assert f'<a href="{url}" rel="noopener noreferrer nofollow">chart</a>' in html
    assert '<span class="image-blocked">Image not loaded: ' in html


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://eu.images.example.com/q3.png", True),
        ("https://a.b.images.example.com/q3.png", True),
        ("https://EU.Images.Example.com/q3.png", True),
        # The name itself is not one of its subdomains (nor is it in the policy).
        ("https://images.example.com/q3.png", False),
        ("https://evilimages.example.com/q3.png", False),
        ("https://eu.images.example.com.attacker.example/q3.png", False),
        ("http://eu.images.example.com/q3.png", False),
    ],
)
def test_a_wildcard_host_allows_images_from_its_subdomains_only(
    settings: Any, url: str, shown: bool
) -> None:
    settings.INBOX_MARKDOWN_IMAGE_HOSTS = ["*.images.example.com"]
    html = render_markdown(f"![chart]({url})")
    assert ("<img" in html) is shown
    assert ("Image not loaded" in html) is not shown


def test_alt_text_and_title_of_an_image_not_loaded_are_escaped() -> None:
    html = render_markdown('![<b>x</b> & "y"](https://attacker.example/a.png "<script>")')
    assert '<a href="https://attacker.example/a.png" title="&lt;script&gt;"' in html
    assert '>&lt;b&gt;x&lt;/b&gt; &amp; "y"</a>' in html
    assert executable_markup(html) == []


def test_an_image_inside_a_link_stays_text_inside_that_one_link() -> None:
    html = render_markdown("[![logo](https://attacker.example/logo.png)](https://example.com)")
    assert html == (
        '<p><a href="https://example.com" rel="noopener noreferrer nofollow">logo'
        ' <span class="image-blocked">Image not loaded: attacker.example</span></a></p>\n'
    )


@pytest.mark.parametrize(
    "url", ["data:image/png;base64,iVBORw0KGgo=", "chart.png", "/static/x.png"]
)
def test_an_inline_or_relative_image_shows_its_alt_text_and_the_marker(url: str) -> None:
    html = render_markdown(f"![chart]({url})")
    assert html == '<p>chart <span class="image-blocked">Image not loaded</span></p>\n'


def test_the_marker_speaks_the_pages_language() -> None:
    with translation.override("zh-hans"):
        html = render_markdown("![](https://attacker.example/a.png)")
    assert '<span class="image-blocked">图片未加载：attacker.example</span>' in html  # noqa: RUF001


def test_the_sanitizer_drops_the_source_of_a_remote_image_given_as_html(settings: Any) -> None:
    settings.INBOX_MARKDOWN_IMAGE_HOSTS = ["images.example.com"]
    html = sanitize(
        '<img src="https://attacker.example/a.png" alt="a">'
        '<img src="https://images.example.com/b.png" alt="b">'
    )
    assert html == '<img alt="a"><img src="https://images.example.com/b.png" alt="b">'


def test_content_may_carry_no_class_but_the_marker() -> None:
    html = sanitize('<span class="image-blocked">a</span><span class="flash error">b</span>')
    assert html == '<span class="image-blocked">a</span><span>b</span>'


def test_quick_excerpt_leaves_out_rules_and_table_delimiter_rows() -> None:
    from inbox.markdown import quick_excerpt

    text = "Clause review\n\n| Clause | Risk |\n|---|:---:|\n| 7.2 | high |\n\n---\n\nSign below"
    assert quick_excerpt(text) == "Clause review · Clause Risk · 7.2 high · Sign below"


def test_quick_excerpt_leaves_out_list_markers_as_the_full_excerpt_does() -> None:
    from inbox.markdown import excerpt, quick_excerpt

    text = "Vendors:\n\n- Acme Ltd - SOC 2\n* Globex\n1. First\n2) Second"
    assert quick_excerpt(text) == "Vendors: Acme Ltd - SOC 2 · Globex · First · Second"
    assert quick_excerpt(text) == excerpt(text)


def test_a_forms_content_headings_follow_the_page_s_h1_and_tables_scroll_in_a_box() -> None:

    segments, _rest = split_content("# Request\n\n{{#$output.note#}}\n\n## Details", ["note"])
    assert [s.html for s in segments] == ["<h2>Request</h2>\n", None, "<h3>Details</h3>\n"]
    # Content that starts at ## (or ###) starts at the page's next level all the same, and
    # keeps its own order across the pieces the fields split it into.
    segments, _rest = split_content("## Claim\n\n{{#$output.note#}}\n\n### Photos", ["note"])
    assert [s.html for s in segments] == ["<h2>Claim</h2>\n", None, "<h3>Photos</h3>\n"]
    assert render_markdown("### Summary\n\n#### Risks") == "<h3>Summary</h3>\n<h4>Risks</h4>\n"
    # Nor does it skip a level the content skips.
    assert render_markdown("### A\n\n##### B\n\n#### C") == "<h3>A</h3>\n<h4>B</h4>\n<h4>C</h4>\n"
    # A table whose header row is empty has none.
    table = render_markdown("| | |\n|-|-|\n|Amount|EUR 15|")
    assert "<thead>" not in table and "<td>Amount</td>" in table
    assert "<thead>" in render_markdown("|a|b|\n|-|-|\n|1|2|")
    html = render_markdown("|a|b|\n|-|-|\n|1|2|")
    assert html.startswith(
        '<div class="table-wrap" tabindex="0" role="region" aria-label="Table">\n<table>'
    )
    assert html.rstrip().endswith("</table>\n</div>")
    # Content cannot make such a box (or any other div) of its own.
    assert "<div" not in render_markdown('<div class="table-wrap" tabindex="0">x</div>')


def test_bare_web_addresses_are_links_as_on_dify_s_page_but_not_names_with_a_dot() -> None:
    html = str(
        render_markdown(
            "See https://example.com/a?b=1, www.example.org. Edit config.py and README.md; "
            "write to ops@example.com. javascript:alert(1)"
        )
    )
    assert '<a href="https://example.com/a?b=1" rel="noopener noreferrer nofollow">' in html
    assert '<a href="http://www.example.org" rel="noopener noreferrer nofollow">' in html
    assert "www.example.org</a>." in html  # the sentence's full stop is not the link's
    assert "config.py" in html and 'href="http://config.py"' not in html
    assert 'href="http://README.md"' not in html and "mailto:" not in html
    assert 'href="javascript' not in html


def test_quick_excerpt_keeps_text_between_a_less_than_and_a_greater_than_sign() -> None:
    from inbox.markdown import quick_excerpt

    text = "Refund only if amount < 500 and days > 30\n> quoted <b>bold</b> <a href='x'>link</a>"
    assert quick_excerpt(text) == ("Refund only if amount < 500 and days > 30 · quoted bold link")


def test_the_emails_excerpt_keeps_text_that_only_looks_like_a_tag_and_code_spans() -> None:
    from inbox.notify import plain_excerpt

    assert plain_excerpt("Compare a<b and c>d. Run `code <b>` <b>now</b>.") == (
        "Compare a<b and c>d. Run code <b> now ."
    )
    assert plain_excerpt('<details open><summary>More</summary></details> <img src="x">') == (
        "More"
    )


def test_a_link_to_a_script_or_data_address_shows_its_text_without_the_address() -> None:
    from inbox.markdown import quick_excerpt

    text = "[evil link](javascript:alert(document.cookie)) and [data](data:text/html,<i>x</i>)"
    html = str(render_markdown(text))
    assert html == (
        '<p><a rel="noopener noreferrer nofollow">evil link</a> and '
        '<a rel="noopener noreferrer nofollow">data</a></p>\n'
    )
    assert excerpt(text) == "evil link and data"
    assert quick_excerpt(text) == "evil link and data"
    # An image at such an address is held back as any other.
    assert "Image not loaded" in render_markdown("![pic](javascript:alert(1))")


def test_a_row_s_excerpt_reads_links_holding_images_emphasis_or_brackets_as_their_text() -> None:
    from inbox.markdown import quick_excerpt

    image_in_link = "See [![logo](https://evil.example/a.png)](https://ok.example/doc) now"
    assert quick_excerpt(image_in_link) == "See logo now"
    assert quick_excerpt("[**here**](https://x.example)") == "here"
    assert quick_excerpt("[a [b] c](https://y.example)") == "a [b] c"


def test_a_row_s_excerpt_keeps_ids_and_names_written_with_markdown_s_characters() -> None:
    from inbox.markdown import quick_excerpt

    text = "Order SO_2026_0001 for acme_corp_eu (C# team): qty 2*4, ticket #4471, Olga #7"
    assert quick_excerpt(text) == text
    # Markdown's own marks still go: emphasis at a word's edges, headings, tables, code.
    assert (
        quick_excerpt("# Refund\n\n**Ada** asks _now_ ~~not~~ `x`") == "Refund · Ada asks now not x"
    )
    assert quick_excerpt("| a | b |\n|---|---|\n| 1 | 2 |") == "a b · 1 2"
