"""The inbox keeps the reviewer's place in Chromium: the focus through a poll and a page turn,
the tab and filters through a language switch and a visit to a form, and the announcer quiet
about changes nobody sees."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from inbox.models import DifyApp, Form
from tests.review.browser import logged_in_page
from tests.review.conftest import make_form

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _pending(app: DifyApp, count: int) -> list[Form]:
    """`count` pending forms, listed in this order (soonest to expire first)."""
    return [
        make_form(app, node_title=f"Form {n:02}", expires_in=dt.timedelta(hours=1 + n))
        for n in range(count)
    ]


def _focused_href(page: Any) -> str | None:
    return page.evaluate("() => document.activeElement.getAttribute('href')")  # type: ignore[no-any-return]


def _href(form: Form) -> str:
    return f"/forms/{form.public_id}/"


def test_a_row_decided_elsewhere_leaves_the_focus_on_the_row_now_in_its_place(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    forms = _pending(dify_app, 5)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    page.locator("body").focus()
    for _ in range(3):
        page.keyboard.press("j")
    assert _focused_href(page) == _href(forms[2])
    # The third form is decided elsewhere: the poll takes its row away.
    Form.objects.filter(pk=forms[2].pk).update(
        status=Form.Status.SUBMITTED, form_token="", updated_at=timezone.now()
    )
    page.wait_for_function(
        "() => document.querySelectorAll('#rows .row').length === 4", timeout=15000
    )
    # The focus is on the row now third, visibly, and it is the one selected.
    page.wait_for_function(
        f"() => document.activeElement.getAttribute('href') === '{_href(forms[3])}'",
        timeout=5000,
    )
    assert page.locator("#rows .row.selected .open").get_attribute("href") == _href(forms[3])
    # j goes on from there.
    page.keyboard.press("j")
    assert _focused_href(page) == _href(forms[4])

    # The last row goes: the focus goes to the row now last.
    Form.objects.filter(pk=forms[4].pk).update(
        status=Form.Status.SUBMITTED, form_token="", updated_at=timezone.now()
    )
    page.wait_for_function(
        "() => document.querySelectorAll('#rows .row').length === 3", timeout=15000
    )
    page.wait_for_function(
        f"() => document.activeElement.getAttribute('href') === '{_href(forms[3])}'",
        timeout=5000,
    )
    assert page.js_errors == []


def test_the_next_page_is_shown_from_its_top_with_the_focus_on_its_first_row(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    forms = _pending(dify_app, 53)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    following = page.locator(".pager a[rel=next]")
    following.focus()
    assert page.evaluate("window.scrollY") > 0  # the pager is at the foot of fifty rows
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"() => document.querySelector('#rows .row .open').getAttribute('href') === '{_href(forms[50])}'",
        timeout=10000,
    )
    page.wait_for_function(
        f"() => document.activeElement.getAttribute('href') === '{_href(forms[50])}'",
        timeout=5000,
    )
    page.wait_for_function("() => window.scrollY === 0", timeout=5000)
    assert parse_qs(urlsplit(page.url).query)["page"] == ["2"]
    # And back: the first page from its top, on its first row.
    page.locator(".pager a[rel=prev]").focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"() => document.activeElement.getAttribute('href') === '{_href(forms[0])}'",
        timeout=10000,
    )
    page.wait_for_function("() => window.scrollY === 0", timeout=5000)
    assert page.js_errors == []


def test_switching_language_keeps_the_inbox_tab_and_filters(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    _pending(dify_app, 2)
    expired = make_form(dify_app, node_title="Too late", status=Form.Status.EXPIRED)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    page.locator("#tabs a", has_text="Expired").click()
    page.wait_for_function("() => document.querySelectorAll('#rows .row').length === 1")
    page.select_option("#f-sort", "newest")
    page.wait_for_function("() => new URLSearchParams(location.search).get('sort') === 'newest'")
    with page.expect_navigation():
        page.get_by_role("button", name="简体中文").click()
    assert page.evaluate("document.documentElement.lang") == "zh-hans"
    query = parse_qs(urlsplit(page.url).query)
    assert query["status"] == ["expired"] and query["sort"] == ["newest"]
    active = page.locator("#tabs a.active").get_attribute("href") or ""
    assert parse_qs(urlsplit(active).query)["status"] == ["expired"]
    assert page.locator("#f-sort").input_value() == "newest"
    assert page.locator("#rows .row .open").get_attribute("href") == _href(expired)
    assert page.js_errors == []


def test_a_change_the_reviewer_cannot_see_is_not_announced(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    make_form(dify_app, node_title="Too late", status=Form.Status.EXPIRED)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/?status=expired")
    page.wait_for_selector("#rows .row")
    # Forms arrive and go on the Pending tab: the Expired list is as it was.
    with page.expect_response(
        lambda response: "since=" in response.url and response.status == 200, timeout=15000
    ):
        make_form(dify_app, node_title="Arrived meanwhile")
    page.wait_for_timeout(500)  # the announcer is filled 50 ms after it is asked
    assert page.locator("#announcer").text_content() == ""
    # One that expires shows on this tab: that is said.
    arrived = Form.objects.get(node_title="Arrived meanwhile")
    Form.objects.filter(pk=arrived.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=timezone.now()
    )
    page.wait_for_function(
        "() => document.querySelectorAll('#rows .row').length === 2", timeout=15000
    )
    page.wait_for_function(
        "() => document.getElementById('announcer').textContent === 'The list was updated.'",
        timeout=5000,
    )
    assert page.js_errors == []


def test_the_link_back_to_the_inbox_keeps_its_tab_filters_and_page(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    _pending(dify_app, 2)
    expired = make_form(dify_app, node_title="Too late", status=Form.Status.EXPIRED)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    page.locator("#tabs a", has_text="Expired").click()
    page.wait_for_function("() => document.querySelectorAll('#rows .row').length === 1")
    page.select_option("#f-sort", "oldest")
    page.wait_for_function("() => new URLSearchParams(location.search).get('sort') === 'oldest'")
    left_at = urlsplit(page.url)
    page.locator("#rows .row .open").click()
    page.wait_for_url(f"**{_href(expired)}")
    back = page.locator(".crumbs a", has_text="Inbox")
    # At the form's place in that list.
    assert (
        back.get_attribute("href")
        == f"{left_at.path}?{left_at.query}&after={expired.public_id}#place"
    )
    back.click()
    page.wait_for_selector("#rows .row")
    query = parse_qs(urlsplit(page.url).query)
    assert query["status"] == ["expired"] and query["sort"] == ["oldest"]
    assert page.locator("#rows .row .open").get_attribute("href") == _href(expired)
    assert _focused_href(page) == _href(expired)
    # Another tab of the browser, which has not been to the inbox: the inbox as it opens.
    other = page.context.new_page()
    other.goto(f"{live_server.url}{_href(expired)}")
    assert (
        other.locator(".crumbs a", has_text="Inbox").get_attribute("href")
        == f"/?after={expired.public_id}#place"
    )
    assert page.js_errors == []


def test_back_in_the_list_after_a_decision_the_row_after_it_has_the_focus(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    forms = _pending(dify_app, 30)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    page.goto(f"{live_server.url}{_href(forms[20])}")
    forms[20].decide(
        action_id="approve", inputs={"note": "ok", "decision": "refund"}, reviewer=reviewer
    )
    # The link back: the row after the decided one is focused, selected and on the screen,
    # and j goes on from it.
    page.locator(".crumbs a", has_text="Inbox").click()
    page.wait_for_selector("#rows .row.selected")
    assert _focused_href(page) == _href(forms[21])
    assert page.locator("#rows .row.selected .open").get_attribute("href") == _href(forms[21])
    assert page.locator("#rows .row.selected").is_visible()
    box = page.evaluate(
        "() => { const b = document.querySelector('#rows .row.selected').getBoundingClientRect();"
        " return [b.top, b.bottom, window.innerHeight, window.scrollY]; }"
    )
    assert box[0] >= 0 and box[1] <= box[2] + 1, box
    assert "after" not in urlsplit(page.url).query
    page.keyboard.press("j")
    assert _focused_href(page) == _href(forms[22])
    # The browser's back button from another form: the list asks for its place.
    page.goto(f"{live_server.url}{_href(forms[25])}")
    forms[25].decide(
        action_id="approve", inputs={"note": "ok", "decision": "refund"}, reviewer=reviewer
    )
    page.go_back()
    page.wait_for_function(
        f"() => document.activeElement.getAttribute('href') === '{_href(forms[26])}'",
        timeout=10000,
    )
    assert page.js_errors == []


def test_without_script_the_link_back_lands_on_the_row_after_the_decided_one(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    forms = _pending(dify_app, 3)
    forms[1].decide(
        action_id="approve", inputs={"note": "ok", "decision": "refund"}, reviewer=reviewer
    )
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, javascript=False)
    page.goto(f"{live_server.url}{_href(forms[1])}")
    page.locator(".crumbs a", has_text="Inbox").click()
    page.wait_for_selector("#rows .row")
    assert urlsplit(page.url).fragment == "place"
    assert page.locator("#place .open").get_attribute("href") == _href(forms[2])
    assert page.locator("#place .open").get_attribute("aria-current") == "true"
