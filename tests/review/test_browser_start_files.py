"""The "Start a run" page's file fields in Chromium, on a 320px screen (the simulator's
`document-intake`: a required "Signed contract", documents; optional "Attachments"): the page
does not scroll sideways; sent back for one field, it keeps the file of the other that passed
(ticked, the input no longer required while it is) and says, in the summary the reader starts
at and on the input, which file must be chosen again. English and Chinese."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from inbox.models import DifyApp, MessageFile
from tests.capture.conftest import sim_app, starters  # noqa: F401
from tests.review.browser import logged_in_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NARROW = (320, 640)
CONTRACT = {"name": "c.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 c.pdf"}
PROGRAM = {"name": "a.exe", "mimeType": "application/octet-stream", "buffer": b"MZ\x90\x00"}

WORDS = {
    "en": {
        "contract": "Signed contract",
        "attachments": "Attachments",
        "start": "Start the run",
        "again": "Attachments: Choose the file again.",
        "kept": "Signed contract: already sent to Dify, sent with the run while ticked",
        "largest": "Largest file: documents 15 MB.",
    },
    "zh-hans": {
        "contract": "Signed contract",
        "attachments": "Attachments",
        "start": "\u542f\u52a8\u6b64\u8fd0\u884c",
        "again": "Attachments\uff1a\u8bf7\u91cd\u65b0\u9009\u62e9\u6587\u4ef6\u3002",
        "kept": "Signed contract\uff1a\u5df2\u53d1\u9001\u5230 Dify\uff0c"
        "\u52fe\u9009\u7684\u6587\u4ef6\u5c06\u968f\u8fd0\u884c\u4e00\u8d77\u53d1\u9001",
        "largest": "\u5355\u4e2a\u6587\u4ef6\u4e0a\u9650\uff1a\u6587\u6863 15 MB\u3002",
    },
}


def _fits(page: Any) -> None:
    """No sideways scrolling at 320px; the file inputs 24px tall at least."""
    assert page.evaluate("() => document.documentElement.scrollWidth") <= NARROW[0]
    for name in ("in_contract", "in_attachments"):
        box = page.locator(f"input[name={name}]").bounding_box()
        assert box is not None and box["height"] >= 24 and box["x"] + box["width"] <= NARROW[0]


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_a_start_page_sent_back_keeps_the_file_that_passed_and_says_which_to_choose_again(
    live_server: Any,
    chromium: Any,
    browser_contexts: list[Any],
    simulator: Any,
    sim_app: Any,  # noqa: F811
    starters: Group,  # noqa: F811
    reviewer: User,
    language: str,
) -> None:
    words = WORDS[language]
    app: DifyApp = sim_app("document-intake")
    page = logged_in_page(
        chromium, live_server, reviewer, browser_contexts, language=language, viewport=NARROW
    )
    page.goto(f"{live_server.url}/apps/{app.pk}/start/")
    assert page.locator("#id_in_contract_helptext").get_by_text(words["largest"]).count() == 1
    _fits(page)
    page.locator("input[name=in_contract]").set_input_files(files=[CONTRACT])
    page.locator("input[name=in_attachments]").set_input_files(files=[PROGRAM])
    with page.expect_navigation():
        page.get_by_role("button", name=words["start"]).click()
    _fits(page)
    # The reader starts at the summary, which names the file to choose again.
    summary = page.locator("#start-errors")
    assert page.evaluate("() => document.activeElement.id") == "start-errors"
    assert summary.get_by_text(words["again"]).count() == 1
    assert words["contract"] not in summary.inner_text()
    # The contract was kept: ticked, in a group that names its field; the input not required
    # while it is, its mark hidden.
    (kept,) = MessageFile.objects.all()
    group = page.get_by_role("group", name=words["kept"])
    box = group.get_by_role("checkbox")
    assert box.is_checked() and box.get_attribute("value") == str(kept.public_id)
    contract = page.locator("#id_in_contract")
    mark = page.locator("label[for=id_in_contract] [data-required-mark]")
    assert contract.evaluate("e => e.required") is False
    assert contract.get_attribute("aria-invalid") is None and mark.is_hidden()
    # The attachment is to be chosen again: its input is described by the note and its error.
    attachments = page.locator("#id_in_attachments")
    assert attachments.get_attribute("aria-invalid") == "true"
    described = (attachments.get_attribute("aria-describedby") or "").split()
    assert "id_in_attachments_again" in described and "id_in_attachments_error" in described
    assert page.locator("#id_in_attachments_again").is_visible()
    screenshot(page, f"start-files-sent-back-{language}")
    # Unticked, the field is required again (and says so); ticked, it is filled.
    box.uncheck()
    assert contract.evaluate("e => e.required") is True and mark.is_visible()
    box.check()
    assert contract.evaluate("e => e.required") is False and mark.is_hidden()
    assert page.js_errors == [] and page.csp_violations == []
