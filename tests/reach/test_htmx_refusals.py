"""A guest page already open whose request is refused: the link expired or was used meanwhile,
its route stopped asking, or it asks too often. htmx swaps nothing of a 4xx answer by itself, so
each refusal says where it goes (HX-Retarget), in the page's language: a closed link's card
replaces the page's content, a wait goes to the page's error alert."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from django.test import Client, override_settings

from inbox import notify
from inbox.models import Decision, Form, FormRecipient, Route
from tests.reach.conftest import GUEST_ZH

FORM_TEXT = "Refund"  # in the form's content: a refusal that shows it leaked the form
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def one_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request of the test in one rate-limit window, however slow the machine."""
    monkeypatch.setattr("inbox.views_reach._window", lambda: 12345)


def after_expiry(form: Form) -> mock._patch[mock.MagicMock]:
    later = form.expiration_time + dt.timedelta(seconds=1)  # type: ignore[operator]
    return mock.patch("django.utils.timezone.now", return_value=later)


def test_a_decision_sent_after_the_form_expired_replaces_the_page_with_why(
    client: Client, guest_link: str, routed_form: Form
) -> None:
    assert client.get(guest_link).status_code == 200
    with after_expiry(routed_form):
        response = client.post(
            f"{guest_link}decide", {"action": "approve", "in_note": "ok"}, **HTMX
        )
    assert response.status_code == 410
    assert (response["HX-Retarget"], response["HX-Reswap"]) == ("#main", "innerHTML")
    part = response.content.decode()
    assert part.startswith("<title>This link has expired · Approval inbox</title>")
    assert "<h1>This link has expired.</h1>" in part
    assert "<html" not in part and FORM_TEXT not in part
    assert (response["Referrer-Policy"], response["Cache-Control"]) == ("same-origin", "no-store")
    assert not Decision.objects.exists()
    # Without htmx (no script), the whole page, as before.
    with after_expiry(routed_form):
        page = client.post(f"{guest_link}decide", {"action": "approve"})
    assert page.status_code == 410 and "HX-Retarget" not in page
    assert "<html" in page.content.decode()


def test_the_page_s_poll_gets_the_closed_card_not_a_reload(
    client: Client, guest_link: str, reach_route: Route
) -> None:
    # A reload would throw away what the guest typed; the card is swapped in, and the page
    # keeps what was typed next to it.
    Route.objects.filter(pk=reach_route.pk).update(allow_guests=False)
    response = client.get(f"{guest_link}live?state=open", **HTMX)
    assert response.status_code == 403 and "HX-Refresh" not in response
    assert response["HX-Retarget"] == "#main"
    assert "<h1>Sign in to answer.</h1>" in response.content.decode()


def test_a_link_used_in_another_browser_closes_this_page(
    client: Client, guest_link: str, guest_recipient: FormRecipient
) -> None:
    assert client.get(guest_link).status_code == 200
    FormRecipient.objects.filter(pk=guest_recipient.pk).update(link_used_at=dt.datetime.now(dt.UTC))
    response = client.post(f"{guest_link}decide", {"action": "approve"}, **HTMX)
    assert (response.status_code, response["HX-Retarget"]) == (410, "#main")
    assert "<h1>This link was already used.</h1>" in response.content.decode()


@override_settings(INBOX_GUEST_RATE_PER_LINK=1)
def test_too_many_requests_go_to_the_error_alert_and_say_when_to_try_again(
    client: Client, guest_link: str, one_window: None
) -> None:
    assert client.get(guest_link).status_code == 200
    response = client.post(f"{guest_link}decide", {"action": "approve"}, **HTMX)
    assert response.status_code == 429 and 1 <= int(response["Retry-After"]) <= 60
    assert (response["HX-Retarget"], response["HX-Reswap"]) == ("#request-error-text", "innerHTML")
    assert response.content.decode() == "<p>Too many requests. Wait a minute, then try again.</p>"
    assert response["Cache-Control"] == "no-store"


def test_a_refusal_is_in_the_page_s_language_not_the_browser_s(
    client: Client, routed_form: Form, one_window: None
) -> None:
    # The page of a Chinese recipient is in Chinese whatever the browser asks for; its
    # requests say so (base.html's hx-headers), and refusals made before the link is read
    # follow them.
    link = notify.link_path(notify.link_token(routed_form.recipients.get(email=GUEST_ZH)))
    page = client.get(link, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert '"Accept-Language": "zh-hans"' in page
    page_language = {"HTTP_ACCEPT_LANGUAGE": "zh-hans", **HTMX}
    with after_expiry(routed_form):
        closed = client.post(f"{link}decide", {"action": "approve"}, **page_language)
    assert closed.status_code == 410 and "<h1>此链接已过期。</h1>" in closed.content.decode()
    with override_settings(INBOX_GUEST_RATE_PER_LINK=2):
        limited = client.post(f"{link}decide", {"action": "approve"}, **page_language)
    assert limited.status_code == 429
    assert limited.content.decode() == "<p>请求过多，请稍等一分钟后再试。</p>"  # noqa: RUF001
