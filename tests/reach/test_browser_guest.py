"""A guest with no account answers from the emailed link, with a file, and the run goes on; a
guest whose link lapsed asks for a new one from its page; a guest whose request is refused is
told why in the page, in its language, and keeps what they typed.

Everything is real: a run started on the Dify simulator, the follower capturing its pause,
routing and the email (Celery tasks run in this process so the email lands in Django's locmem
outbox), the guest's page in Chromium, the upload to Dify, the delivery, and the follower
reading the run to its end.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core import mail
from django.utils import timezone

from inbox import notify
from inbox.celery import app as celery_app
from inbox.models import Decision, DifyApp, Form, Route, RouteRecipient, Run
from inbox.runs import start_run
from inbox.simulator.testing import sample_inputs
from tests.capture.conftest import FollowerThread, follower  # noqa: F401 - fixture
from tests.conftest import wait_until
from tests.reach.conftest import GUEST, GUEST_ZH
from tests.reach.factories import make_form
from tests.review.browser import (  # noqa: F401 - fixture
    CHROMIUM_ARGS,
    browser_contexts,
    chromium,
    csp_violations,
    screenshot,
)

pytestmark = pytest.mark.browser

LINK = re.compile(r"^(https?://\S+/r/\S+/)$", re.MULTILINE)


@pytest.fixture
def tasks_in_process() -> Iterator[None]:
    """Run Celery tasks where they are queued: the email task after the capture commits (in
    the follower's thread), the delivery after the guest's decision commits (in the live
    server's thread). The tasks are the production ones; only the broker hop is skipped."""
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = before


def test_a_guest_answers_with_a_file_from_the_emailed_link(
    live_server: Any,
    settings: Any,
    simulator: Any,
    follower: FollowerThread,  # noqa: F811
    chromium: Any,  # noqa: F811
    tasks_in_process: None,
    tmp_path: Path,
) -> None:
    settings.INBOX_BASE_URL = live_server.url
    app = DifyApp.objects.create(
        name="contract-review",
        base_url=simulator.base_url,
        api_key=simulator.api_key("contract-review"),
    )
    route = Route.objects.create(app=app, name="legal", allow_guests=True, reminders="")
    RouteRecipient.objects.create(route=route, email=GUEST, language="en")

    run = start_run(
        app,
        inputs=sample_inputs(simulator.apps["contract-review"]),
        dify_user="inbox-guest-e2e",
        source="ui",
    )
    form: Form = wait_until(
        lambda: run.forms.filter(
            status=Form.Status.PENDING, definition_fetched_at__isnull=False
        ).first(),
        timeout=20,
    )
    message = wait_until(lambda: next((m for m in mail.outbox if m.to == [GUEST]), None))
    assert message.subject == "Decision needed: Legal review (contract-review)"
    [link] = LINK.findall(message.body)
    assert link.startswith(live_server.url) and form.form_token not in message.body

    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    try:
        page = context.new_page()
        page.set_default_timeout(15000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        refused = csp_violations(page)
        page.goto(link)
        page.get_by_role("heading", name="Legal review").wait_for()
        page.locator('input[name="in_reviewer"][value="Jonas Weber (Privacy)"]').check()
        page.locator('input[name="in_risk_level"][value="medium"]').check()
        contract = tmp_path / "signed-contract.pdf"
        contract.write_bytes(b"%PDF-1.4\n% signed by both parties\n")
        page.locator('input[data-upload="signed_contract"]').set_input_files(str(contract))
        page.locator("#files-signed_contract .file-chip").wait_for()
        assert "signed-contract.pdf" in page.locator("#files-signed_contract").inner_text()
        page.get_by_role("button", name="Approve for signature").click()
        page.get_by_text(GUEST).first.wait_for()
        screenshot(page, "reach-guest-decided")
        assert errors == []
        assert refused == []
    finally:
        context.close()

    decision = wait_until(
        lambda: Decision.objects.filter(form=form, status=Decision.Status.DELIVERED).first()
    )
    assert decision.guest_email == GUEST and decision.reviewer is None
    assert decision.inputs["risk_level"] == "medium"
    upload = form.uploads.get()
    assert decision.inputs["signed_contract"]["upload_file_id"] == upload.upload_file_id
    assert upload.guest_email == GUEST
    # The run went on in Dify past the form, and the follower saw it to its end.
    finished = wait_until(
        lambda: Run.objects.filter(pk=run.pk, status__in=Run.FINAL_STATUSES).first(), timeout=20
    )
    assert finished.status == "succeeded"
    assert finished.outputs["decision"] == "approve"
    assert finished.outputs["risk_level"] == "medium"
    assert form.recipients.get(email=GUEST).link_used_at is not None


def test_a_guest_with_a_lapsed_link_asks_for_a_new_one_in_the_page(
    live_server: Any,
    settings: Any,
    chromium: Any,  # noqa: F811
    reach_route: Route,
    reach_app: DifyApp,
) -> None:
    settings.INBOX_BASE_URL = live_server.url
    settings.INBOX_LINK_MAX_AGE_SECONDS = 60
    form = make_form(reach_app, expires_in=None)
    with mock.patch("time.time", return_value=time.time() - 120):
        lapsed = notify.link_path(notify.link_token(form.recipients.get(email=GUEST)))

    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    try:
        page = context.new_page()
        page.set_default_timeout(15000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        refused = csp_violations(page)
        page.goto(live_server.url + lapsed)
        page.get_by_role("heading", name="This link has expired.").wait_for()
        url = page.url
        page.get_by_role("button", name="Email me a new link").click()
        outcome = page.locator("#renew .flash")
        outcome.get_by_text("We sent a new link to g***@example.net.").wait_for()
        screenshot(page, "reach-lapsed-link-renewed")
        # Swapped in place by htmx (the same page, no reload), the button still there.
        assert page.url == url
        page.get_by_role("button", name="Email me a new link").click()
        outcome.get_by_text("so none was sent now").wait_for()
        assert errors == [] and refused == []
    finally:
        context.close()

    assert [m.to for m in mail.outbox] == [[GUEST]]
    [link] = LINK.findall(mail.outbox[0].body)
    assert link.startswith(live_server.url) and link != live_server.url + lapsed


def guest_page(browser: Any, contexts: list[Any]) -> Any:
    """A page in a fresh English browser, with what it throws and what the policy refuses."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    contexts.append(context)
    page = context.new_page()
    page.set_default_timeout(15000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    page.csp_violations = csp_violations(page)
    return page


def next_poll(page: Any) -> None:
    """Wait for the page's live poll to answer: the next one is seconds away, so what the test
    does now reaches the server through the button, not through the poll."""
    with page.expect_response(lambda response: "/live" in response.url):
        pass


def test_a_guest_whose_form_closed_meanwhile_is_told_why_and_keeps_their_note(
    live_server: Any,
    chromium: Any,  # noqa: F811
    browser_contexts: list[Any],  # noqa: F811
    reach_route: Route,
    reach_app: DifyApp,
) -> None:
    form = make_form(reach_app, expires_in=dt.timedelta(hours=5))
    # The email was Chinese: so is the page, and so is its refusal, in an English browser.
    link = notify.link_path(notify.link_token(form.recipients.get(email=GUEST_ZH)))
    page = guest_page(chromium, browser_contexts)
    page.goto(live_server.url + link)
    note = page.locator("textarea[name=in_note]")
    note.fill("Approved, but pay it from the Q3 budget.")
    next_poll(page)
    Form.objects.filter(pk=form.pk).update(expiration_time=timezone.now() - dt.timedelta(seconds=1))
    with page.expect_response(lambda response: response.url.endswith("/decide")) as answer:
        page.get_by_role("button", name="Approve").click()
    assert answer.value.status == 410
    # The page's content is the closed link's, as a reload would show it: nothing to press.
    page.locator("#main h1").get_by_text("此链接已过期。").wait_for()
    assert page.locator("#decision-form").count() == 0
    assert page.locator("#live").count() == 0  # no poll asks again
    assert page.title() == "此链接已过期 · 审批收件箱"
    # Read out, and the reader starts there.
    page.wait_for_function(
        "() => document.getElementById('announcer').textContent === '此链接已过期。'"
    )
    assert page.evaluate("document.activeElement.id") == "main"
    # What the guest typed is not lost: kept beside the reason, to copy.
    kept = page.locator(".kept-text textarea")
    assert kept.input_value() == "Approved, but pay it from the Q3 budget."
    assert kept.get_attribute("readonly") is not None
    heading = page.locator(".kept-text h2").inner_text()
    assert heading == "未发送。您输入的内容保留在这里，方便您复制。"  # noqa: RUF001
    screenshot(page, "reach-guest-form-closed-meanwhile")
    assert not Decision.objects.exists()
    assert page.js_errors == [] and page.csp_violations == []


def test_a_guest_page_refused_by_the_csrf_check_says_to_reload_and_keeps_the_note(
    live_server: Any,
    chromium: Any,  # noqa: F811
    browser_contexts: list[Any],  # noqa: F811
    guest_link: str,
) -> None:
    page = guest_page(chromium, browser_contexts)
    page.goto(live_server.url + guest_link)
    page.locator("textarea[name=in_note]").fill("ok by me")
    page.locator(".url-input").fill("https://files.example.org/receipt.pdf")
    # The browser's token changed since the page was drawn (signed in elsewhere, say).
    page.context.add_cookies([{"name": "csrftoken", "value": "x" * 32, "url": live_server.url}])
    with page.expect_response(lambda response: response.url.endswith("/decide")) as answer:
        page.get_by_role("button", name="Approve").click()
    assert answer.value.status == 403
    alert = page.get_by_role("alert")
    alert.get_by_text("Nothing was sent: this page is out of date").wait_for()
    assert alert.get_by_role("link", name="Reload the page").get_attribute("href") == guest_link
    # The page stays as it was, with what was typed, and its button may be pressed again.
    assert page.locator("textarea[name=in_note]").input_value() == "ok by me"
    assert page.get_by_role("button", name="Approve").is_enabled()
    assert not Decision.objects.exists()
    assert page.js_errors == [] and page.csp_violations == []


def test_asking_for_a_new_link_too_often_says_when_to_try_again(
    live_server: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    chromium: Any,  # noqa: F811
    browser_contexts: list[Any],  # noqa: F811
    reach_route: Route,
    reach_app: DifyApp,
) -> None:
    settings.INBOX_BASE_URL = live_server.url
    settings.INBOX_LINK_MAX_AGE_SECONDS = 60
    # The page and one press; the second press is one request too many.
    settings.INBOX_GUEST_RATE_PER_LINK = 2
    monkeypatch.setattr("inbox.views_reach._window", lambda: 12345)
    form = make_form(reach_app, expires_in=None)
    with mock.patch("time.time", return_value=time.time() - 120):
        lapsed = notify.link_path(notify.link_token(form.recipients.get(email=GUEST)))
    page = guest_page(chromium, browser_contexts)
    page.goto(live_server.url + lapsed)
    button = page.get_by_role("button", name="Email me a new link")
    button.click()
    page.locator("#renew .flash").get_by_text("We sent a new link to g***@example.net.").wait_for()
    with page.expect_response(lambda response: response.url.endswith("/renew")) as answer:
        button.click()
    assert answer.value.status == 429
    alert = page.get_by_role("alert")
    alert.get_by_text("Too many requests. Wait a minute, then try again.").wait_for()
    screenshot(page, "reach-renew-rate-limited")
    # The page is as it was: the last outcome, and the button for later.
    assert page.locator("#renew .flash").inner_text().startswith("We sent a new link")
    assert button.is_enabled()
    page.get_by_role("button", name="Dismiss").click()
    assert page.locator("#request-error").is_hidden()
    assert len(mail.outbox) == 1
    assert page.js_errors == [] and page.csp_violations == []


def test_a_guest_switches_the_page_s_language(
    live_server: Any,
    chromium: Any,  # noqa: F811
    browser_contexts: list[Any],  # noqa: F811
    guest_link: str,
) -> None:
    page = guest_page(chromium, browser_contexts)
    page.goto(live_server.url + guest_link)
    assert page.evaluate("document.documentElement.lang") == "en"
    note = page.locator("textarea[name=in_note]")
    note.fill("Approved, but pay it from the Q3 budget.")
    # A plain form post from a page whose address is a credential: the CSRF check takes it
    # (the page keeps its address out of other sites' Referer headers, not out of its own).
    with page.expect_navigation():
        page.get_by_role("button", name="简体中文").click()
    assert page.evaluate("document.documentElement.lang") == "zh-hans"
    assert page.url == live_server.url + guest_link
    assert page.locator("#decision-form").count() == 1
    # What was typed came along, and counts as typed: a reload would lose it.
    assert note.input_value() == "Approved, but pay it from the Q3 budget."
    assert page.evaluate("sessionStorage.getItem('inbox:language-switch')") is None
    # Back again, by the keyboard, still with the note.
    page.get_by_role("button", name="English").focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.evaluate("document.documentElement.lang") == "en"
    assert note.input_value() == "Approved, but pay it from the Q3 budget."
    # Nothing typed, nothing held: a page drawn afresh shows what the server draws.
    note.fill("")
    with page.expect_navigation():
        page.get_by_role("button", name="简体中文").click()
    assert note.input_value() == ""
    assert page.js_errors == [] and page.csp_violations == []


def test_a_guest_whose_form_closed_while_switching_language_keeps_their_note(
    live_server: Any,
    chromium: Any,  # noqa: F811
    browser_contexts: list[Any],  # noqa: F811
    guest_recipient: Any,
    guest_link: str,
) -> None:
    page = guest_page(chromium, browser_contexts)
    page.goto(live_server.url + guest_link)
    page.locator("textarea[name=in_note]").fill("Pay it from the Q3 budget.")
    # The form expired while the guest read: the page drawn in Chinese is the closed link's.
    Form.objects.filter(pk=guest_recipient.form_id).update(
        expiration_time=timezone.now() - dt.timedelta(seconds=1)
    )
    with page.expect_navigation():
        page.get_by_role("button", name="简体中文").click()
    page.locator("#main h1").get_by_text("此链接已过期。").wait_for()
    assert page.locator("#decision-form").count() == 0
    kept = page.locator(".kept-text textarea")
    assert kept.input_value() == "Pay it from the Q3 budget."
    assert page.locator(".kept-text h2").inner_text().startswith("未发送。")
    assert page.js_errors == [] and page.csp_violations == []


def test_a_guest_decision_the_proxy_answered_504_stays_said_and_is_sent_again_once(
    live_server: Any,
    chromium: Any,  # noqa: F811
    browser_contexts: list[Any],  # noqa: F811
    guest_link: str,
) -> None:
    """As a reviewer's page does: a 504 (the proxy gave up waiting) is said as not sent yet, the
    poll failing then answering leaves it said, and the decision goes again, counted once."""
    page = guest_page(chromium, browser_contexts)
    page.goto(live_server.url + guest_link)
    page.locator("textarea[name=in_note]").fill("ok by me")
    page.locator(".url-input").fill("https://files.example.org/receipt.pdf")
    posts: list[str] = []
    polls: list[int] = []

    def decide(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            route.fulfill(status=504, content_type="text/html", body="<h1>504 Gateway Timeout</h1>")
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
    page.get_by_role("button", name="Approve").click()
    alert = page.locator("#request-error")
    said = (
        "The server is unavailable for the moment (504), so your decision may not have been "
        "taken. Sending it again once it answers\u2026 It will count only once. What you typed "
        "is kept."
    )
    alert.get_by_text(said).wait_for(timeout=5000)
    deadline = time.monotonic() + 15
    while not polls:
        assert time.monotonic() < deadline
        page.wait_for_timeout(200)
    page.wait_for_timeout(500)
    assert alert.get_by_text(said).is_visible()  # the poll's 503 did not take its place
    page.wait_for_function("() => !document.getElementById('decision-form')", timeout=20000)
    assert polls[:2] == [503, 200]
    keys = {
        part for post in posts for part in post.split("&") if part.startswith("submission_key=")
    }
    assert len(posts) == 2 and len(keys) == 1
    assert Decision.objects.get().inputs["note"] == "ok by me"
    assert alert.is_hidden()
    assert page.js_errors == [] and page.csp_violations == []


def test_a_guest_decision_stored_before_a_500_is_said_decided_once_the_poll_shows_it(
    live_server: Any,
    chromium: Any,  # noqa: F811
    browser_contexts: list[Any],  # noqa: F811
    reach_route: Route,
    reach_app: DifyApp,
) -> None:
    """The server stored the guest's decision, then failed (500): the alert saying to try again
    gives way, once the poll shows the form decided, to who decided it and with what, as the
    guest's page names it (their own address), in the page's language."""
    form = make_form(reach_app, expires_in=dt.timedelta(hours=5))
    link = notify.link_path(notify.link_token(form.recipients.get(email=GUEST_ZH)))
    page = guest_page(chromium, browser_contexts)
    page.goto(live_server.url + link)
    page.locator("textarea[name=in_note]").fill("同意。")
    posts: list[str] = []
    held: list[Any] = []  # the polls, held until the 500 was said

    def decide(route: Any) -> None:
        posts.append(route.request.post_data or "")
        route.fetch()  # the server stores it, then fails
        route.fulfill(status=500, content_type="text/html", body="<h1>Server Error</h1>")

    def poll(route: Any) -> None:
        if posts:
            held.append(route)
        else:
            route.continue_()

    page.route("**/live?*", poll)
    page.route("**/decide", decide)
    page.get_by_role("button", name="Approve").click()
    alert = page.locator("#request-error")
    alert.get_by_text(
        "服务器出现问题（500）。您输入的内容仍在此处，请稍后再试。"  # noqa: RUF001
    ).wait_for(timeout=5000)
    page.unroute("**/live?*")
    for route in held:
        route.continue_()
    said = f"此表单已有决定：{GUEST_ZH} 选择了\u201cApprove\u201d。无需再发送任何内容。"  # noqa: RUF001
    alert.get_by_text(said).wait_for(timeout=15000)
    assert page.locator("#decision-form").count() == 0
    assert "请稍后再试" not in alert.inner_text()
    assert len(posts) == 1
    assert Decision.objects.get(form=form).guest_email == GUEST_ZH
    assert page.js_errors == [] and page.csp_violations == []
