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
