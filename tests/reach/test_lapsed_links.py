"""Links that outlive their age limit. A link to a form with an expiry works until the form
expires, however long that is; a link to a form without one lapses after
INBOX_LINK_MAX_AGE_SECONDS, and its page then offers the recipient a new link by email, as long
as the form still waits for them. Nothing of this is offered for a link that is forged, altered,
or that belongs to a form nobody may answer through it any more."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.core import mail, signing
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone

from inbox import notify
from inbox.models import AuditEntry, DifyApp, Form, FormRecipient, Route
from tests.reach.conftest import GUEST
from tests.reach.factories import html_of, make_form, route

DAY = 86400
FORM_TEXT = "Refund"  # in the form's content: a page that shows it leaked the form
BUTTON = "Email me a new link"
MASKED = "g***@example.net"
LINK = re.compile(r"https?://[^\s\"<]+(/r/[^\s\"<]+/)")


def signed_days_ago(recipient: FormRecipient, days: float) -> str:
    """The recipient's link as an email sent `days` ago carried it (signing's clock)."""
    with mock.patch("time.time", return_value=time.time() - days * DAY):
        return notify.link_path(notify.link_token(recipient))


@pytest.fixture
def open_form(reach_route: Route, reach_app: DifyApp) -> Form:
    """A form without an expiry: its links are bounded by their age alone."""
    return make_form(reach_app, expires_in=None)


@pytest.fixture
def lapsed_link(open_form: Form) -> str:
    return signed_days_ago(open_form.recipients.get(email=GUEST), 31)


# --- Forms with an expiry: their links do not lapse ----------------------------------------


def test_a_link_to_a_form_expiring_in_45_days_still_opens_after_31_days(
    client: Client, reach_route: Route, reach_app: DifyApp
) -> None:
    form = make_form(reach_app, expires_in=dt.timedelta(days=45))
    recipient = form.recipients.get(email=GUEST)
    link = notify.link_path(notify.link_token(recipient))
    token = link.split("/")[2]
    after = timezone.now() + dt.timedelta(days=31)
    assert notify.check_link(token, now=after).state == "ok"
    with (
        mock.patch("time.time", return_value=after.timestamp()),
        mock.patch("django.utils.timezone.now", return_value=after),
    ):
        page = client.get(link)
    assert page.status_code == 200 and FORM_TEXT in page.content.decode()
    # The form's expiry still ends it.
    assert notify.check_link(token, now=after + dt.timedelta(days=14, seconds=1)).state == (
        "expired"
    )


def test_a_link_to_a_form_without_expiry_lapses_after_the_age_limit(open_form: Form) -> None:
    recipient = open_form.recipients.get(email=GUEST)
    token = notify.link_token(recipient)
    assert notify.check_link(token, now=timezone.now() + dt.timedelta(days=29)).ok
    lapsed = notify.check_link(token, now=timezone.now() + dt.timedelta(days=31))
    assert lapsed.state == "lapsed" and lapsed.recipient == recipient


# --- The lapsed link's page ----------------------------------------------------------------


def test_a_lapsed_link_offers_a_new_link_by_email(
    client: Client, lapsed_link: str, open_form: Form
) -> None:
    page = client.get(lapsed_link)
    assert page.status_code == 410
    body = page.content.decode()
    assert "This link has expired." in body
    assert "Links to a form without a deadline work for 30 days." in body
    assert f'<form action="{lapsed_link}renew" method="post"' in body
    assert 'name="csrfmiddlewaretoken"' in body
    assert BUTTON in body
    assert f"It goes to {MASKED}, the address this form was sent to." in body
    # Nothing of the form, and not the address in full.
    assert FORM_TEXT not in body and "Manager approval" not in body and GUEST not in body
    assert open_form.form_token not in body
    # Its address is a credential: kept out of Referer headers and caches, as the form's page.
    assert (page["Referrer-Policy"], page["Cache-Control"]) == ("same-origin", "no-store")
    # Its other pages do not open either.
    assert client.post(f"{lapsed_link}decide", {"action": "approve"}).status_code == 410
    assert client.get(f"{lapsed_link}live").status_code == 410


def test_the_lapsed_page_speaks_the_recipients_language(client: Client, open_form: Form) -> None:
    link = signed_days_ago(open_form.recipients.get(language="zh-hans"), 31)
    body = client.get(link).content.decode()
    assert '<html lang="zh-hans">' in body and "通过邮件给我发送新链接" in body


def test_asking_sends_exactly_one_email_with_a_working_link(
    client: Client, lapsed_link: str, open_form: Form
) -> None:
    response = client.post(f"{lapsed_link}renew")
    assert response.status_code == 302 and response["Location"] == lapsed_link
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [GUEST]
    assert message.subject == "Your new link: Manager approval (payroll)"
    assert "Here is the new link you asked for." in message.body
    assert "it works for 30 days (open it after that to ask for a new one)" in message.body
    links = LINK.findall(message.body)
    assert len(links) == 1 and links[0] != lapsed_link
    assert f'href="http://127.0.0.1:8000{links[0]}"' in html_of(message)
    blob = "\n".join([message.subject, message.body, html_of(message), str(message.message())])
    assert open_form.form_token not in blob

    # The page says where it went, without the whole address.
    shown = client.get(lapsed_link).content.decode()
    assert f"We sent a new link to {MASKED}. It may take a few minutes to arrive." in shown
    assert GUEST not in shown

    # The new link opens the form, in another browser too.
    fresh = Client().get(links[0])
    assert fresh.status_code == 200 and FORM_TEXT in fresh.content.decode()

    entry = AuditEntry.objects.get(verb="link_renewed")
    assert entry.actor is None and entry.actor_label == GUEST
    assert entry.object_type == "formrecipient"
    assert entry.details["form"] == str(open_form.public_id)

    # A second press within ten minutes sends nothing, and says so.
    again = client.post(f"{lapsed_link}renew", follow=True)
    assert len(mail.outbox) == 1
    assert (
        f"A new link was already sent to {MASKED} a few minutes ago, so none was sent now. "
        "Look for it in your inbox and spam folder, or ask again in 10 minutes."
    ) in again.content.decode()
    assert AuditEntry.objects.filter(verb="link_renewed").count() == 1

    # Ten minutes later, one may ask again.
    eleven_minutes_on = timezone.now() + dt.timedelta(minutes=11)
    with mock.patch("django.utils.timezone.now", return_value=eleven_minutes_on):
        assert client.post(f"{lapsed_link}renew").status_code == 302
    assert len(mail.outbox) == 2
    assert AuditEntry.objects.filter(verb="link_renewed").count() == 2


def test_the_limit_is_per_recipient_not_per_link(client: Client, open_form: Form) -> None:
    recipient = open_form.recipients.get(email=GUEST)
    first, second = signed_days_ago(recipient, 31), signed_days_ago(recipient, 40)
    client.post(f"{first}renew")
    Client().post(f"{second}renew")
    assert len(mail.outbox) == 1
    # Another recipient of the same form has their own.
    other = signed_days_ago(open_form.recipients.get(language="zh-hans"), 31)
    Client().post(f"{other}renew")
    assert len(mail.outbox) == 2


def test_with_htmx_the_outcome_replaces_the_button_part(client: Client, lapsed_link: str) -> None:
    response = client.post(f"{lapsed_link}renew", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="renew"') and "<html" not in body
    assert f"We sent a new link to {MASKED}." in body and BUTTON in body
    assert "inbox:announce" in response["HX-Trigger"]
    assert (response["Referrer-Policy"], response["Cache-Control"]) == ("same-origin", "no-store")
    again = client.post(f"{lapsed_link}renew", HTTP_HX_REQUEST="true")
    assert again.status_code == 200 and "so none was sent now" in again.content.decode()
    assert len(mail.outbox) == 1


def test_asking_needs_the_pages_csrf_token(lapsed_link: str) -> None:
    browser = Client(enforce_csrf_checks=True)
    assert browser.post(f"{lapsed_link}renew").status_code == 403
    assert mail.outbox == []
    page = browser.get(lapsed_link).content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert csrf is not None
    response = browser.post(f"{lapsed_link}renew", {"csrfmiddlewaretoken": csrf.group(1)})
    assert response.status_code == 302 and len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_two_presses_at_the_same_moment_send_one_email(open_form: Form) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("two connections taking a row lock at once need PostgreSQL")
    pk = open_form.recipients.get(email=GUEST).pk
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def press() -> None:
        # Each press its own request: its own database connection.
        try:
            recipient = FormRecipient.objects.select_related("form__run__app").get(pk=pk)
            barrier.wait(10)
            outcomes.append(notify.send_new_link(recipient).outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=press) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(outcomes) == ["sent", "too_soon"]
    assert len(mail.outbox) == 1
    assert AuditEntry.objects.filter(verb="link_renewed").count() == 1


class BrokenBackend:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def send_messages(self, messages: list[Any]) -> int:
        raise ConnectionRefusedError("mail server down")


def test_a_send_the_mail_server_refused_may_be_asked_for_again(
    client: Client, lapsed_link: str
) -> None:
    with override_settings(EMAIL_BACKEND="tests.reach.test_lapsed_links.BrokenBackend"):
        page = client.post(f"{lapsed_link}renew", follow=True).content.decode()
    assert "The email could not be sent just now. Try again in a few minutes." in page
    assert AuditEntry.objects.filter(verb="link_renewal_failed").count() == 1
    # Nothing reached the recipient, so the limit does not hold them back.
    client.post(f"{lapsed_link}renew")
    assert len(mail.outbox) == 1


def test_a_link_that_still_works_sends_nothing(client: Client, open_form: Form) -> None:
    link = notify.link_path(notify.link_token(open_form.recipients.get(email=GUEST)))
    assert BUTTON not in client.get(link).content.decode()
    response = client.post(f"{link}renew")
    assert response.status_code == 302 and response["Location"] == link
    assert mail.outbox == []


# --- No button: forged, altered, closed, no longer asked ------------------------------------


@pytest.mark.parametrize("where", ["payload", "signature", "truncated"])
def test_an_altered_lapsed_link_gets_no_button(
    client: Client, lapsed_link: str, where: str
) -> None:
    token = lapsed_link.split("/")[2]
    if where == "payload":
        altered = ("A" if token[1] != "A" else "B").join([token[:1], token[2:]])
    elif where == "signature":
        altered = token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")
    else:
        altered = token[: len(token) // 2]
    page = client.get(f"/r/{altered}/")
    assert page.status_code == 404
    body = page.content.decode()
    assert "This link is not valid." in body and BUTTON not in body and MASKED not in body
    assert client.post(f"/r/{altered}/renew").status_code == 404
    assert mail.outbox == []


def test_a_forged_link_gets_no_button(client: Client, open_form: Form, reach_app: DifyApp) -> None:
    recipient = open_form.recipients.get(email=GUEST)
    payload = {"f": open_form.public_id.hex, "r": recipient.pk, "m": "0", "x": None}
    with mock.patch("time.time", return_value=time.time() - 31 * DAY):
        # Signed with another key or salt: what anyone without ours can do.
        forged = signing.dumps(payload, salt="wrong")
        # Correctly signed, but for the recipient of another form.
        other = make_form(reach_app, expires_in=None)
        mixed = signing.dumps(
            {**payload, "f": other.public_id.hex, "m": notify._email_tag(GUEST)},
            salt=notify.LINK_SALT,
        )
    for token in (forged, mixed):
        page = client.get(f"/r/{token}/")
        assert page.status_code == 404
        body = page.content.decode()
        assert BUTTON not in body and MASKED not in body
        assert client.post(f"/r/{token}/renew").status_code == 404
    assert mail.outbox == []


@pytest.mark.parametrize(
    "status",
    [
        Form.Status.SUBMITTING,
        Form.Status.SUBMITTED,
        Form.Status.ANSWERED_ELSEWHERE,
        Form.Status.EXPIRED,
        Form.Status.NOT_ANSWERABLE,
    ],
)
def test_a_lapsed_link_to_a_closed_form_gets_no_button(
    client: Client, lapsed_link: str, open_form: Form, status: str
) -> None:
    Form.objects.filter(pk=open_form.pk).update(status=status, form_token="")
    page = client.get(lapsed_link)
    assert page.status_code == 410
    body = page.content.decode()
    assert "The form no longer takes a decision." in body
    assert BUTTON not in body and MASKED not in body
    assert client.post(f"{lapsed_link}renew").status_code == 410
    assert mail.outbox == []


def test_a_lapsed_link_of_a_guest_who_answered_gets_no_button(
    client: Client, open_form: Form
) -> None:
    recipient = open_form.recipients.get(email=GUEST)
    open_form.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST)
    link = signed_days_ago(recipient, 31)
    body = client.get(link).content.decode()
    assert "This link has expired." in body and BUTTON not in body
    assert client.post(f"{link}renew").status_code == 410
    assert mail.outbox == []


@pytest.mark.parametrize(
    "change",
    [
        "guests no longer allowed",
        "address taken off the route",
        "route switched off",
        "route deleted",
    ],
)
def test_a_recipient_the_route_no_longer_asks_gets_no_button(
    client: Client, lapsed_link: str, reach_route: Route, change: str
) -> None:
    if change == "guests no longer allowed":
        Route.objects.filter(pk=reach_route.pk).update(allow_guests=False)
    elif change == "address taken off the route":
        reach_route.recipients.filter(email=GUEST).delete()
    elif change == "route switched off":
        Route.objects.filter(pk=reach_route.pk).update(is_active=False)
    else:
        reach_route.delete()
    page = client.get(lapsed_link)
    assert page.status_code == 403
    body = page.content.decode()
    assert BUTTON not in body and MASKED not in body
    assert client.post(f"{lapsed_link}renew").status_code == 403
    assert mail.outbox == []
    assert not AuditEntry.objects.filter(verb="link_renewed").exists()


def test_a_lapsed_link_of_a_recipient_with_an_account_still_leads_to_sign_in(
    client: Client, reach_app: DifyApp, other_reviewer: User
) -> None:
    # They answer in the inbox, signed in: the link only leads there, so its age does not
    # matter and there is nothing to send.
    route(reach_app, recipients=["bob@example.com"], allow_guests=True)
    form = make_form(reach_app, expires_in=None)
    link = signed_days_ago(form.recipients.get(), 31)
    response = client.get(link)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/forms/{form.public_id}/"
    refused = client.post(f"{link}renew")
    assert refused.status_code == 403 and "Sign in to answer." in refused.content.decode()
    assert mail.outbox == []
    client.force_login(other_reviewer)
    assert client.get(link)["Location"] == f"/forms/{form.public_id}/"


def test_masked_addresses() -> None:
    assert notify.masked_address("jane.doe@example.com") == "j***@example.com"
    assert notify.masked_address("x@example.org") == "x***@example.org"
    assert notify.masked_address("not-an-address") == "***"
    # A quoted local part may hold an @ (Django's validator takes it): none of it is shown.
    assert notify.masked_address('"jane@doe"@example.com') == '"***@example.com'
