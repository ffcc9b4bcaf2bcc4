"""Debian's Chromium through Playwright, for what only a browser shows.

Pages are served with a Content-Security-Policy that refuses eval, so `wait_for_function` is
given a function (`"() => ..."`): a bare expression would be run by eval in the page and refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Chromium for one test module. Module scope, not session: Playwright's sync API keeps an
    event loop marked as running in this thread while it is started, which would break every
    later test that calls `asyncio.run` (and two instances in one thread refuse each other)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # around it are ordinary blocking calls, which Django would otherwise refuse. Only while
    # the browser runs: subprocesses started by later tests must not inherit it.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def browser_contexts() -> Iterator[list[Any]]:
    """Contexts opened by a test, closed before the live server goes: no poll outlives it."""
    contexts: list[Any] = []
    yield contexts
    for context in contexts:
        context.close()


def logged_in_page(
    chromium: Any,
    live_server: Any,
    user: Any,
    contexts: list[Any],
    *,
    language: str = "en",
    tz: str = "Europe/Paris",
    javascript: bool = True,
    viewport: tuple[int, int] = (1280, 900),
    touch: bool = False,
) -> Any:
    """A page whose browser is logged in as `user` (a session made on the server side);
    `javascript=False`: a browser that runs no script, as some reviewers' do; `touch`: a phone's
    or a tablet's (a touch screen, whose pointer is coarse), at `viewport` (width, height)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    context = chromium.new_context(
        locale="zh-CN" if language == "zh-hans" else "en-US",
        timezone_id=tz,
        viewport={"width": viewport[0], "height": viewport[1]},
        is_mobile=touch,
        has_touch=touch,
        java_script_enabled=javascript,
        extra_http_headers={
            "Accept-Language": "zh-Hans,zh;q=0.9" if language == "zh-hans" else "en"
        },
    )
    contexts.append(context)
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    page = context.new_page()
    page.set_default_timeout(15000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors  # type: ignore[attr-defined]
    page.csp_violations = csp_violations(page)  # type: ignore[attr-defined]
    return page


def csp_violations(page: Any) -> list[str]:
    """What the Content-Security-Policy refused on a page, or on every page of a browser
    context (an inline style or script, an image from elsewhere), as Chromium reports it on the
    console; filled in as the pages run."""
    found: list[str] = []
    page.on(
        "console",
        lambda message: (
            found.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return found


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
