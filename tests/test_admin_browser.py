"""The admin in Chromium, under the Content-Security-Policy: its scripts run and nothing is
refused, including the add-another popup, whose answer page closes itself by script."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from inbox.models import DifyApp, Route
from tests.review.browser import (  # noqa: F401 - fixtures
    browser_contexts,
    chromium,
    csp_violations,
    logged_in_page,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_admin_works_under_the_content_security_policy(
    chromium: Any,  # noqa: F811
    live_server: Any,
    browser_contexts: list[Any],  # noqa: F811
    admin_user: User,
    dify_app: DifyApp,
) -> None:
    page = logged_in_page(chromium, live_server, admin_user, browser_contexts)
    refused = csp_violations(page.context)  # the popup's pages too
    route = Route.objects.get(app=dify_app)

    page.goto(f"{live_server.url}/admin/inbox/difyapp/")
    page.locator("#action-toggle").check()  # actions.js counts the selection
    assert page.locator(".action-counter").inner_text() == "1 of 1 selected"

    # filter_horizontal: SelectFilter2.js builds the two lists.
    page.goto(f"{live_server.url}/admin/inbox/route/{route.pk}/change/")
    page.locator("#id_groups_from").wait_for()
    assert page.locator("#id_groups_to option").all_text_contents() == ["reviewers"]

    # autocomplete_fields (select2), and a user added from its popup.
    page.goto(f"{live_server.url}/admin/inbox/reviewerprofile/add/")
    page.locator(".select2-container").first.wait_for()
    with page.expect_popup() as opened:
        page.locator("#add_id_user").click()
    popup = opened.value
    popup.locator("#id_username").fill("carol")
    popup.locator("#id_password1").fill("pw-carol-1234-xyz")
    popup.locator("#id_password2").fill("pw-carol-1234-xyz")
    with popup.expect_event("close"):
        popup.locator("input[name=_save]").click()
    carol = User.objects.get(username="carol")
    assert page.locator("#id_user").input_value() == str(carol.pk)

    page.goto(f"{live_server.url}/dashboard/")
    page.get_by_role("heading", name="Dashboard").wait_for()
    assert page.js_errors == []
    assert refused == []
