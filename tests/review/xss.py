"""Payloads that must never run: each sets window.__xss when it does."""

from __future__ import annotations

PAYLOADS = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    "<svg onload=window.__xss=1></svg>",
    "<svg><script>window.__xss=1</script></svg>",
    "[click me](javascript:window.__xss=1)",
    '<a href="javascript:window.__xss=1">link</a>',
    '<iframe src="javascript:window.__xss=1"></iframe>',
    '<body onload="window.__xss=1">',
    "![img](javascript:window.__xss=1)",
    '<div style="background:url(javascript:window.__xss=1)">x</div>',
    '"><script>window.__xss=1</script>',
    '<math><mi xlink:href="javascript:window.__xss=1">x</mi></math>',
    '<details open ontoggle="window.__xss=1">',
    "[x](JaVaScRiPt:window.__xss=1)",
    '<object data="data:text/html,<script>parent.__xss=1</script>"></object>',
    "[data](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX194c3M9MTwvc2NyaXB0Pg==)",
]

# What a payload may leave in sanitized HTML: no executable markup whatever the input.
FORBIDDEN = [
    "<script",
    "onerror",
    "onload",
    "ontoggle",
    "javascript:",
    "<iframe",
    "<svg",
    "<object",
    "data:text/html",
    "style=",
]


def executable_markup(html: str) -> list[str]:
    """Everything in a page that a browser would run: script-capable tags, event handler
    attributes, and javascript:/data: URLs. Escaped text inside attribute values is not markup."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Finder(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            src = dict(attrs).get("src") or ""
            if tag == "script" and src.startswith("/static/"):
                return  # the page's own scripts
            if tag in {"script", "iframe", "object", "embed", "svg", "math", "base"}:
                found.append(f"<{tag}>")
            for name, value in attrs:
                lowered = (value or "").strip().lower()
                if name.startswith("on"):
                    found.append(f"{tag}[{name}]")
                elif name in {
                    "href",
                    "src",
                    "action",
                    "formaction",
                    "xlink:href",
                    "data",
                } and lowered.startswith(("javascript:", "data:", "vbscript:")):
                    found.append(f"{tag}[{name}={value}]")
                elif name == "style" and "javascript:" in lowered:
                    found.append(f"{tag}[style]")

    Finder().feed(html)
    return found
