"""The inbox and the form page in Chromium: layout, keyboard, live updates, XSS, screenshots.

These use Form rows made in the test; the whole flow against the simulator, the follower and a
worker is in test_browser_flow.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import User

from inbox.models import Decision, DifyApp, Form, Route, Run
from tests.review.browser import logged_in_page, screenshot
from tests.review.conftest import full_definition, make_form, make_run
from tests.review.xss import PAYLOADS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def seed(app: DifyApp, reviewer: User) -> Form:
    other = DifyApp.objects.create(name="hiring", base_url="http://127.0.0.1:9/v1", api_key="k")
    # Routed to the reviewers like the first app, so the inbox lists both apps' forms.
    route = Route.objects.create(app=other, name="default", reminders="")
    route.groups.add(*reviewer.groups.all())
    run = make_run(
        app,
        started_by=reviewer,
        timeline=[
            {
                "event": "workflow_started",
                "title": "Run started",
                "status": "running",
                "at": "2030-01-01T10:00:00+00:00",
            },
            {
                "event": "node_finished",
                "title": "Fetch order",
                "status": "succeeded",
                "at": "2030-01-01T10:00:02+00:00",
            },
            {
                "event": "human_input_required",
                "title": "Manager approval",
                "status": "paused",
                "at": "2030-01-01T10:00:03+00:00",
            },
        ],
    )
    form = make_form(
        app, run=run, node_title="Manager approval", expires_in=dt.timedelta(minutes=42)
    )
    make_form(
        app,
        node_title="Refund over 500 EUR",
        expires_in=dt.timedelta(hours=7),
        content="Order **#4411**: the customer returned two items and asks for 640 EUR.",
    )
    make_form(
        other,
        node_title="Offer approval",
        expires_in=dt.timedelta(days=2),
        content="Candidate accepted band B; approve the offer letter.",
    )
    make_form(
        other,
        node_title="Contract review",
        expires_in=None,
        content="Legal flagged clause 7.2 for review.",
    )
    make_form(app, node_title="Archived", status=Form.Status.SUBMITTED)
    return form


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_inbox_and_form_page_screenshots(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
    language: str,
) -> None:
    form = seed(dify_app, reviewer)
    # Bob has the form open: Alice sees the soft lock.
    bob = logged_in_page(chromium, live_server, other_reviewer, browser_contexts, language=language)
    bob.goto(f"{live_server.url}/forms/{form.public_id}/")
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language=language)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    assert page.locator("#rows .row").count() == 4
    urgent = page.locator("#rows .row").first.locator(".left")
    assert "urgent" in (urgent.get_attribute("class") or "")
    screenshot(page, f"inbox-{language}")
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.wait_for_selector("#decision-form")
    page.wait_for_selector(".presence")
    assert "Bob" in page.locator(".presence").inner_text()
    screenshot(page, f"form-{language}")
    assert page.js_errors == []
    assert page.csp_violations == []


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_no_page_scrolls_sideways_on_a_phone(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    language: str,
) -> None:
    form = seed(dify_app, reviewer)
    make_form(
        dify_app,
        node_title="A long title " * 6,
        content="An excerpt without a single space: " + "x" * 400,
    )
    # A code line and a table far wider than the phone: they scroll in their own boxes.
    wide_content = (
        "```\n"
        + "y" * 300
        + "\n```\n\n|"
        + "|".join(f"Column {n}" for n in range(14))
        + "|\n|"
        + "|".join("---" for _ in range(14))
        + "|\n"
    )
    wide = make_form(dify_app, node_title="Wide content", content=wide_content)
    reviewer.is_staff = True  # the most links in the top bar (Dashboard, Admin)
    reviewer.save()
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language=language)
    page.set_viewport_size({"width": 390, "height": 844})
    for path in (
        "/",
        f"/forms/{form.public_id}/",
        f"/forms/{wide.public_id}/",
        f"/runs/{form.run.public_id}/",
        "/runs/",
        "/apps/",
        "/dashboard/",
    ):
        page.goto(live_server.url + path)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
        # Every link of the top bar is on the screen.
        for link in page.locator(".topbar a, .topbar button").all():
            box = link.bounding_box()
            assert box is None or box["x"] + box["width"] <= 390, (path, link.inner_text())
    screenshot(page, f"phone-runs-{language}")
    page.goto(live_server.url + "/")
    screenshot(page, f"phone-inbox-{language}")


def test_right_to_left_text_runs_from_the_right_paragraph_by_paragraph(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    arabic = "يرجى الموافقة على استرداد المبلغ"
    form = make_form(
        dify_app,
        node_title="Refund",
        content=f"Refund **120 EUR** to Ada?\n\n{arabic}\n\n{{{{#$output.note#}}}}",
    )
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)

    def side(locator: Any) -> str:
        """Which edge of its box the element's text sits at."""
        return str(
            locator.evaluate(
                """el => {
                    const range = document.createRange();
                    range.selectNodeContents(el);
                    const text = range.getBoundingClientRect(), box = el.getBoundingClientRect();
                    const style = getComputedStyle(el);
                    const left = text.left - box.left - parseFloat(style.paddingLeft);
                    const right = box.right - text.right - parseFloat(style.paddingRight);
                    return left < 2 && right > 20 ? "left" : right < 2 && left > 20 ? "right" : "?";
                }"""
            )
        )

    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    assert side(page.locator(".md p", has_text="Refund")) == "left"
    assert side(page.locator(".md p", has_text=arabic)) == "right"
    # A note typed in Arabic runs from the right too, in the field and in the row's excerpt.
    note = page.locator("textarea[name=in_note]")
    assert note.get_attribute("dir") == "auto"
    assert note.evaluate("el => getComputedStyle(el).unicodeBidi") == "plaintext"
    form.content = f"{arabic}\n\nRefund **120 EUR** to Ada?"
    form.save(update_fields=["content"])
    page.goto(live_server.url + "/")
    assert side(page.locator("#rows .row .excerpt").first) == "right"
    assert page.js_errors == []


def test_the_runs_filters_redraw_the_list_and_leave_the_focus_on_the_filter(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    make_run(dify_app, started_by=reviewer, workflow_run_id="paused-run-1")
    make_run(
        dify_app, started_by=reviewer, workflow_run_id="finished-run", status=Run.Status.SUCCEEDED
    )
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/runs/")
    assert page.locator(".run-list .row").count() == 2
    page.evaluate("window.__marker = 1")  # gone if the page reloads
    # By the keyboard: the first arrow key changes the state filter.
    state = page.get_by_label("State")
    state.focus()
    with page.expect_response(lambda response: "state=" in response.url):
        page.keyboard.press("ArrowDown")
    chosen = state.input_value()
    page.wait_for_function("() => !document.querySelector('#run-results.htmx-swapping')")
    assert page.evaluate("window.__marker") == 1
    assert page.evaluate("document.activeElement.id") == "r-state"
    assert page.url.endswith(f"/runs/?state={chosen}")
    shown = page.locator(".run-list .row code").all_inner_texts()
    expected = {"open": ["paused-r"], "paused": ["paused-r"], "finished": ["finished"]}[chosen]
    assert shown == expected
    # Back in the history: the whole list again, and the filter says so.
    page.go_back()
    page.wait_for_function("() => document.querySelectorAll('.run-list .row').length === 2")
    assert state.input_value() == ""
    page.go_forward()
    page.wait_for_function(f"() => document.getElementById('r-state').value === '{chosen}'")
    assert page.js_errors == [] and page.csp_violations == []


def test_keyboard_moves_opens_and_searches(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    seed(dify_app, reviewer)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    page.keyboard.press("j")
    page.keyboard.press("j")
    selected = page.locator("#rows .row.selected .open")
    assert selected.inner_text() == "Refund over 500 EUR"
    page.keyboard.press("k")
    assert page.locator("#rows .row.selected .open").inner_text() == "Manager approval"
    page.keyboard.press("Enter")
    page.wait_for_url("**/forms/**")
    assert page.locator("#form-title").inner_text() == "Manager approval"
    page.go_back()
    # The page's script has run (it marks the document first thing): its keys work. Scripts
    # are deferred, so the rows may be drawn a moment before.
    page.wait_for_selector("html.js #rows .row")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("clause 7.2")
    page.wait_for_function("() => document.querySelectorAll('#rows .row').length === 1")
    assert page.locator("#rows .row .open").inner_text() == "Contract review"
    assert "q=clause%207.2" in page.url  # the filters live in the URL


def test_a_search_started_right_after_going_back_keeps_the_focus_and_its_results(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """Back in the list, the page asks for the place of the form just seen; the reader pressed
    "/" before its answer came (a slow server): the answer does not take the focus from the
    search, and what they type goes in it."""
    seed(dify_app, reviewer)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector("html.js #rows .row")
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    page.wait_for_url("**/forms/**")
    held: list[Any] = []
    page.route("**/?*after=*", lambda route: held.append(route))  # its answer, held back
    page.go_back()
    page.wait_for_selector("html.js #rows .row")
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    page.keyboard.press("/")
    with page.expect_response(lambda response: "after=" in response.url):
        held[0].continue_()
    page.wait_for_timeout(500)
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("clause 7.2")
    page.wait_for_function("() => document.querySelectorAll('#rows .row').length === 1")
    page.wait_for_timeout(500)
    assert page.evaluate("document.activeElement.id") == "q"
    assert page.locator("#q").input_value() == "clause 7.2"
    assert page.locator("#rows .row .open").all_inner_texts() == ["Contract review"]
    assert page.js_errors == [] and page.csp_violations == []


def test_the_node_filter_follows_the_app_chosen(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    seed(dify_app, reviewer)  # refunds: three nodes (one form decided); hiring: two more
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#rows .row")
    page.select_option("#f-app", label="refunds")
    page.wait_for_function("() => document.querySelectorAll('#rows .row').length === 2")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#f-node option')].map(o => o.textContent).join('|')"
        " === 'All nodes|Archived|Manager approval|Refund over 500 EUR'"
    )
    page.select_option("#f-node", label="Manager approval")
    page.wait_for_function("() => document.querySelectorAll('#rows .row').length === 1")
    # Another app: its own nodes, and its forms (not "No forms match").
    page.select_option("#f-app", label="hiring")
    page.wait_for_function("() => document.querySelectorAll('#rows .row').length === 2")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#f-node option')].map(o => o.textContent).join('|')"
        " === 'All nodes|Contract review|Offer approval'"
    )
    assert page.locator("#f-node").input_value() == ""
    from urllib.parse import parse_qs, urlsplit

    # The address stays the inbox's (fetching the node choices is not a page of its own).
    assert urlsplit(page.url).path == "/"
    assert parse_qs(urlsplit(page.url).query).get("node", [""]) == [""]
    page.locator("#f-node").hover()
    page.locator("#f-node").focus()
    page.wait_for_timeout(300)
    assert urlsplit(page.url).path == "/"
    assert page.js_errors == []


def test_new_forms_appear_without_a_reload(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.wait_for_selector(".empty-state")
    page.evaluate("window.__marker = 1")  # gone if the page reloads
    make_form(dify_app, node_title="Just arrived")
    page.wait_for_selector("#rows .row", timeout=15000)
    assert page.locator("#rows .row .open").inner_text() == "Just arrived"
    assert page.evaluate("window.__marker") == 1
    # Screen readers are told a moment after the swap (the region is emptied, then filled, so
    # the same words are read again): wait for it rather than read it at once.
    page.wait_for_function(
        "() => document.getElementById('announcer').textContent === 'The list was updated.'",
        timeout=5000,
    )


@pytest.mark.parametrize(
    ("language", "soon", "past"),
    [
        ("en", "in less than a minute", "just now"),
        ("zh-hans", "\u4e0d\u5230\u4e00\u5206\u949f\u540e", "\u521a\u521a"),
    ],
)
def test_a_time_within_the_minute_is_worded_as_the_server_words_it(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    reviewer: User,
    language: str,
    soon: str,
    past: str,
) -> None:
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language=language)
    page.clock.install()
    page.goto(live_server.url + "/")
    # Drawn as "in 2 minutes" and "2 minutes ago"; the page's refresh (every 30 s) rewords them.
    page.evaluate(
        """() => {
          for (const [id, offset] of [["soon", 100000], ["past", -100000]]) {
            const el = document.createElement("time");
            el.id = id; el.setAttribute("data-rel", "");
            el.setAttribute("datetime", new Date(Date.now() + offset).toISOString());
            el.textContent = "server words";
            document.body.appendChild(el);
          }
        }"""
    )
    page.clock.run_for(30000)
    assert page.inner_text("#soon") != soon and page.inner_text("#soon") != "server words"
    page.clock.run_for(30000)
    assert page.inner_text("#soon") == soon  # 40 s left: not "now", nor a minute
    assert page.inner_text("#past") != past
    page.evaluate(
        "() => document.getElementById('past').setAttribute('datetime',"
        " new Date(Date.now() - 20000).toISOString())"
    )
    page.clock.run_for(30000)
    assert page.inner_text("#past") == past


def _focused(page: Any) -> str:
    """Where the focus is: the element's id, else its tag and text."""
    return str(
        page.evaluate(
            "() => { const e = document.activeElement;"
            " return e === document.body ? 'BODY' : (e.id || e.tagName + ':' + e.textContent.trim()); }"
        )
    )


def test_a_swap_never_drops_the_focus_to_the_start_of_the_page(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    definition = full_definition()
    definition["inputs"] = definition["inputs"][:1]  # the note only
    form = make_form(dify_app, definition=definition)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    # Take the form, then release it, by the keyboard: the focus stays in the claim panel.
    page.get_by_role("button", name="Take this form").focus()
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Release").wait_for()
    in_claim = "() => document.getElementById('claim').contains(document.activeElement)"
    page.wait_for_function(in_claim, timeout=5000)
    page.get_by_role("button", name="Release").focus()
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Take this form").wait_for()
    page.wait_for_function(in_claim, timeout=5000)
    # Decide by the keyboard: the focus goes to what the page now says.
    page.get_by_role("button", name="Approve").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#form-body.state-in_flight, #form-body.state-submitted")
    assert _focused(page) != "BODY"
    assert page.evaluate("document.getElementById('form-body').contains(document.activeElement)")


def test_an_inbox_update_keeps_the_focus_on_the_row_it_was_on(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    first = make_form(dify_app, node_title="First in line")
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(live_server.url + "/")
    page.locator("#rows .row .open").first.focus()
    make_form(dify_app, node_title="Just arrived")
    page.wait_for_function(
        "() => document.querySelectorAll('#rows .row').length === 2", timeout=15000
    )
    # Back on the row it was on, once the new list has settled.
    page.wait_for_function(
        f"() => document.activeElement.getAttribute('href') === '/forms/{first.public_id}/'",
        timeout=5000,
    )


def test_actions_wait_for_required_choices_and_a_decision_elsewhere_closes_the_page(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    definition = full_definition()
    definition["inputs"] = definition["inputs"][:2]  # paragraph and select
    form = make_form(dify_app, definition=definition)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    approve = page.get_by_role("button", name="Approve")
    assert approve.is_disabled()
    page.get_by_label("partial").check()
    assert approve.is_enabled()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    # Someone decides elsewhere: the page says so by itself.
    Form.objects.filter(pk=form.pk).update(status=Form.Status.ANSWERED_ELSEWHERE, form_token="")
    page.wait_for_selector(".state-answered_elsewhere", timeout=15000)
    assert "Answered in Dify; which action is not known." in page.locator("#form-body").inner_text()
    # The header follows (no "Take this form", no "Expires in"), and a later redraw still finds
    # its places: htmx reports no out-of-band target missing.
    assert page.locator("#claim").inner_text() == ""
    assert page.locator("#form-expiry").inner_text() == ""
    Form.objects.filter(pk=form.pk).update(status=Form.Status.EXPIRED, form_token="")
    page.wait_for_selector(".state-expired", timeout=15000)
    assert console == []


def test_what_the_reviewer_typed_is_kept_when_someone_else_decides_meanwhile(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    definition = full_definition()
    definition["inputs"] = definition["inputs"][:2]  # the note (prefilled) and a select
    form = make_form(dify_app, definition=definition)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill("A long, careful note about this refund.")
    # Someone else decides: the page's poll redraws it closed.
    Form.objects.filter(pk=form.pk).update(status=Form.Status.ANSWERED_ELSEWHERE, form_token="")
    page.wait_for_selector(".state-answered_elsewhere", timeout=15000)
    kept = page.locator("#kept .kept-text textarea")
    assert kept.input_value() == "A long, careful note about this refund."
    assert kept.get_attribute("readonly") is not None
    assert "What you typed is kept here" in page.locator("#kept h2").inner_text()
    # A later redraw keeps it.
    Form.objects.filter(pk=form.pk).update(status=Form.Status.EXPIRED, form_token="")
    page.wait_for_selector(".state-expired", timeout=15000)
    assert kept.input_value() == "A long, careful note about this refund."


def test_nothing_is_kept_when_the_reviewer_typed_nothing(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = note_only_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    # The note holds its default: not the reviewer's words.
    Form.objects.filter(pk=form.pk).update(status=Form.Status.ANSWERED_ELSEWHERE, form_token="")
    page.wait_for_selector(".state-answered_elsewhere", timeout=15000)
    assert page.locator("#kept").inner_text() == ""


def test_a_decision_the_proxy_answers_with_a_502_is_explained_and_the_note_kept(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    definition = full_definition()
    definition["inputs"] = definition["inputs"][:1]  # the note alone
    form = make_form(dify_app, definition=definition)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language="zh-hans")
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill("Refund it, the parcel was lost.")
    # The reverse proxy in front of the app, which no test runs: its 502 carries none of our
    # words, so the page's own are shown.
    page.route(
        "**/decide",
        lambda route: route.fulfill(
            status=502, content_type="text/html", body="<html><h1>502 Bad Gateway</h1></html>"
        ),
    )
    page.get_by_role("button", name="Approve").click()
    alert = page.get_by_role("alert")
    # Sent again by the page once its poll gets through (test_browser_kept.py): said so.
    alert.get_by_text(
        "服务器暂时无法使用\uff08502\uff09\uff0c您的决定可能未被接收\u3002服务器恢复响应后将重新发送"
    ).wait_for()
    screenshot(page, "form-502-zh-hans")
    assert page.locator("textarea[name=in_note]").input_value() == "Refund it, the parcel was lost."
    assert page.get_by_role("button", name="Approve").is_enabled()
    # The page's poll answering again (and the decision sent again, refused again) does not
    # take away what the reviewer was told.
    with page.expect_response(lambda response: "/live" in response.url):
        pass
    assert alert.is_visible()
    page.get_by_role("button", name="关闭").click()
    assert page.locator("#request-error").is_hidden()
    assert not Decision.objects.exists()
    assert page.js_errors == []
    assert page.csp_violations == []


def test_a_note_refused_because_someone_decided_first_stays_while_the_page_follows_the_form(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
) -> None:
    form = note_only_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill("Refund only half: the box was opened.")
    with page.expect_response(lambda response: "/live" in response.url):
        pass
    # Bob decides first, from his own page (his decision queued, on its way to Dify).
    decision = Decision.objects.create(form=form, action_id="reject", reviewer=other_reviewer)
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTING)
    with page.expect_response(lambda response: response.url.endswith("/decide")) as answer:
        page.get_by_role("button", name="Approve").click()
    assert answer.value.status == 200  # htmx swaps only 2xx; the refusal is in the page
    kept = page.locator(".kept-text textarea")
    assert kept.input_value() == "Refund only half: the box was opened."
    # Bob's decision reaches Dify: the page's poll redraws the form as submitted, and what
    # the reviewer typed is still there to copy.
    Decision.objects.filter(pk=decision.pk).update(status=Decision.Status.DELIVERED)
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTED, form_token="")
    page.wait_for_selector(".state-submitted", timeout=15000)
    assert kept.input_value() == "Refund only half: the box was opened."
    assert page.locator(".kept-text").is_visible()
    screenshot(page, "form-note-kept-after-redraw")
    assert page.js_errors == [] and page.csp_violations == []


def test_taking_a_form_keeps_what_the_reviewer_typed(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = note_only_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.evaluate("window.__marker = 1")  # gone if the page reloads
    note = page.locator("textarea[name=in_note]")
    note.fill("Half now, half on delivery.")
    page.get_by_role("button", name="Take this form").click()
    page.locator("#claim").get_by_text("You are handling this").wait_for()
    assert note.input_value() == "Half now, half on delivery."
    assert page.evaluate("window.__marker") == 1
    assert Form.objects.get(pk=form.pk).claimed_by_id == reviewer.pk
    page.get_by_role("button", name="Release").click()
    page.locator("#claim").get_by_role("button", name="Take this form").wait_for()
    assert note.input_value() == "Half now, half on delivery."
    assert page.js_errors == [] and page.csp_violations == []


def test_the_run_panel_follows_the_run(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    run = Run.objects.get(pk=form.run_id)
    run.status = Run.Status.SUCCEEDED
    run.outputs = {"answer": "All done"}
    run.save()
    page.wait_for_selector("#run-panel .outputs", timeout=15000)
    assert "All done" in page.locator("#run-panel").inner_text()


def test_nothing_from_the_xss_corpus_runs(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    joined = "\n\n".join(PAYLOADS)
    definition = full_definition()
    definition["inputs"][1]["option_source"]["value"] = PAYLOADS[:6]
    definition["user_actions"][0]["title"] = PAYLOADS[0]
    names = [payload[:200] for payload in PAYLOADS[:8]]
    definition["inputs"][3]["number_limits"] = len(names)
    form = make_form(
        dify_app,
        definition=definition,
        node_title=PAYLOADS[1],
        content=joined + "\n\n{{#$output.note#}}",
    )
    for name in names:
        # The reviewer's own uploads: the page shows them again, names as plain text.
        form.uploads.create(
            input_name="evidence",
            upload_file_id="x",
            name=name,
            size=1,
            category="image",
            uploaded_by=reviewer,
        )
    done = make_form(
        dify_app, status=Form.Status.SUBMITTED, node_title=PAYLOADS[2], rendered_content=joined
    )
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    for url in ("/", f"/forms/{form.public_id}/", f"/forms/{done.public_id}/", "/?q=%3Cscript%3E"):
        page.goto(live_server.url + url)
        page.wait_for_timeout(300)
        assert page.evaluate("window.__xss") is None, url
        if url == f"/forms/{form.public_id}/":
            shown = page.locator("#files-evidence .file-name").all_text_contents()
            assert shown == names
    assert page.js_errors == []
    assert page.csp_violations == []


def test_a_failed_upload_is_explained_in_the_pages_language(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language="zh-hans")
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    console: list[str] = []
    page.on(
        "console", lambda message: console.append(message.text) if message.type == "error" else None
    )
    error = page.locator("#file-error-receipt")
    assert error.get_attribute("data-too-large") == "文件过大。"
    # The form is gone by the time the file is sent: the server answers 404.
    Form.objects.filter(pk=form.pk).delete()
    page.set_input_files(
        "input[data-upload=receipt]",
        files=[{"name": "r.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4"}],
    )
    page.wait_for_function(
        "() => document.getElementById('file-error-receipt').textContent.length > 0", timeout=10000
    )
    assert error.text_content() == "上传失败\uff08404\uff09。"
    # The file input does not take the decision form's "disable its buttons" as its own (htmx
    # would look for them inside the input, and log an error).
    assert [text for text in console if "404" not in text] == []


@pytest.mark.parametrize(
    "language, said",
    [
        (
            "en",
            "big.png: The file is larger than 10 MB, the most Dify takes for this kind of file.",
        ),
        ("zh-hans", "big.png\uff1a文件超过 10 MB\uff0c这是 Dify 对这类文件的上限。"),
    ],
)
def test_a_file_over_its_limit_is_refused_before_sending(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    language: str,
    said: str,
) -> None:
    form = make_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language=language)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    sent: list[str] = []
    page.on(
        "request", lambda request: sent.append(request.url) if "/files/" in request.url else None
    )
    # The page's limit is Dify's image limit (10 MB) for a .png, by its extension.
    page.set_input_files(
        "input[data-upload=receipt]",
        files=[
            {"name": "big.png", "mimeType": "image/png", "buffer": b"0" * (10 * 1024 * 1024 + 1)}
        ],
    )
    error = page.locator("#file-error-receipt")
    page.wait_for_function(
        "() => document.getElementById('file-error-receipt').textContent.length > 0", timeout=10000
    )
    # Named with the page's language's colon.
    assert error.text_content() == said
    assert sent == [] and not form.uploads.exists()
    assert page.js_errors == []


def test_more_files_than_a_list_takes_are_refused_before_sending_and_a_full_list_hides_its_picker(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    from inbox.models import Upload

    form = make_form(dify_app)  # evidence: up to 3 files
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    sent: list[str] = []
    page.on(
        "request", lambda request: sent.append(request.url) if "/files/" in request.url else None
    )
    page.set_input_files(
        "input[data-upload=evidence]",
        files=[
            {"name": f"photo-{n}.png", "mimeType": "image/png", "buffer": b"png"} for n in range(4)
        ],
    )
    page.wait_for_function(
        "() => document.getElementById('file-error-evidence').textContent.length > 0",
        timeout=10000,
    )
    assert page.locator("#file-error-evidence").text_content() == (
        "At most 3 files can be attached here; choose fewer."
    )
    assert sent == []
    # Three already on the list (a reload shows them): nothing more to pick.
    for n in range(3):
        Upload.objects.create(
            form=form,
            input_name="evidence",
            upload_file_id=f"f-{n}",
            name=f"photo-{n}.png",
            size=3,
            category="image",
            uploaded_by=reviewer,
        )
    page.reload()
    assert page.locator("#files-evidence .file-chip").count() == 3
    assert page.locator("[data-name=evidence] .file-pick").is_hidden()
    assert page.locator("[data-name=receipt] .file-pick").is_visible()
    # A file removed by the keyboard: the focus stays in the list, on the next file's button.
    page.get_by_role("button", name="Remove photo-0.png").focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelectorAll('#files-evidence .file-chip').length === 2"
    )
    page.wait_for_function(
        "() => document.getElementById('files-evidence').contains(document.activeElement)",
        timeout=5000,
    )
    # The last ones: the focus goes on to the field's file picker, not to the page's start.
    for n in (1, 2):
        page.get_by_role("button", name=f"Remove photo-{n}.png").focus()
        page.keyboard.press("Enter")
        page.wait_for_function(
            f"() => document.querySelectorAll('#files-evidence .file-chip').length === {2 - n}"
        )
    page.wait_for_function(
        "() => document.querySelector('[data-name=evidence]').contains(document.activeElement)",
        timeout=2000,
    )
    assert page.js_errors == []


def test_the_run_page_keeps_an_open_output_text_open_and_reloads_when_the_session_ends(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    from django.contrib.sessions.models import Session

    run = make_run(
        dify_app,
        started_by=reviewer,
        status=Run.Status.RUNNING,
        timeline=[
            {
                "key": "node:draft:1",
                "event": "node",
                "node_id": "draft",
                "title": "Draft the reply",
                "status": "running",
                "text": "Dear customer, your refund",
                "at": "2030-01-01T10:00:02+00:00",
            }
        ],
    )
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/runs/{run.public_id}/")
    page.click("#run-live details summary")
    # The live part is replaced every 2 s; the reader's open entry stays open through it.
    Run.objects.filter(pk=run.pk).update(error="A tool is slow to answer.")
    page.wait_for_selector("#run-live p.error", timeout=15000)
    assert page.locator("#run-live details").evaluate("el => el.open")
    assert "Dear customer" in page.locator("#run-live details pre").inner_text()
    # Signed out meanwhile: the page goes to the sign-in page, not into the live part.
    Session.objects.all().delete()
    page.wait_for_url("**/accounts/login/**", timeout=15000)
    assert page.locator("input[type=password]").count() == 1
    assert page.locator("#run-live").count() == 0


def note_only_form(app: DifyApp) -> Form:
    definition = full_definition()
    definition["inputs"] = definition["inputs"][:1]  # the note, prefilled "resolved default"
    return make_form(app, definition=definition)


@pytest.mark.parametrize(
    ("ends", "language", "notice", "reload_label"),
    [
        (
            "signed_out",
            "en",
            "This form can no longer be sent from this page: you were signed out, or it is no "
            "longer yours to answer. Copy what you typed, then reload the page.",
            "Reload the page",
        ),
        (
            "form_taken_away",
            "zh-hans",
            "此表单已无法从本页面发送：您已退出登录，或已无权作答。请先复制您输入的内容，然后刷新页面。",  # noqa: RUF001
            "刷新页面",
        ),
    ],
)
def test_a_typed_note_waits_when_the_page_can_no_longer_send_it(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    ends: str,
    language: str,
    notice: str,
    reload_label: str,
) -> None:
    from django.contrib.sessions.models import Session

    form = note_only_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language=language)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.evaluate("window.__marker = 1")  # gone if the page reloads
    note = page.locator("textarea[name=in_note]")
    note.fill("Refund it, the parcel was lost.")
    if ends == "signed_out":
        Session.objects.all().delete()  # signed out elsewhere, or the login expired
    else:
        reviewer.groups.clear()  # the form is no longer routed to them
    # The poll is told to reload the page; the note would go with it. The page stays, and says
    # why the note cannot be sent from here (read out: the alert's words arrive once shown).
    page.get_by_role("alert").get_by_text(notice).wait_for(timeout=15000)
    assert page.evaluate("window.__marker") == 1
    assert note.input_value() == "Refund it, the parcel was lost."
    approve = page.get_by_role("button", name="Approve")
    assert approve.is_disabled()
    assert page.locator(".actions-hint").is_hidden()
    screenshot(page, f"form-stale-{language}")
    # The poll stops: nothing asks again, and the notice is not repeated.
    polls: list[str] = []
    page.on(
        "request", lambda request: polls.append(request.url) if "/live" in request.url else None
    )
    page.wait_for_timeout(6000)  # longer than the poll's 5 s
    assert polls == []
    assert page.get_by_role("alert").get_by_text(notice).count() == 1
    assert page.evaluate("window.__marker") == 1
    assert page.js_errors == []
    assert page.csp_violations == []
    # The reader reloads when they have copied it.
    page.get_by_role("button", name=reload_label).click()
    if ends == "signed_out":
        page.wait_for_url("**/accounts/login/**", timeout=15000)
    else:
        page.locator("#main h1").wait_for()
        assert page.evaluate("window.__marker") is None
        assert page.locator("#decision-form").count() == 0


def test_a_page_with_nothing_typed_reloads_when_the_login_ends(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    from django.contrib.sessions.models import Session

    form = note_only_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    # Prefilled by the form, not typed: nothing would be lost.
    assert page.locator("textarea[name=in_note]").input_value() == "resolved default"
    Session.objects.all().delete()
    page.wait_for_url("**/accounts/login/**", timeout=15000)
    assert page.locator("input[type=password]").count() == 1
    assert page.js_errors == []


def test_the_connection_and_request_errors_stack_rather_than_overlap(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = note_only_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.route(
        "**/decide",
        lambda route: route.fulfill(
            status=502, content_type="text/html", body="<html><h1>502 Bad Gateway</h1></html>"
        ),
    )
    page.get_by_role("button", name="Approve").click()
    request_error = page.locator("#request-error")
    request_error.get_by_text("The server is unavailable for the moment (502)").wait_for()
    # Then the connection drops: the next poll cannot reach the server.
    page.route("**/live?*", lambda route: route.abort())
    connection_error = page.locator("#connection-error")
    connection_error.wait_for(state="visible", timeout=15000)
    assert request_error.is_visible()
    screenshot(page, "form-two-toasts")
    one = connection_error.bounding_box()
    other = request_error.bounding_box()
    assert one is not None and other is not None
    apart = (
        one["y"] + one["height"] <= other["y"]
        or other["y"] + other["height"] <= one["y"]
        or one["x"] + one["width"] <= other["x"]
        or other["x"] + other["width"] <= one["x"]
    )
    assert apart, (one, other)
    # Both inside the window.
    viewport = page.viewport_size
    for box in (one, other):
        assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"]
    assert page.js_errors == []
    assert page.csp_violations == []


def test_a_decision_sent_after_the_login_ended_leaves_one_notice(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """Signed out in another tab, then an action pressed before the poll noticed: the refusal
    says nothing was sent; once the poll finds the page can no longer send, its notice (with
    the reload button) takes the refusal's place rather than stacking a second alert on it."""
    from django.contrib.sessions.models import Session

    form = note_only_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill("Refund it, the parcel was lost.")
    Session.objects.all().delete()
    page.get_by_role("button", name="Approve").click()
    refusal = page.locator("#request-error")
    refusal.get_by_text("Nothing was sent: you are signed out.").wait_for()
    stale = page.locator("#reload-notice")
    stale.wait_for(state="visible", timeout=15000)
    assert refusal.is_hidden() and page.locator("#connection-error").is_hidden()
    assert page.locator("#claim").is_hidden()
    assert page.locator("textarea[name=in_note]").input_value() == "Refund it, the parcel was lost."
    assert page.js_errors == []
