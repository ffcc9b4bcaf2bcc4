"""What a reviewer on a phone sent or typed is not lost: a post the connection dropped says it
was not sent (a decision goes again by itself, once), a choice in a long list survives the
language switch, what was typed survives signing in again, and the run's next form is in
reach right after a decision."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.utils import timezone

from inbox.models import Decision, DifyApp, Form, Run, Upload
from tests.review.browser import logged_in_page, screenshot
from tests.review.conftest import full_definition, make_form

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = (390, 844)
RESENDING = (
    "Your decision was not sent: the connection dropped. Sending it again when the connection "
    "is back\u2026 What you typed is kept."
)
NOT_SENT = (
    "Not sent: the connection dropped. What you typed is kept: tap the button again once you "
    "are back online."
)
NO_ANSWER = (
    "The server did not answer in time, so your decision may not have arrived. Sending it "
    "again\u2026 It will count only once. What you typed is kept."
)
NOTE = "Refund it, the parcel was lost."


def _note_form(app: DifyApp, **kwargs: Any) -> Form:
    definition = full_definition()
    definition["inputs"] = definition["inputs"][:1]  # the note, prefilled "resolved default"
    return make_form(app, definition=definition, **kwargs)


def _phone(chromium: Any, live_server: Any, user: User, contexts: list[Any], **kw: Any) -> Any:
    return logged_in_page(chromium, live_server, user, contexts, viewport=PHONE, touch=True, **kw)


def test_a_decision_the_connection_dropped_says_so_stays_said_and_is_sent_again_once(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill(NOTE)
    posts: list[str] = []

    def drop(route: Any) -> None:
        posts.append(route.request.url)
        route.abort("internetdisconnected")

    page.route("**/decide", drop)
    page.get_by_role("button", name="Approve").tap()
    alert = page.locator("#request-error")
    alert.get_by_text(RESENDING).wait_for(timeout=5000)
    assert page.locator("#request-error-text").get_attribute("role") == "alert"
    # The poll gets through meanwhile (its toast, if any, goes): the message stays, and the
    # page keeps trying while the decision cannot get through.
    page.wait_for_timeout(7000)
    assert alert.get_by_text(RESENDING).is_visible()
    assert page.locator("#connection-error").is_hidden()
    assert len(posts) >= 2
    assert not Decision.objects.filter(form=form).exists()
    assert page.locator("textarea[name=in_note]").input_value() == NOTE
    screenshot(page, "phone-decision-not-sent")
    # The connection is back: sent by the page itself, once.
    page.unroute("**/decide")
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    assert alert.is_hidden()
    decisions = list(Decision.objects.filter(form=form))
    assert len(decisions) == 1
    assert decisions[0].action_id == "approve" and decisions[0].inputs["note"] == NOTE
    assert page.js_errors == [] and page.csp_violations == []


def test_a_decision_whose_answer_was_lost_is_sent_again_and_counts_once(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """The post reached the server and made the decision; only its answer was lost. The page
    sends it again under the same submission key: the server answers with that decision."""
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill(NOTE)
    # The poll cannot get through either: only the page's own resend can learn what happened.
    page.route("**/live?*", lambda route: route.abort("internetdisconnected"))
    posts: list[str] = []

    def answer_lost(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            route.fetch()  # the server gets it, and decides
            route.abort("internetdisconnected")  # the answer never comes back
        else:
            route.continue_()

    page.route("**/decide", answer_lost)
    page.get_by_role("button", name="Approve").tap()
    page.locator("#request-error").get_by_text(RESENDING).wait_for(timeout=5000)
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    assert len(posts) == 2
    assert Decision.objects.filter(form=form).count() == 1
    # The same page's key both times.
    keys = {
        part for post in posts for part in post.split("&") if part.startswith("submission_key=")
    }
    assert len(keys) == 1
    assert page.locator("#request-error").is_hidden()
    assert page.js_errors == [] and page.csp_violations == []


def test_a_decision_with_files_whose_answer_was_lost_is_sent_again_and_counts_once(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """The page's own resend carries the same files under the same key: the server takes it
    for the decision it made (`other_files`), not for another one to refuse."""
    definition = full_definition()
    # The note and a list of files.
    definition["inputs"] = [definition["inputs"][0], definition["inputs"][3]]
    form = make_form(dify_app, definition=definition)
    for n in (1, 2):
        Upload.objects.create(
            form=form,
            uploaded_by=reviewer,
            input_name="evidence",
            upload_file_id=f"dify-e{n}",
            name=f"e{n}.png",
            size=10,
            category="image",
        )
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill(NOTE)
    page.route("**/live?*", lambda route: route.abort("internetdisconnected"))
    posts: list[str] = []

    def answer_lost(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            route.fetch()  # the server gets it, and decides
            route.abort("internetdisconnected")  # the answer never comes back
        else:
            route.continue_()

    page.route("**/decide", answer_lost)
    page.get_by_role("button", name="Approve").tap()
    page.locator("#request-error").get_by_text(RESENDING).wait_for(timeout=5000)
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    assert len(posts) == 2
    # Both posts carried the two files.
    assert all(post.count("in_evidence=") >= 2 for post in posts)
    decision = Decision.objects.get(form=form)
    assert sorted(f["upload_file_id"] for f in decision.inputs["evidence"]) == [
        "dify-e1",
        "dify-e2",
    ]
    # Shown as the decision made, not refused as another one under its key.
    assert "already decided this form" not in page.content()
    assert page.locator("#request-error").is_hidden()
    assert page.js_errors == [] and page.csp_violations == []


def test_a_decision_whose_post_timed_out_says_so_and_is_sent_again_once(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """Chromium ends a post whose connection timed out (net::ERR_TIMED_OUT) with a `timeout`,
    not an `error`: it is lost all the same, and sent again under the same key."""
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill(NOTE)
    posts: list[str] = []

    def time_out_once(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            route.abort("timedout")
        else:
            route.continue_()

    page.route("**/decide", time_out_once)
    page.get_by_role("button", name="Approve").tap()
    page.locator("#request-error").get_by_text(NO_ANSWER).wait_for(timeout=5000)
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    assert len(posts) == 2
    keys = {
        part for post in posts for part in post.split("&") if part.startswith("submission_key=")
    }
    assert len(keys) == 1
    decision = Decision.objects.get(form=form)
    assert decision.action_id == "approve" and decision.inputs["note"] == NOTE
    assert page.locator("#request-error").is_hidden()
    assert page.js_errors == [] and page.csp_violations == []


def test_a_decision_stalled_on_a_dead_connection_shows_it_waits_then_is_sent_again_once(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """The post reached the server, and its answer never comes (a phone's link gone dead):
    every action waits meanwhile, the one pressed says it is busy; past the form's limit the
    page says it had no answer and sends the decision again, which counts once."""
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    decision_form = page.locator("#decision-form")
    assert decision_form.get_attribute("data-answer-timeout") == "45000"
    # The same limit, shorter for the test.
    page.evaluate(
        "() => document.getElementById('decision-form').setAttribute('data-answer-timeout', '3000')"
    )
    page.locator("textarea[name=in_note]").fill(NOTE)
    # The poll cannot get through either: only the page's own resend can learn what happened.
    page.route("**/live?*", lambda route: route.abort("internetdisconnected"))
    posts: list[str] = []

    def stall_once(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            route.fetch()  # the server gets it, and decides; the answer never comes back
        else:
            route.continue_()

    page.route("**/decide", stall_once)
    approve = decision_form.get_by_role("button", name="Approve")
    reject = decision_form.get_by_role("button", name="Reject")
    reject.tap()
    page.wait_for_function(
        "() => document.querySelector('#decision-form button[value=reject]')"
        ".getAttribute('aria-busy') === 'true'",
        timeout=3000,
    )
    assert approve.is_disabled() and reject.is_disabled()
    assert approve.get_attribute("aria-busy") is None
    screenshot(page, "phone-decision-waiting")
    page.locator("#request-error").get_by_text(NO_ANSWER).wait_for(timeout=10000)
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    assert len(posts) == 2
    keys = {
        part for post in posts for part in post.split("&") if part.startswith("submission_key=")
    }
    assert len(keys) == 1
    decision = Decision.objects.get(form=form)
    assert decision.action_id == "reject" and decision.inputs["note"] == NOTE
    assert page.locator("#request-error").is_hidden()
    assert page.js_errors == [] and page.csp_violations == []


def test_a_decision_edited_after_the_connection_dropped_waits_for_the_tap(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    note = page.locator("textarea[name=in_note]")
    note.fill(NOTE)
    page.route("**/decide", lambda route: route.abort("internetdisconnected"))
    page.get_by_role("button", name="Approve").tap()
    alert = page.locator("#request-error")
    alert.get_by_text(RESENDING).wait_for(timeout=5000)
    note.fill(NOTE + " And apologise.")
    alert.get_by_text(NOT_SENT).wait_for(timeout=3000)
    page.unroute("**/decide")
    page.wait_for_timeout(7000)  # a poll got through: nothing is sent by itself now
    assert not Decision.objects.filter(form=form).exists()
    assert alert.get_by_text(NOT_SENT).is_visible()
    page.get_by_role("button", name="Approve").tap()
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    decision = Decision.objects.get(form=form)
    assert decision.inputs["note"] == NOTE + " And apologise."
    assert alert.is_hidden()
    assert page.js_errors == []


def test_a_claim_and_an_upload_the_connection_dropped_say_so_until_the_reviewer_acts(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)  # a file input "receipt", among others
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.route("**/claim", lambda route: route.abort("internetdisconnected"))
    page.get_by_role("button", name="Take this form").tap()
    alert = page.locator("#request-error")
    alert.get_by_text(NOT_SENT).wait_for(timeout=5000)
    # The poll gets through meanwhile: it stays until the reviewer acts.
    page.wait_for_timeout(7000)
    assert alert.get_by_text(NOT_SENT).is_visible()
    assert Form.objects.get(pk=form.pk).claimed_by_id is None
    alert.get_by_role("button", name="Dismiss").tap()
    assert alert.is_hidden()
    page.route("**/files/receipt", lambda route: route.abort("internetdisconnected"))
    page.locator("input[data-upload=receipt]").set_input_files(
        files=[
            {
                "name": "photo.png",
                "mimeType": "image/png",
                "buffer": b"\x89PNG\r\n\x1a\n" + b"0" * 64,
            }
        ]
    )
    error = page.locator("#file-error-receipt")
    error.get_by_text(
        "photo.png: Not uploaded: the connection dropped. Choose the file again once you are "
        "back online."
    ).wait_for(timeout=5000)
    page.wait_for_timeout(6000)
    assert error.inner_text().startswith("photo.png: Not uploaded")
    assert page.js_errors == []


@pytest.mark.parametrize(
    ("language", "said"),
    [
        (
            "en",
            "a.png, b.png: Not uploaded: the connection dropped. Choose the files again once you "
            "are back online.",
        ),
        (
            "zh-hans",
            "a.png\u3001b.png\uff1a\u672a\u4e0a\u4f20\uff1a\u8fde\u63a5\u5df2\u4e2d\u65ad"
            "\u3002\u6062\u590d\u8054\u7f51\u540e\uff0c\u8bf7\u91cd\u65b0\u9009\u62e9"
            "\u8fd9\u4e9b\u6587\u4ef6\u3002",
        ),
    ],
)
def test_several_files_the_connection_dropped_are_asked_for_again_as_several(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    language: str,
    said: str,
) -> None:
    form = make_form(dify_app)  # a file list "evidence", among others
    page = _phone(chromium, live_server, reviewer, browser_contexts, language=language)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.route("**/files/evidence", lambda route: route.abort("internetdisconnected"))
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    page.locator("input[data-upload=evidence]").set_input_files(
        files=[
            {"name": "a.png", "mimeType": "image/png", "buffer": png},
            {"name": "b.png", "mimeType": "image/png", "buffer": png},
        ]
    )
    error = page.locator("#file-error-evidence")
    error.get_by_text(said).wait_for(timeout=5000)
    assert page.js_errors == []


def test_a_choice_from_a_long_list_survives_the_language_switch(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    centres = [f"CC-{n}000 Centre {n}" for n in range(1, 11)]
    definition = full_definition()
    definition["inputs"] = [
        definition["inputs"][0],
        {
            "type": "select",
            "output_variable_name": "decision",
            "option_source": {"type": "constant", "selector": [], "value": centres},
        },
    ]
    form = make_form(dify_app, definition=definition)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    select = page.locator("select[name=in_decision]")  # more than 6 options: a list
    select.select_option(centres[3])
    page.locator("textarea[name=in_note]").fill(NOTE)
    page.locator("form.lang-switch button[value=zh-hans]").tap()
    page.wait_for_function("() => document.documentElement.lang === 'zh-hans'")
    assert select.input_value() == centres[3]
    assert page.locator("textarea[name=in_note]").input_value() == NOTE
    assert page.locator("#actions-hint").is_hidden()  # nothing missing to decide
    page.locator("form.lang-switch button[value=en]").tap()
    page.wait_for_function("() => document.documentElement.lang === 'en'")
    assert select.input_value() == centres[3]
    assert page.js_errors == []


def test_what_was_typed_comes_back_after_signing_in_again(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
) -> None:
    form = _note_form(dify_app)
    other = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    url = f"{live_server.url}/forms/{form.public_id}/"
    page.goto(url)
    page.locator("textarea[name=in_note]").fill(NOTE)
    Session.objects.all().delete()  # the login expired
    page.locator("#reload-notice").wait_for(state="visible", timeout=15000)
    page.get_by_role("button", name="Reload the page").tap()
    page.wait_for_url("**/accounts/login/**", timeout=15000)
    # Not on another form of theirs.
    page.goto(f"{live_server.url}/accounts/login/?next=/forms/{other.public_id}/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("pw-alice-123")
    page.get_by_role("button", name="Log in").tap()
    page.wait_for_url(f"**/forms/{other.public_id}/", timeout=15000)
    assert page.locator("textarea[name=in_note]").input_value() == "resolved default"
    assert page.locator("#restored-note").count() == 0
    # Back on the form they typed in: it is there, and the page says so.
    page.goto(url)
    assert page.locator("textarea[name=in_note]").input_value() == NOTE
    page.locator("#restored-note").get_by_text(
        "What you typed before you were signed out is filled in again."
    ).wait_for(timeout=3000)
    # Once: a later load of the page draws the form as it is.
    page.reload()
    assert page.locator("textarea[name=in_note]").input_value() == "resolved default"
    assert page.js_errors == [] and page.csp_violations == []


@pytest.mark.parametrize("why", ["signed_out", "stale_token"])
def test_a_decision_refused_for_an_outdated_page_holds_what_was_typed_for_its_reload(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    why: str,
) -> None:
    """The refusal's own "Reload the page" link, taken before any poll noticed: what was typed
    comes back after it (signing in again first when the login ended)."""
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    url = f"{live_server.url}/forms/{form.public_id}/"
    page.goto(url)
    # No poll learns of it first: only the decision's refusal tells the page.
    page.route("**/live?*", lambda route: route.abort("internetdisconnected"))
    page.locator("textarea[name=in_note]").fill(NOTE)
    if why == "signed_out":
        Session.objects.all().delete()  # signed out in another tab
        said = "Nothing was sent: you are signed out."
    else:
        # Signed in again in another tab: the token the page was drawn with is no longer valid.
        page.context.add_cookies([{"name": "csrftoken", "value": "x" * 32, "url": live_server.url}])
        said = "Nothing was sent: this page is out of date"
    page.get_by_role("button", name="Approve").tap()
    alert = page.locator("#request-error")
    alert.get_by_text(said).wait_for(timeout=5000)
    held = page.evaluate("() => sessionStorage.getItem('inbox:signed-out')") or ""
    assert NOTE in held
    alert.get_by_role("link", name="Reload the page").tap()
    if why == "signed_out":
        page.wait_for_url("**/accounts/login/**", timeout=15000)
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("pw-alice-123")
        page.get_by_role("button", name="Log in").tap()
    page.wait_for_url(url, timeout=15000)
    # Drawn anew (the address is the same when the page reloads straight back to it).
    page.locator("#restored-note").get_by_text(
        "What you typed before you were signed out is filled in again."
    ).wait_for(timeout=15000)
    assert page.locator("textarea[name=in_note]").input_value() == NOTE
    assert not Decision.objects.filter(form=form).exists()
    assert page.js_errors == [] and page.csp_violations == []


@pytest.mark.parametrize(
    ("language", "said"),
    [
        ("en", "reload the page to sign in again. Reload the page"),
        # No space between a Chinese sentence and the link after it.
        (
            "zh-hans",
            "\u7136\u540e\u5237\u65b0\u9875\u9762\u91cd\u65b0\u767b\u5f55\u3002\u5237\u65b0\u9875\u9762",
        ),
    ],
)
def test_the_signed_out_refusal_s_reload_link_reads_in_the_page_s_language(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    language: str,
    said: str,
) -> None:
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts, language=language)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.route("**/live?*", lambda route: route.abort("internetdisconnected"))
    Session.objects.all().delete()
    page.locator("#decision-form .actions button[value=approve]").tap()
    text = page.locator("#request-error-text")
    text.locator("a[href]").wait_for(timeout=5000)
    assert said in text.inner_text()
    assert page.js_errors == []


def test_what_was_typed_is_not_given_to_someone_else_signing_in(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
) -> None:
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    url = f"{live_server.url}/forms/{form.public_id}/"
    page.goto(url)
    page.locator("textarea[name=in_note]").fill(NOTE)
    Session.objects.all().delete()
    page.locator("#reload-notice").wait_for(state="visible", timeout=15000)
    page.get_by_role("button", name="Reload the page").tap()
    page.wait_for_url("**/accounts/login/**", timeout=15000)
    # Someone else signs in there, and goes to the inbox first: nothing is left for them to
    # read in the tab either.
    page.goto(f"{live_server.url}/accounts/login/?next=/")
    assert "in_note" in (page.evaluate("() => sessionStorage.getItem('inbox:signed-out')") or "")
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password").fill("pw-bob-123")
    page.get_by_role("button", name="Log in").tap()
    page.wait_for_url(f"{live_server.url}/", timeout=15000)
    assert page.evaluate("() => sessionStorage.getItem('inbox:signed-out')") is None
    page.goto(url)
    assert page.locator("textarea[name=in_note]").input_value() == "resolved default"


def test_signing_out_leaves_nothing_typed_in_the_tab(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
) -> None:
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.evaluate(
        "() => { sessionStorage.setItem('inbox:signed-out', '{}');"
        " sessionStorage.setItem('inbox:language-switch', '{}'); }"
    )
    page.get_by_role("button", name="Log out").tap()
    page.wait_for_url("**/accounts/login/**", timeout=15000)
    assert page.evaluate(
        "() => [sessionStorage.getItem('inbox:signed-out'),"
        " sessionStorage.getItem('inbox:language-switch')]"
    ) == [None, None]


def test_after_a_decision_on_a_phone_the_runs_next_form_is_right_under_it(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    # A long record: the run panel (which links the next form too) ends far below.
    definition = full_definition()
    definition["inputs"] = definition["inputs"][:1]
    definition["form_content"] = (
        "\n\n".join(f"Paragraph {n}: what the editor checked, at length." for n in range(25))
        + "\n\n{{#$output.note#}}"
    )
    first = make_form(dify_app, definition=definition, node_title="Editor review")
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{first.public_id}/")
    page.get_by_role("button", name="Approve").tap()
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=10000)
    # Delivered; the run goes on and pauses at its next form.
    Decision.objects.filter(form=first).update(status=Decision.Status.DELIVERED)
    Form.objects.filter(pk=first.pk).update(
        status=Form.Status.SUBMITTED, decided_at=timezone.now(), form_token=""
    )
    run = Run.objects.get(pk=first.run_id)
    following = make_form(dify_app, run=run, node_title="Legal check")
    run.save()  # its version changes
    link = page.locator("#next-near").get_by_role("link", name="Legal check")
    link.wait_for(timeout=15000)
    assert link.get_attribute("href") == f"/forms/{following.public_id}/"
    # On the screen with the submitted card, well above the run panel's own link.
    box = link.bounding_box()
    assert box is not None and box["y"] + box["height"] <= PHONE[1]
    card = page.locator(".state-card").bounding_box()
    assert card is not None and card["y"] < box["y"]
    assert page.locator("#next-near nav").get_attribute("aria-labelledby") == "next-near-title"
    screenshot(page, "phone-next-form-under-submitted")
    link.tap()
    page.wait_for_url(f"**/forms/{following.public_id}/")
    assert page.js_errors == [] and page.csp_violations == []


def test_on_a_wide_screen_the_next_form_is_in_the_run_panel_only(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    first = _note_form(dify_app, status=Form.Status.SUBMITTED, form_token="")
    make_form(dify_app, run=first.run, node_title="Legal check")
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{first.public_id}/")
    assert page.get_by_role("link", name="Legal check").count() == 1
    assert page.locator("#run-panel").get_by_role("link", name="Legal check").is_visible()
    # The form after it in the reviewer's list is offered on every screen, under the card.
    following = page.get_by_role("link", name="Next form in your list")
    assert following.is_visible()
    box, card = following.bounding_box(), page.locator(".state-card").bounding_box()
    assert box is not None and card is not None and card["y"] < box["y"]
    assert following.evaluate("link => link.checkVisibility()")


def test_a_double_enter_on_a_form_someone_else_holds_asks_and_decides_nothing(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
) -> None:
    form = _note_form(dify_app)
    form.claim(reviewer)  # Alice took it
    page = logged_in_page(chromium, live_server, other_reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    approve = page.locator("#decision-form .actions button[value=approve]")
    approve.focus()
    page.keyboard.press("Enter")
    question = page.locator("#confirm-taken")
    question.wait_for(timeout=10000)
    # The question holds the focus, read from its text: the key pressed again answers nothing.
    page.wait_for_function("() => document.activeElement.id === 'confirm-taken'")
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    assert not Decision.objects.filter(form=form).exists()
    assert "is handling this form. Decide anyway?" in question.inner_text()
    # Escape (or "Don't decide") takes the question away and gives the focus back.
    page.keyboard.press("Escape")
    assert question.count() == 0
    assert page.evaluate("document.activeElement.value") == "approve"
    approve.press("Enter")
    question.wait_for(timeout=10000)
    page.get_by_role("button", name="Don't decide").click()
    assert question.count() == 0 and not Decision.objects.filter(form=form).exists()
    # Answered yes: one decision.
    approve.press("Enter")
    page.get_by_role("button", name="Decide anyway: Approve").click()
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=10000)
    assert Decision.objects.filter(form=form).count() == 1
    assert page.js_errors == [] and page.csp_violations == []


def unavailable(status: int) -> str:
    return (
        f"The server is unavailable for the moment ({status}), so your decision may not have "
        "been taken. Sending it again once it answers\u2026 It will count only once. What you "
        "typed is kept."
    )


def test_a_decision_the_server_was_unavailable_for_stays_said_and_is_sent_again_once(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """The database down (503 with Retry-After), then a proxy's 502 as the web restarts: the
    decision is sent again under the same key, not before the server's wait and only once the
    poll gets through; the poll failing meanwhile, then answering, never takes the alert away."""
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill(NOTE)
    events: list[tuple[str, int, float]] = []
    posts: list[str] = []

    def decide(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            events.append(("post", 503, time.monotonic()))
            route.fulfill(
                status=503,
                headers={"Retry-After": "12"},
                content_type="text/html",
                body="<h1>x</h1>",
            )
        elif len(posts) == 2:
            events.append(("post", 502, time.monotonic()))
            route.fulfill(status=502, content_type="text/html", body="<h1>502 Bad Gateway</h1>")
        else:
            events.append(("post", 200, time.monotonic()))
            route.continue_()

    def poll(route: Any) -> None:
        # The first poll after the decision meets the database down too.
        if posts and not any(kind == "poll" for kind, _, _ in events):
            events.append(("poll", 503, time.monotonic()))
            route.fulfill(status=503, content_type="text/html", body="<h1>x</h1>")
        else:
            if posts:
                events.append(("poll", 200, time.monotonic()))
            route.continue_()

    page.route("**/live?*", poll)
    page.route("**/decide", decide)
    page.get_by_role("button", name="Approve").tap()
    alert = page.locator("#request-error")
    alert.get_by_text(unavailable(503)).wait_for(timeout=5000)
    # The poll fails, then answers: the alert stays as it was, and nothing is sent yet (the
    # server asked for 12 s).
    deadline = time.monotonic() + 15
    while not any(kind == "poll" and status == 200 for kind, status, _ in events):
        assert time.monotonic() < deadline, events
        page.wait_for_timeout(200)
    page.wait_for_timeout(300)
    assert alert.get_by_text(unavailable(503)).is_visible()
    assert page.locator("textarea[name=in_note]").input_value() == NOTE
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=40000)
    assert [status for kind, status, _ in events if kind == "post"] == [503, 502, 200]
    first, second, third = (at for kind, _, at in events if kind == "post")
    assert second - first >= 12
    # Each sent again right after a poll that got through.
    for sent in (second, third):
        before = [e for e in events if e[2] < sent]
        assert before[-1][:2] == ("poll", 200), events
    keys = {
        part for post in posts for part in post.split("&") if part.startswith("submission_key=")
    }
    assert len(keys) == 1
    decision = Decision.objects.get(form=form)
    assert decision.action_id == "approve" and decision.inputs["note"] == NOTE
    assert alert.is_hidden()
    assert page.js_errors == [] and page.csp_violations == []


def test_a_decision_the_server_failed_with_a_500_stays_said_and_waits_for_the_tap(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """A 500 is a fault of the server's, not a moment's absence: the alert says to try again and
    stays through the poll failing and answering again; nothing is sent by itself."""
    form = _note_form(dify_app)
    page = _phone(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill(NOTE)
    posts: list[str] = []
    polls: list[int] = []

    def decide(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            route.fulfill(status=500, content_type="text/html", body="<h1>Server Error</h1>")
        else:
            route.continue_()

    def poll(route: Any) -> None:
        if posts and not polls:
            polls.append(503)
            route.fulfill(status=503, content_type="text/html", body="<h1>x</h1>")
        else:
            if posts:
                polls.append(200)
            route.continue_()

    page.route("**/live?*", poll)
    page.route("**/decide", decide)
    page.get_by_role("button", name="Approve").tap()
    alert = page.locator("#request-error")
    said = (
        "The server ran into a problem (500). What you typed is still here: try again in a moment."
    )
    alert.get_by_text(said).wait_for(timeout=5000)
    deadline = time.monotonic() + 20
    while polls.count(200) < 2:
        assert time.monotonic() < deadline, polls
        page.wait_for_timeout(200)
    page.wait_for_timeout(300)
    assert alert.get_by_text(said).is_visible()
    assert len(posts) == 1
    assert not Decision.objects.filter(form=form).exists()
    assert page.locator("textarea[name=in_note]").input_value() == NOTE
    # The reader's tap sends it, under the page's same key.
    page.get_by_role("button", name="Approve").tap()
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    keys = {
        part for post in posts for part in post.split("&") if part.startswith("submission_key=")
    }
    assert len(posts) == 2 and len(keys) == 1
    assert Decision.objects.get(form=form).inputs["note"] == NOTE
    assert alert.is_hidden()
    assert page.js_errors == [] and page.csp_violations == []


UNAVAILABLE_EDITED = {
    "en": (
        "The server was unavailable (503), so your decision may not have been taken. You have "
        "changed the form since, so it is not sent again by itself: tap the button again to send "
        "it as it is now."
    ),
    "zh-hans": (
        "服务器当时无法使用（503），您的决定可能未被接收。您之后修改了表单，"  # noqa: RUF001
        "因此不会再自动重新发送：请再次点按该按钮，发送表单现在的内容。"  # noqa: RUF001
    ),
}
UNAVAILABLE_ZH = (
    "服务器暂时无法使用（503），您的决定可能未被接收。服务器恢复响应后将重新发送……"  # noqa: RUF001
    "只会计为一次。您输入的内容已保留。"
)


def _polls_after(page: Any, polls: list[float], since: float, count: int) -> None:
    """Waits for `count` of the page's polls answered after `since` (time.monotonic())."""
    deadline = time.monotonic() + 20
    while len([at for at in polls if at > since]) < count:
        assert time.monotonic() < deadline, polls
        page.wait_for_timeout(200)


def _keys(posts: list[str]) -> set[str]:
    return {
        part for post in posts for part in post.split("&") if part.startswith("submission_key=")
    }


def _note_typed(
    chromium: Any, live_server: Any, contexts: list[Any], app: DifyApp, user: User, **kw: Any
) -> tuple[Form, Any]:
    """A form with a note, open on `user`'s phone, NOTE typed in it."""
    form = _note_form(app)
    page = _phone(chromium, live_server, user, contexts, **kw)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    page.locator("textarea[name=in_note]").fill(NOTE)
    return form, page


def _record_polls(page: Any) -> list[float]:
    """When each of the page's polls was answered (time.monotonic()), from now on."""
    polls: list[float] = []

    def poll(route: Any) -> None:
        route.continue_()
        polls.append(time.monotonic())

    page.route("**/live?*", poll)
    return polls


def _unavailable(route: Any, retry_after: str) -> None:
    route.fulfill(
        status=503,
        headers={"Retry-After": retry_after},
        content_type="text/html",
        body="<h1>x</h1>",
    )


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_a_decision_edited_while_its_resend_after_a_503_waits_is_not_sent_by_itself(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    language: str,
) -> None:
    """The server said 503 (not a dropped connection): changed while the page waits to send it
    again, the decision is not sent by itself at the next poll (that could send a note half
    typed under the action pressed for the old one), and the alert says so in those words,
    not that the connection dropped; the reviewer's tap sends what they see."""
    form, page = _note_typed(
        chromium, live_server, browser_contexts, dify_app, reviewer, language=language
    )
    note = page.locator("textarea[name=in_note]")
    posts: list[str] = []

    def decide(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            _unavailable(route, "2")
        else:
            route.continue_()

    polls = _record_polls(page)
    page.route("**/decide", decide)
    page.get_by_role("button", name="Approve").tap()
    alert = page.locator("#request-error")
    alert.get_by_text(unavailable(503) if language == "en" else UNAVAILABLE_ZH).wait_for(
        timeout=5000
    )
    note.fill(NOTE + " And apologise.")
    alert.get_by_text(UNAVAILABLE_EDITED[language]).wait_for(timeout=3000)
    assert "connection dropped" not in alert.inner_text() and "连接" not in alert.inner_text()
    # Past the server's wait, the poll gets through twice: nothing is sent by itself.
    _polls_after(page, polls, time.monotonic() + 2, 2)
    page.wait_for_timeout(300)
    assert len(posts) == 1
    assert not Decision.objects.filter(form=form).exists()
    assert alert.get_by_text(UNAVAILABLE_EDITED[language]).is_visible()
    page.get_by_role("button", name="Approve").tap()
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    assert len(posts) == 2 and len(_keys(posts)) == 1
    assert Decision.objects.get(form=form).inputs["note"] == NOTE + " And apologise."
    assert alert.is_hidden()
    assert page.js_errors == [] and page.csp_violations == []


def test_a_decision_edited_while_its_resend_is_out_is_not_sent_again_by_itself(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """Changed while the page's own resend is on its way, which the server answers 503 again:
    the page does not send the changed form by itself next time; it waits for the tap."""
    form, page = _note_typed(chromium, live_server, browser_contexts, dify_app, reviewer)
    note = page.locator("textarea[name=in_note]")
    posts: list[str] = []
    held: list[Any] = []

    def decide(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            _unavailable(route, "1")
        elif len(posts) == 2:
            held.append(route)  # answered below, once the reviewer changed the form
        else:
            route.continue_()

    polls = _record_polls(page)
    page.route("**/decide", decide)
    page.get_by_role("button", name="Approve").tap()
    alert = page.locator("#request-error")
    alert.get_by_text(unavailable(503)).wait_for(timeout=5000)
    deadline = time.monotonic() + 15
    while not held:
        assert time.monotonic() < deadline
        page.wait_for_timeout(100)
    assert "note=Refund" in posts[1] and "apologise" not in posts[1]
    note.fill(NOTE + " And apologise.")
    _unavailable(held[0], "1")
    alert.get_by_text(UNAVAILABLE_EDITED["en"]).wait_for(timeout=5000)
    _polls_after(page, polls, time.monotonic() + 1, 2)
    page.wait_for_timeout(300)
    assert len(posts) == 2
    assert not Decision.objects.filter(form=form).exists()
    page.get_by_role("button", name="Approve").tap()
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    assert len(posts) == 3 and len(_keys(posts)) == 1
    assert Decision.objects.get(form=form).inputs["note"] == NOTE + " And apologise."
    assert page.js_errors == [] and page.csp_violations == []


SERVER_ERROR = {
    "en": "The server ran into a problem (500). What you typed is still here: try again in a moment.",
    "zh-hans": "服务器出现问题（500）。您输入的内容仍在此处，请稍后再试。",  # noqa: RUF001
}
DECIDED = {
    "en": "This form has been decided: {who} chose \u201c{action}\u201d. There is nothing more to send.",
    "zh-hans": "此表单已有决定：{who} 选择了\u201c{action}\u201d。无需再发送任何内容。",  # noqa: RUF001
}


@pytest.mark.parametrize(("language", "whose"), [("en", "own"), ("zh-hans", "other")])
def test_a_500_gives_way_to_the_decision_the_poll_shows(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
    language: str,
    whose: str,
) -> None:
    """A 500 says to try again; once the poll shows the form decided (this very decision, which
    the server stored before it failed, or Bob's), the alert says so, by whom and with what,
    instead of inviting a try that can no longer be made."""
    form, page = _note_typed(
        chromium, live_server, browser_contexts, dify_app, reviewer, language=language
    )
    posts: list[str] = []
    held: list[Any] = []  # the polls, held until the 500 was said

    def decide(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if whose == "own":
            route.fetch()  # the server stores it, then fails
        route.fulfill(status=500, content_type="text/html", body="<h1>Server Error</h1>")

    def poll(route: Any) -> None:
        if posts:
            held.append(route)
        else:
            route.continue_()

    page.route("**/live?*", poll)
    page.route("**/decide", decide)
    page.get_by_role("button", name="Approve").tap()
    alert = page.locator("#request-error")
    alert.get_by_text(SERVER_ERROR[language]).wait_for(timeout=5000)
    page.unroute("**/live?*")
    for route in held:
        route.continue_()
    if whose == "other":
        Decision.objects.create(form=form, action_id="reject", reviewer=other_reviewer)
        Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTING)
        said = DECIDED[language].format(who="Bob", action="Reject")
    else:
        assert Decision.objects.get(form=form).inputs["note"] == NOTE
        said = DECIDED[language].format(who="Alice", action="Approve")
    alert.get_by_text(said).wait_for(timeout=15000)
    assert page.locator("#decision-form").count() == 0
    assert SERVER_ERROR[language] not in alert.inner_text()
    # The form reaches Dify: the body moves on, the alert stays as it is, said once.
    Decision.objects.filter(form=form).update(status=Decision.Status.DELIVERED)
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTED, form_token="")
    page.wait_for_selector(".state-submitted", timeout=15000)
    page.wait_for_timeout(300)
    assert alert.locator("#request-error-text").inner_text() == said
    assert len(posts) == 1 and Decision.objects.filter(form=form).count() == 1
    assert page.js_errors == [] and page.csp_violations == []


def test_a_decision_edited_after_its_post_got_no_answer_says_so_and_waits_for_the_tap(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    """No answer in time (not a dropped connection): changed before it is sent again, the
    decision waits for the tap, and the alert still says the server did not answer."""
    form, page = _note_typed(chromium, live_server, browser_contexts, dify_app, reviewer)
    note = page.locator("textarea[name=in_note]")
    posts: list[str] = []

    def time_out_once(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            route.abort("timedout")
        else:
            route.continue_()

    page.route("**/decide", time_out_once)
    page.get_by_role("button", name="Approve").tap()
    alert = page.locator("#request-error")
    alert.get_by_text(NO_ANSWER).wait_for(timeout=5000)
    note.fill(NOTE + " And apologise.")
    alert.get_by_text(
        "The server did not answer in time, so your decision may not have arrived. You have "
        "changed the form since, so it is not sent again by itself: tap the button again to "
        "send it as it is now."
    ).wait_for(timeout=3000)
    page.wait_for_timeout(4000)  # past the resend's back-off: nothing is sent by itself
    assert len(posts) == 1 and not Decision.objects.filter(form=form).exists()
    page.get_by_role("button", name="Approve").tap()
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=15000)
    assert len(posts) == 2 and len(_keys(posts)) == 1
    assert Decision.objects.get(form=form).inputs["note"] == NOTE + " And apologise."
    assert page.js_errors == [] and page.csp_violations == []
