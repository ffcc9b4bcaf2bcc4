"""Phones and tablets in Chromium: a finger's targets, the top bar on a short screen, the status
tabs past the edge, long file names, and the inbox keeping still under the reader's thumb."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import User

from inbox.models import DifyApp, Form, Upload
from tests.review.browser import logged_in_page, screenshot
from tests.review.conftest import full_definition, make_form

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = (390, 844)
LANDSCAPE = (844, 390)
TABLET = (768, 1024)
LONG_NAME = "Quarterly-reconciliation-of-the-refund-ledger-against-the-payment-provider-statements-FINAL-v7.pdf"


def _upload(form: Form, reviewer: User, name: str, input_name: str = "evidence") -> Upload:
    return Upload.objects.create(
        form=form,
        input_name=input_name,
        upload_file_id=f"f-{name[:20]}",
        name=name,
        size=123456,
        extension=".pdf",
        category="document",
        uploaded_by=reviewer,
    )


def _boxes(page: Any, selector: str) -> list[dict[str, float]]:
    boxes = [locator.bounding_box() for locator in page.locator(selector).all()]
    return [box for box in boxes if box]


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"] - 0.5
        and b["x"] < a["x"] + a["width"] - 0.5
        and a["y"] < b["y"] + b["height"] - 0.5
        and b["y"] < a["y"] + a["height"] - 0.5
    )


def _assert_targets(page: Any, selector: str, *, count: int, width: float = 0) -> None:
    boxes = _boxes(page, selector)
    assert len(boxes) == count, (selector, boxes)
    for box in boxes:
        assert box["height"] >= 44 and box["width"] >= width, (selector, box)
    for n, box in enumerate(boxes):
        for other in boxes[n + 1 :]:
            assert not _overlap(box, other), (selector, box, other)


def test_a_finger_gets_targets_of_44px_on_a_phone_and_a_mouse_keeps_the_compact_ones(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)  # a choice, a file, a list of files, four actions
    for n in range(2):
        _upload(form, reviewer, f"scan-{n}.pdf")
    page = logged_in_page(
        chromium, live_server, reviewer, browser_contexts, viewport=PHONE, touch=True
    )
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    # The top bar: the mark, Inbox, Runs, the language switch, their name (their account's
    # page), Log out.
    _assert_targets(page, ".brand, .topnav > a, .topnav button", count=6, width=44)
    assert _boxes(page, ".filter.mine label")[0]["height"] >= 44
    assert _boxes(page, ".filter.mine input")[0]["height"] >= 20
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.wait_for_selector("#decision-form")
    _assert_targets(page, ".crumbs a", count=1)
    _assert_targets(page, "#claim .btn", count=1)
    _assert_targets(page, ".file-chip .remove", count=2, width=44)
    _assert_targets(page, ".choice", count=3)
    _assert_targets(page, ".file-pick", count=2)
    _assert_targets(page, ".actions .btn", count=4)
    screenshot(page, "touch-phone-form")
    # Taken and released by a finger too.
    page.get_by_role("button", name="Take this form").click()
    page.locator("#claim").get_by_text("You are handling this").wait_for()
    _assert_targets(page, "#claim .btn", count=1)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE[0]

    # A mouse on a large screen: the page as it was drawn for it.
    desk = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    desk.goto(f"{live_server.url}/forms/{form.public_id}/")
    assert all(box["height"] < 30 for box in _boxes(desk, ".topnav > a, .topnav button"))
    assert all(box["height"] < 30 for box in _boxes(desk, "#claim .btn, .file-chip .remove"))
    assert page.js_errors == [] and desk.js_errors == []
    assert page.csp_violations == [] and desk.csp_violations == []


def _long_form(app: DifyApp) -> Form:
    """A form whose actions are far below its title on a phone."""
    definition = full_definition()
    definition["inputs"] = definition["inputs"][:2]  # the note and the choice
    content = "\n\n".join(
        f"Paragraph {n}: the customer explains at length what happened to the order."
        for n in range(25)
    )
    definition["form_content"] = content + "\n\n{{#$output.note#}}\n\n{{#$output.decision#}}"
    return make_form(app, definition=definition, content=definition["form_content"])


@pytest.mark.parametrize("viewport", [PHONE, LANDSCAPE], ids=["phone", "landscape"])
def test_after_a_decision_on_a_phone_the_forms_title_and_status_show(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    viewport: tuple[int, int],
) -> None:
    form = _long_form(dify_app)
    page = logged_in_page(
        chromium, live_server, reviewer, browser_contexts, viewport=viewport, touch=True
    )
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    # A reviewer's top bar is one line on a phone, and it scrolls away with the page.
    assert page.locator(".topbar").bounding_box()["height"] <= 60
    page.get_by_label("partial").check()
    approve = page.get_by_role("button", name="Approve")
    approve.scroll_into_view_if_needed()
    assert page.evaluate("window.scrollY") > 500
    bar = page.locator(".topbar").bounding_box()
    assert bar["y"] + bar["height"] <= 0  # gone with the page, not covering it
    approve.tap()
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=10000)
    page.wait_for_timeout(300)  # settled, the focus restored
    for selector in ("#form-title", "#form-status"):
        page.wait_for_function(
            f"""() => {{
              const box = document.querySelector('{selector}').getBoundingClientRect();
              const bar = document.querySelector('.topbar').getBoundingClientRect();
              return box.top >= Math.max(0, bar.bottom) && box.bottom <= window.innerHeight;
            }}""",
            timeout=3000,
        )
    title = page.locator("#form-title").bounding_box()
    hit = page.evaluate(
        "([x, y]) => !!document.elementFromPoint(x, y).closest('#form-title')",
        [title["x"] + 5, title["y"] + title["height"] / 2],
    )
    assert hit  # nothing drawn over it
    screenshot(page, f"touch-after-decision-{viewport[0]}")
    assert page.js_errors == [] and page.csp_violations == []


def test_where_the_top_bar_stays_what_is_scrolled_to_stops_below_it(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = _long_form(dify_app)
    page = logged_in_page(
        chromium, live_server, reviewer, browser_contexts, viewport=TABLET, touch=True
    )
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    assert page.evaluate("getComputedStyle(document.querySelector('.topbar')).position") == "sticky"
    bar = page.locator(".topbar").bounding_box()
    padding = page.evaluate(
        "parseFloat(getComputedStyle(document.documentElement).scrollPaddingTop)"
    )
    assert padding >= bar["height"]
    # A field reached by the keyboard from below comes out from under the bar.
    page.get_by_role("button", name="Approve").scroll_into_view_if_needed()
    page.evaluate("window.scrollBy(0, 2000)")
    page.locator("textarea[name=in_note]").focus()
    note = page.locator("textarea[name=in_note]").bounding_box()
    bar = page.locator(".topbar").bounding_box()
    assert note["y"] >= bar["y"] + bar["height"]
    assert page.js_errors == []


def test_a_long_file_name_stays_on_one_line_and_is_named_whole(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    assert len(LONG_NAME) > 95
    form = make_form(dify_app)
    _upload(form, reviewer, LONG_NAME)
    _upload(form, reviewer, "short.pdf")
    page = logged_in_page(
        chromium, live_server, reviewer, browser_contexts, viewport=PHONE, touch=True
    )
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    chip = page.locator(".file-chip", has_text="Quarterly")
    name = chip.locator(".file-name")
    name_box = name.bounding_box()
    line = page.locator(".file-chip", has_text="short.pdf").locator(".file-name").bounding_box()
    # One line, as high as a short name's, cut with an ellipsis rather than wrapped.
    assert name_box["height"] == line["height"] < 30
    assert name_box["width"] > 100
    assert page.evaluate(
        "el => el.scrollWidth > el.clientWidth && getComputedStyle(el).textOverflow === 'ellipsis'",
        name.element_handle(),
    )
    # The whole name: on hover, and to a screen reader (the text is all there).
    assert name.get_attribute("title") == LONG_NAME
    assert name.text_content() == LONG_NAME
    # The remove button stays in the chip, on the screen.
    remove = chip.locator(".remove").bounding_box()
    chip_box = chip.bounding_box()
    assert remove["x"] + remove["width"] <= chip_box["x"] + chip_box["width"] <= PHONE[0]
    assert chip_box["height"] < 60
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE[0]
    screenshot(page, "touch-long-file-name")
    assert page.js_errors == []


def test_the_status_tabs_past_the_edge_fade_and_the_one_shown_is_on_the_screen(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    make_form(dify_app, node_title="Went wrong", status=Form.Status.FAILED)
    page = logged_in_page(
        chromium, live_server, reviewer, browser_contexts, viewport=PHONE, touch=True
    )
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row, .empty-state")
    tabs = page.locator("#tabs")
    assert page.evaluate("el => el.scrollWidth > el.clientWidth", tabs.element_handle())
    # More to the right: that edge fades.
    assert "linear-gradient" in page.evaluate(
        "el => getComputedStyle(el).maskImage", tabs.element_handle()
    )
    assert "more-after" in (tabs.get_attribute("class") or "")
    # The last tab, opened from its address: it is on the screen, the first ones fade out.
    page.goto(live_server.url + "/?status=failed")
    page.wait_for_selector("#rows .row")
    page.wait_for_function("() => !document.getElementById('tabs').hasAttribute('aria-busy')")
    page.wait_for_timeout(200)
    active = page.locator("#tabs .tab.active").bounding_box()
    box = tabs.bounding_box()
    assert box["x"] <= active["x"] and active["x"] + active["width"] <= box["x"] + box["width"]
    assert "more-before" in (tabs.get_attribute("class") or "")
    assert "more-after" not in (tabs.get_attribute("class") or "")
    # A large screen shows them all, unfaded.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.wait_for_timeout(200)
    assert page.evaluate("el => getComputedStyle(el).maskImage", tabs.element_handle()) == "none"
    assert page.js_errors == []


def test_new_forms_arriving_above_do_not_move_the_rows_under_the_readers_thumb(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    for n in range(30):
        make_form(dify_app, node_title=f"Form {n:02}")
    page = logged_in_page(
        chromium, live_server, reviewer, browser_contexts, viewport=PHONE, touch=True
    )
    page.goto(live_server.url + "/?sort=newest")
    page.wait_for_selector("#rows .row")
    page.evaluate("window.scrollTo(0, 1500)")
    first_seen = """() => {
      for (const row of document.querySelectorAll('#rows .row')) {
        const box = row.getBoundingClientRect();
        if (box.bottom > 0) return [row.querySelector('a.open').getAttribute('href'), box.top];
      }
    }"""
    href, top = page.evaluate(first_seen)
    focused = page.evaluate("() => document.activeElement.tagName")
    for n in range(3):
        make_form(dify_app, node_title=f"Arrived {n}")
    page.wait_for_function(
        "() => document.querySelectorAll('#rows .row').length === 33", timeout=15000
    )
    page.wait_for_timeout(100)
    row = page.locator(f'#rows .row:has(a.open[href="{href}"])').bounding_box()
    assert abs(row["y"] - top) < 2, (row["y"], top)
    assert page.evaluate("() => document.activeElement.tagName") == focused  # no focus taken
    # At the top of the list, new forms show where they arrive, above.
    page.evaluate("window.scrollTo(0, 0)")
    make_form(dify_app, node_title="Arrived last")
    page.wait_for_function(
        "() => document.querySelectorAll('#rows .row').length === 34", timeout=15000
    )
    assert page.evaluate("window.scrollY") == 0
    assert page.locator("#rows .row .open").first.inner_text() == "Arrived last"
    assert page.js_errors == []


def test_the_first_row_of_the_next_page_is_on_the_screen_of_a_phone_on_its_side(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    forms = [
        make_form(dify_app, node_title=f"Form {n:02}", expires_in=dt.timedelta(hours=1 + n))
        for n in range(53)
    ]
    page = logged_in_page(
        chromium, live_server, reviewer, browser_contexts, viewport=LANDSCAPE, touch=True
    )
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    following = page.locator(".pager a[rel=next]")
    following.focus()
    page.keyboard.press("Enter")
    first = f"/forms/{forms[50].public_id}/"
    page.wait_for_function(
        f"() => document.activeElement.getAttribute('href') === '{first}'", timeout=10000
    )
    page.wait_for_function(
        """() => {
          const box = document.activeElement.closest('.row').getBoundingClientRect();
          return box.top >= 0 && box.bottom <= window.innerHeight;
        }""",
        timeout=10000,
    )
    # From the list's top: its tabs show above the row.
    assert page.locator("#tabs").bounding_box()["y"] >= 0
    assert page.js_errors == []
