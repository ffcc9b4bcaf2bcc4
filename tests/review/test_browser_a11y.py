"""Keyboard and screen reader behaviour in Chromium: what is read out, where the focus goes,
and that nothing moves while nothing changes."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from inbox.models import DifyApp, Form, Run, Upload
from tests.review.browser import logged_in_page
from tests.review.conftest import full_definition, make_form, make_run
from tests.review.test_browser_flow import PNG
from tests.review.test_browser_pages import seed

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Counts the changes to an element's content from now on (`window.changes`) and keeps the
# element (`window.watched`): replaced, it is no longer the one the page holds.
WATCH = """id => {
    window.changes = 0;
    const el = document.getElementById(id);
    window.watched = el;
    new MutationObserver(list => { window.changes += list.length; })
        .observe(el, { childList: true, subtree: true, characterData: true });
}"""


def announced(page: Any) -> str:
    return str(page.locator("#announcer").text_content() or "")


def test_the_run_page_s_poll_leaves_the_page_alone_while_the_run_does_not_change(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    run = make_run(dify_app, status=Run.Status.RUNNING, started_by=reviewer)
    make_form(dify_app, run=run, node_title="Manager approval")
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/runs/{run.public_id}/")
    link = page.locator("#run-live .run-forms a")
    link.focus()
    page.evaluate(WATCH, "run-live")
    polls = []
    page.on("response", lambda r: polls.append(r.status) if "part=live" in r.url else None)
    page.wait_for_timeout(4500)
    assert polls and set(polls) == {204}
    assert page.evaluate("() => window.changes") == 0
    assert page.evaluate("() => document.getElementById('run-live') === window.watched")
    assert page.evaluate("() => document.activeElement === window.watched.querySelector('a')")
    # The run moves on: the part is redrawn, and its new status is read out once.
    Run.objects.filter(pk=run.pk).update(status=Run.Status.PAUSED)
    page.wait_for_function(
        "() => document.getElementById('announcer').textContent === 'The run is now: Paused.'"
    )
    assert "Paused" in page.locator("#run-live .badge").first.inner_text()
    assert page.evaluate("() => document.activeElement.closest('.run-forms') !== null")
    assert page.js_errors == []


def test_presence_and_claims_by_others_are_read_out_once_from_regions_that_stay(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
) -> None:
    form = make_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.evaluate(WATCH, "presence")
    bob = logged_in_page(chromium, live_server, other_reviewer, browser_contexts)
    bob.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.wait_for_selector("#presence .presence")
    assert "Bob is reviewing this too." in page.locator("#presence").inner_text()
    # The region is the one the page was drawn with, and keeps its words while Bob stays.
    assert page.evaluate("() => document.getElementById('presence') === window.watched")
    changes = page.evaluate("() => window.changes")
    page.wait_for_timeout(6000)
    assert page.evaluate("() => window.changes") == changes
    assert page.locator("[role=status]", has_text="reviewing this").count() == 1
    # Bob takes the form: Alice's page shows it and says it, once.
    Form.objects.get(pk=form.pk).claim(other_reviewer)
    page.wait_for_function(
        "() => document.getElementById('announcer').textContent === 'Taken by Bob'"
    )
    assert "Taken by Bob" in page.locator("#claim").inner_text()
    page.evaluate("() => { document.getElementById('announcer').textContent = ''; }")
    page.wait_for_timeout(6000)
    assert announced(page) == ""
    assert page.js_errors == []


def test_a_form_that_expires_while_open_is_announced_as_expired(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language="zh-hans")
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    # Its time runs out once the page shows it open (a form made to expire a few seconds on
    # could be expired already when a loaded machine gets the page drawn: nothing to announce).
    assert page.locator("#form-status").inner_text() != "已过期"
    now = timezone.now()
    Form.objects.filter(pk=form.pk).update(expiration_time=now, updated_at=now)
    page.wait_for_function(
        "() => document.getElementById('announcer').textContent === '此表单当前状态：已过期。'",  # noqa: RUF001
        timeout=20000,
    )
    assert page.locator("#form-status").inner_text() == "已过期"


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_searching_and_filtering_the_inbox_says_what_the_list_holds(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    language: str,
) -> None:
    seed(dify_app, reviewer)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language=language)
    page.goto(live_server.url + "/")
    page.locator("#q").fill("clause 7.2")
    one, none = ("1 form.", "No forms match these filters.")
    if language == "zh-hans":
        one, none = ("1 个表单。", "没有符合筛选条件的表单。")
    page.wait_for_function(f"() => document.getElementById('announcer').textContent === {one!r}")
    page.locator("#q").fill("nothing is called this")
    page.wait_for_function(f"() => document.getElementById('announcer').textContent === {none!r}")
    assert page.evaluate("() => document.activeElement.id") == "q"


def test_single_key_shortcuts_can_be_turned_off_and_escape_leaves_the_search_for_the_list(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    seed(dify_app, reviewer)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    toggle = page.get_by_role("checkbox", name="Single-key shortcuts")
    assert toggle.is_visible() and toggle.is_checked()
    assert page.locator("#q").get_attribute("aria-keyshortcuts") == "/"
    assert page.locator("#rows .row a.open").first.get_attribute("aria-keyshortcuts") == "J K"
    assert page.locator(".inbox-head .hint").get_attribute("aria-hidden") is None
    # Escape in the search goes back to the list, not to the page's start.
    page.keyboard.press("/")
    page.keyboard.press("Escape")
    assert page.evaluate("() => document.activeElement.classList.contains('open')")
    # Off: the keys do nothing, say nothing, and stay off on the next visit.
    toggle.uncheck()
    page.locator("h1").click()
    selected = page.locator("#rows .row.selected").get_attribute("data-id")
    page.keyboard.press("j")
    page.keyboard.press("/")
    assert page.locator("#rows .row.selected").get_attribute("data-id") == selected
    assert page.evaluate("() => document.activeElement.id") != "q"
    assert page.locator("#q").get_attribute("aria-keyshortcuts") is None
    page.reload()
    page.wait_for_selector("#rows .row")
    assert not page.get_by_role("checkbox", name="Single-key shortcuts").is_checked()
    assert page.locator("#rows .row a.open").first.get_attribute("aria-keyshortcuts") is None
    page.keyboard.press("j")
    assert page.locator("#rows .row.selected").count() == 0
    page.get_by_role("checkbox", name="Single-key shortcuts").check()
    page.locator("h1").click()
    page.keyboard.press("j")
    assert page.locator("#rows .row.selected").count() == 1
    assert page.js_errors == []


def test_a_decision_lost_on_the_network_gives_the_focus_back_to_its_button(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    definition = full_definition()
    definition["inputs"] = definition["inputs"][:1]  # the note alone
    form = make_form(dify_app, definition=definition)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.route("**/decide", lambda route: route.abort("connectionreset"))
    page.get_by_role("button", name="Approve").focus()
    page.keyboard.press("Enter")
    # Said in the error alert (the poll's connection toast is not for it).
    page.locator("#request-error").get_by_text("Your decision was not sent").wait_for()
    page.wait_for_function(
        "() => document.activeElement && document.activeElement.value === 'approve'", timeout=3000
    )
    assert page.locator("#request-error-text").get_attribute("role") == "alert"
    assert page.locator("#connection-error").is_hidden()
    assert not Form.objects.get(pk=form.pk).decisions.exists()


def test_a_file_list_filled_from_its_picker_gives_the_focus_to_its_last_remove_button(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    simulator_dify_app: Any,
    reviewer: User,
    reviewers_group: Any,
) -> None:
    from inbox.models import Route

    app = simulator_dify_app()
    Route.objects.create(app=app, name="default", reminders="").groups.add(reviewers_group)
    form = make_form(app)  # evidence: up to 3 files
    for n in range(2):
        Upload.objects.create(
            form=form,
            input_name="evidence",
            upload_file_id=f"f-{n}",
            name=f"photo-{n}.png",
            size=3,
            category="image",
            uploaded_by=reviewer,
        )
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    picker = page.locator("input[data-upload=evidence]")
    picker.focus()
    picker.set_input_files(files=[{"name": "photo-2.png", "mimeType": "image/png", "buffer": PNG}])
    page.wait_for_function(
        "() => document.querySelectorAll('#files-evidence .file-chip').length === 3",
        timeout=15000,
    )
    assert page.locator("[data-name=evidence] .file-pick").is_hidden()
    page.wait_for_function(
        "() => document.activeElement.getAttribute('aria-label') === 'Remove photo-2.png'",
        timeout=3000,
    )
    assert page.js_errors == []


def test_no_page_scrolls_sideways_at_320px(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = seed(dify_app, reviewer)
    reviewer.is_staff = True
    reviewer.save()
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, viewport=(320, 640))
    for path in (
        "/",
        f"/forms/{form.public_id}/",
        f"/runs/{form.run.public_id}/",
        "/runs/",
        "/apps/",
        "/dashboard/",
    ):
        page.goto(live_server.url + path)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 320, (path, width)


def test_a_failed_login_puts_the_focus_on_its_error(
    chromium: Any, live_server: Any, browser_contexts: list[Any], reviewer: User
) -> None:
    context = chromium.new_context(locale="en-US")
    browser_contexts.append(context)
    page = context.new_page()
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not her password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("#login-error")
    assert page.evaluate("() => document.activeElement.id") == "login-error"
    assert page.get_by_label("Username").get_attribute("aria-invalid") == "true"
    assert page.get_by_label("Password").get_attribute("aria-describedby") == "login-error"
