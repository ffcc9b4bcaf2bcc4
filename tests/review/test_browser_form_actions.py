"""The form page's actions while the form is not ready, and upload errors, in Chromium: what a
keyboard and screen reader user meets (the buttons reachable, the hint naming what is
missing, an error read out once), and what a browser without script gets."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from inbox.models import Decision, DifyApp
from tests.review.browser import logged_in_page
from tests.review.conftest import make_form

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _decide_requests(page: Any) -> list[str]:
    sent: list[str] = []
    page.on(
        "request", lambda request: sent.append(request.url) if "/decide" in request.url else None
    )
    return sent


@pytest.mark.parametrize(
    ("language", "both_missing", "file_missing"),
    [
        ("en", "Still needed to decide: Decision, Receipt.", "Still needed to decide: Receipt."),
        (
            "zh-hans",
            "还需填写以下内容才能作出决定：Decision、Receipt。",  # noqa: RUF001
            "还需填写以下内容才能作出决定：Receipt。",  # noqa: RUF001
        ),
    ],
)
def test_actions_waiting_for_required_inputs_stay_reachable_and_name_what_is_missing(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    language: str,
    both_missing: str,
    file_missing: str,
) -> None:
    # A note, a choice (required), one file (required) and a list of files (not required).
    form = make_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, language=language)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    sent = _decide_requests(page)
    # The required file is marked as the required choice is; the list, which may stay empty,
    # is not.
    receipt = page.locator(".field[data-name=receipt]")
    assert receipt.locator("legend .req").inner_text() == "*"
    assert receipt.locator("input[type=file]").get_attribute("aria-required") == "true"
    evidence = page.locator(".field[data-name=evidence]")
    assert evidence.locator(".req").count() == 0
    assert evidence.locator("input[type=file]").get_attribute("aria-required") is None

    approve = page.locator("#decision-form button[value=approve]")
    hint = page.locator("#actions-hint")
    assert hint.is_visible()
    assert hint.inner_text() == both_missing
    assert approve.get_attribute("disabled") is None
    assert approve.get_attribute("aria-disabled") == "true"
    assert approve.get_attribute("aria-describedby") == "actions-hint"

    # Tab reaches the buttons: from the last field, the next stop is the first action.
    page.locator("#url-evidence").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.value") == "approve"
    # Pressed, it sends nothing; the hint is read out.
    page.keyboard.press("Enter")
    page.wait_for_function(
        "text => document.getElementById('announcer').textContent === text", arg=both_missing
    )
    # Enter in a field of the form (its implicit submission) sends nothing either.
    page.locator("#url-receipt").focus()
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    assert sent == [] and not Decision.objects.exists()

    # Each input given takes its name off the hint; the last one frees the buttons.
    page.locator(".field[data-name=decision] input[value=partial]").check()
    assert hint.inner_text() == file_missing
    page.locator("#url-receipt").fill("https://files.example.com/receipt.pdf")
    assert hint.is_hidden()
    assert approve.get_attribute("aria-disabled") is None
    assert approve.get_attribute("aria-describedby") is None
    assert approve.is_enabled()
    approve.click()
    page.wait_for_selector("#form-body.state-in_flight, #form-body.state-submitted")
    assert Decision.objects.get(form=form).action_id == "approve"
    assert page.js_errors == []
    assert page.csp_violations == []


def test_without_script_the_actions_send_and_the_server_says_what_is_missing(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, javascript=False)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    assert page.locator("#actions-hint").is_hidden()
    approve = page.get_by_role("button", name="Approve")
    assert approve.get_attribute("aria-disabled") is None
    with page.expect_navigation():
        approve.click()
    errors = page.locator("#form-errors")
    assert "Decision: Choose an option." in errors.inner_text()
    assert "Receipt: Add a file." in errors.inner_text()
    assert not Decision.objects.exists()


def test_an_upload_refused_before_sending_is_read_out_once_by_its_alert(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    error = page.locator("#file-error-receipt")
    assert error.get_attribute("role") == "alert"
    page.set_input_files(
        "input[data-upload=receipt]",
        files=[
            {"name": "big.png", "mimeType": "image/png", "buffer": b"0" * (10 * 1024 * 1024 + 1)}
        ],
    )
    page.wait_for_function(
        "() => document.getElementById('file-error-receipt').textContent.length > 0", timeout=10000
    )
    assert error.text_content() == (
        "big.png: The file is larger than 10 MB, the most Dify takes for this kind of file."
    )
    page.wait_for_timeout(300)  # the announcer is filled 50 ms after it is asked
    assert page.locator("#announcer").text_content() == ""
    assert page.js_errors == []


def test_an_upload_the_server_refuses_is_read_out_once_by_its_alert(
    chromium: Any, live_server: Any, browser_contexts: list[Any], dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    # A kind of file the input does not take: refused by the server, before Dify.
    with page.expect_response(lambda response: "/files/receipt" in response.url):
        page.set_input_files(
            "input[data-upload=receipt]",
            files=[{"name": "song.mp3", "mimeType": "audio/mpeg", "buffer": b"ID3"}],
        )
    page.wait_for_function(
        "() => document.getElementById('file-error-receipt').textContent.length > 0", timeout=10000
    )
    assert "song.mp3: This kind of file is not accepted here." in (
        page.locator("#file-error-receipt").text_content() or ""
    )
    page.wait_for_timeout(300)
    assert page.locator("#announcer").text_content() == ""
    assert page.js_errors == []


@pytest.mark.parametrize("javascript", [True, False], ids=["script", "no-script"])
def test_enter_in_a_one_line_field_sends_no_decision(
    chromium: Any,
    live_server: Any,
    browser_contexts: list[Any],
    dify_app: DifyApp,
    reviewer: User,
    javascript: bool,
) -> None:
    """The browser would send the form's first action on Enter: a decision nobody chose."""
    definition = {
        "form_content": "Which team?\n\n{{#$output.team#}}",
        "inputs": [
            {
                # Options Dify could not resolve: a one-line text field.
                "type": "select",
                "output_variable_name": "team",
                "option_source": {"type": "variable", "selector": ["sys", "teams"], "value": []},
            }
        ],
        "resolved_default_values": {},
        "user_actions": [
            {"id": "approve", "title": "Approve", "button_style": "primary"},
            {"id": "reject", "title": "Reject", "button_style": "default"},
        ],
        "expiration_time": None,
    }
    form = make_form(dify_app, definition=definition)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts, javascript=javascript)
    page.goto(f"{live_server.url}/forms/{form.public_id}/")
    sent = _decide_requests(page)
    field = page.locator("input[name=in_team]")
    field.fill("Finance")
    field.press("Enter")
    page.wait_for_timeout(1500)
    assert sent == [] and not Decision.objects.exists()
    assert field.input_value() == "Finance"
    # The buttons still send, as chosen.
    page.get_by_role("button", name="Reject").click()
    if javascript:
        page.wait_for_function("() => !document.querySelector('#decision-form')", timeout=15000)
    else:
        page.wait_for_load_state()
    decision = Decision.objects.get()
    assert (decision.action_id, decision.inputs) == ("reject", {"team": "Finance"})
