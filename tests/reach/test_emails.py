"""The emails about a form: who gets them, in which language, what they say, and their link."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.core import mail
from django.test import Client, override_settings
from django.utils import timezone

from inbox import notify
from inbox.models import DifyApp, Form, FormRecipient, Route
from inbox.tasks import send_form_emails
from tests.reach.conftest import GUEST, GUEST_ZH
from tests.reach.factories import html_of, make_form, route

LINK = re.compile(r"https?://[^\s\"<]+/r/[^\s\"<]+/")


def by_recipient() -> dict[str, Any]:
    return {message.to[0]: message for message in mail.outbox}


def test_capture_queues_the_emails_after_commit(
    reach_route: Route, reach_app: DifyApp, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        make_form(reach_app)
    assert len(callbacks) == 1  # FormRecipient.enqueue_emails, once the capture commits
    assert mail.outbox == []  # nothing is sent inside the capture's transaction


def test_no_email_for_a_form_dify_does_not_let_us_answer(
    reach_route: Route, reach_app: DifyApp, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        form = make_form(reach_app, form_token="", status=Form.Status.NOT_ANSWERABLE)
    assert callbacks == []
    assert notify.send_form_emails(form.pk) == 0


@override_settings(INBOX_BASE_URL="https://inbox.example.org")
def test_the_request_email_in_english(routed_form: Form) -> None:
    assert send_form_emails(routed_form.pk) == 2  # the task, called directly
    message = by_recipient()[GUEST]
    assert message.subject == "Decision needed: Manager approval (payroll)"
    assert message.extra_headers["Auto-Submitted"] == "auto-generated"
    text = message.body
    assert "A workflow of payroll is waiting for a decision from you." in text
    # The excerpt is plain text: Markdown marks and placeholders are gone.
    assert "Refund 120 EUR to Ada?" in text and "**" not in text and "{{#" not in text
    assert "The form expires in 30 hours (" in text  # under two days: in hours
    links = LINK.findall(text)
    assert len(links) == 1 and links[0].startswith("https://inbox.example.org/r/")
    html = html_of(message)
    assert '<html lang="en">' in html
    assert f'href="{links[0]}"' in html
    assert "Open the form to decide" in html and "Refund 120 EUR to Ada?" in html
    recipient = FormRecipient.objects.get(email=GUEST)
    assert recipient.sent_at is not None and recipient.send_attempts == 1
    # 24h is still ahead of a form with 30h left; 1h too.
    assert recipient.reminders_sent == []
    assert recipient.next_reminder_at == routed_form.expiration_time - dt.timedelta(hours=24)


def test_the_request_email_in_chinese(routed_form: Form) -> None:
    notify.send_form_emails(routed_form.pk)
    message = by_recipient()[GUEST_ZH]
    assert message.subject == "需要您的决定：Manager approval（payroll）"  # noqa: RUF001
    assert "payroll 的一个工作流正在等待您的决定。" in message.body
    assert "表单30小时后过期" in message.body
    html = html_of(message)
    assert '<html lang="zh-hans">' in html and "打开表单并作出决定" in html


def test_dify_html_reaches_the_email_as_text_only(reach_route: Route, reach_app: DifyApp) -> None:
    form = make_form(
        reach_app,
        content='<script>alert("x")</script><img src=x onerror=alert(1)> Pay **now**',
    )
    notify.send_form_emails(form.pk)
    message = by_recipient()[GUEST]
    html = html_of(message)
    assert "<script" not in html and "img" not in html and "onerror" not in html
    assert "alert" not in html and "Pay now</blockquote>" in html
    assert "\nPay now\n" in message.body and "script" not in message.body


def test_the_email_never_carries_the_dify_form_token(routed_form: Form) -> None:
    notify.send_form_emails(routed_form.pk)
    assert len(mail.outbox) == 2
    for message in mail.outbox:
        blob = "\n".join([message.subject, message.body, html_of(message), str(message.message())])
        assert routed_form.form_token not in blob


def test_each_recipient_is_emailed_once(routed_form: Form) -> None:
    assert notify.send_form_emails(routed_form.pk) == 2
    assert notify.send_form_emails(routed_form.pk) == 0
    assert notify.send_due_emails(timezone.now() + dt.timedelta(minutes=5))["requests"] == 0
    assert len(mail.outbox) == 2


def test_a_form_without_expiry_says_so(reach_route: Route, reach_app: DifyApp) -> None:
    form = make_form(reach_app, expires_in=None)
    notify.send_form_emails(form.pk)
    assert "The form has no time limit." in by_recipient()[GUEST].body
    # Reminded of an hour after this email (the route's 1h), not before an expiry it lacks.
    recipient = FormRecipient.objects.get(form=form, email=GUEST)
    assert recipient.next_reminder_at == recipient.sent_at + dt.timedelta(hours=1)


def test_a_recipient_without_guest_answers_is_told_an_account_is_needed(
    reach_app: DifyApp,
) -> None:
    route(reach_app, recipients=[GUEST], allow_guests=False)
    form = make_form(reach_app)
    notify.send_form_emails(form.pk)
    message = by_recipient()[GUEST]
    assert "Open the form (answering needs an account):" in message.body
    assert "Answering this form needs an account in the approval inbox." in html_of(message)


class BrokenBackend:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def send_messages(self, messages: list[Any]) -> int:
        raise ConnectionRefusedError("mail server down")


@override_settings(EMAIL_BACKEND="tests.reach.test_emails.BrokenBackend")
def test_a_failed_send_is_retried_by_the_sweep(
    routed_form: Form, caplog: pytest.LogCaptureFixture
) -> None:
    assert notify.send_form_emails(routed_form.pk) == 0
    recipient = FormRecipient.objects.get(email=GUEST)
    assert recipient.sent_at is None and recipient.send_attempts == 1
    assert recipient.last_error == "mail server down"
    assert "request email to recipient" in caplog.text
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend"):
        counts = notify.send_due_emails(timezone.now() + dt.timedelta(minutes=2))
    assert counts["requests"] == 2
    recipient.refresh_from_db()
    assert recipient.sent_at is not None and recipient.last_error == ""


def test_a_failed_send_waits_before_the_sweep_tries_it_again(routed_form: Form) -> None:
    now = timezone.now()
    FormRecipient.objects.filter(form=routed_form).update(
        send_attempts=3, next_send_at=now + dt.timedelta(minutes=15)
    )
    assert notify.send_due_emails(now + dt.timedelta(minutes=2))["requests"] == 0
    assert notify.send_form_emails(routed_form.pk, now=now) == 0
    assert mail.outbox == []
    assert notify.send_due_emails(now + dt.timedelta(minutes=15))["requests"] == 2


def test_resend_starts_over(routed_form: Form) -> None:
    notify.send_form_emails(routed_form.pk)
    assert notify.resend_form_emails(routed_form) == 2
    assert len(mail.outbox) == 4


def test_no_email_once_the_form_is_closed(routed_form: Form) -> None:
    Form.objects.filter(pk=routed_form.pk).update(status=Form.Status.SUBMITTING)
    assert notify.send_form_emails(routed_form.pk) == 0
    routed_form.refresh_from_db()
    assert notify.resend_form_emails(routed_form) == 0
    assert mail.outbox == []


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("request", 'Decision needed: Tom\'s Q&A <urgent> (R&D "beta")'),
        ("reminder", 'Reminder: Tom\'s Q&A <urgent> (R&D "beta") expires in 1 hour'),
        ("closed", 'Decided: Tom\'s Q&A <urgent> (R&D "beta")'),
    ],
)
def test_subjects_keep_the_characters_of_titles_and_app_names(kind: str, expected: str) -> None:
    # A subject is plain text: no HTML escaping (`&amp;`, `&#x27;`) belongs in it.
    from django.template.loader import render_to_string

    context = {
        "title": "Tom's Q&A <urgent>",
        "app": 'R&D "beta"',
        "time_left": "in 1 hour",
        "expires": True,
        "status": "submitted",
    }
    assert render_to_string(f"emails/{kind}_subject.txt", context).strip() == expected


EXPIRES = dt.datetime(2031, 5, 1, 12, 0, tzinfo=dt.UTC)


def test_email_times_are_in_the_zone_each_reader_uses_the_inbox_in(
    reach_app: DifyApp, reviewer: Any, client: Any
) -> None:
    route(
        reach_app,
        users=[reviewer],
        email_reviewers=True,
        recipients=[(GUEST, "en"), ("far@example.org", "en")],
        allow_guests=True,
    )
    # Alice's browser is in Shanghai; the guest's in New York; the other guest never opened
    # a page, and their email is in the server's zone, named.
    client.force_login(reviewer)
    client.cookies["tz"] = "Asia/Shanghai"
    client.get("/")
    form = make_form(reach_app, expires_in=None, expiration_time=EXPIRES)
    guest = form.recipients.get(email=GUEST)
    visitor = type(client)()
    visitor.cookies["tz"] = "America/New_York"
    assert visitor.get(notify.link_path(notify.link_token(guest))).status_code == 200
    guest.refresh_from_db()
    assert guest.time_zone == "America/New_York"

    notify.send_form_emails(form.pk)
    mails = by_recipient()
    assert "(May 1, 2031, 8 p.m. Asia/Shanghai)" in mails["alice@example.com"].body
    assert "(May 1, 2031, 8 a.m. America/New_York)" in mails[GUEST].body
    assert "(May 1, 2031, noon UTC)" in html_of(mails["far@example.org"])


def test_a_zone_the_browser_makes_up_is_not_kept(
    reach_app: DifyApp, reviewer: Any, client: Any
) -> None:
    from inbox.models import ReviewerProfile

    client.force_login(reviewer)
    client.cookies["tz"] = "Mars/Olympus_Mons"
    page = client.get("/")
    assert page.status_code == 200
    assert ReviewerProfile.time_zone_of(reviewer) == ""
    client.cookies["tz"] = "Europe/Paris"
    client.get("/")
    assert ReviewerProfile.time_zone_of(reviewer) == "Europe/Paris"
    ReviewerProfile.objects.filter(user=reviewer).update(time_zone="")
    client.get("/")  # once per session and zone, not per request
    assert ReviewerProfile.time_zone_of(reviewer) == ""


def test_a_guest_link_forwarded_to_a_reviewer_keeps_the_guest_s_zone(
    routed_form: Form, other_reviewer: Any, client: Any
) -> None:
    guest = routed_form.recipients.get(email=GUEST)
    client.force_login(other_reviewer)
    client.cookies["tz"] = "Asia/Tokyo"
    assert client.get(notify.link_path(notify.link_token(guest))).status_code == 200
    guest.refresh_from_db()
    assert guest.time_zone == ""


def test_an_account_s_link_to_a_form_without_expiry_works_while_it_waits(
    reach_app: DifyApp, reviewer: Any
) -> None:
    route(reach_app, users=[reviewer], email_reviewers=True, recipients=[GUEST], allow_guests=True)
    form = make_form(reach_app, expires_in=None)
    notify.send_form_emails(form.pk)
    mails = by_recipient()
    account = mails["alice@example.com"].body
    assert "it works while the form waits for a decision" in account
    assert "expires with the form" not in account
    # A guest's link to such a form lasts a set time, and says so.
    assert "it works for 30 days" in mails[GUEST].body


def test_a_guest_s_zone_goes_with_her_address_to_her_other_forms_and_later_ones(
    reach_route: Route, reach_app: DifyApp
) -> None:
    earlier = make_form(reach_app, expires_in=None, expiration_time=EXPIRES)
    waiting = make_form(reach_app, expires_in=None, expiration_time=EXPIRES)
    visitor = Client()
    visitor.cookies["tz"] = "Asia/Shanghai"
    # She opens one form's link: the form waiting beside it, and the next one, use her zone.
    guest = earlier.recipients.get(email=GUEST_ZH)
    assert visitor.get(notify.link_path(notify.link_token(guest))).status_code == 200
    later = make_form(reach_app, expires_in=None, expiration_time=EXPIRES)
    for form in (waiting, later):
        row = form.recipients.get(email=GUEST_ZH)
        assert notify.reading_zone(row) == "Asia/Shanghai"
        # Another guest's zone is not hers.
        assert notify.reading_zone(form.recipients.get(email=GUEST)) == ""
    mail.outbox.clear()
    notify.send_form_emails(later.pk)
    assert "Asia/Shanghai" in by_recipient()[GUEST_ZH].body
    assert "UTC" in by_recipient()[GUEST].body


def test_a_reviewer_s_own_zone_beats_the_one_their_address_gave_as_a_guest(
    reach_app: DifyApp, reviewer: Any
) -> None:
    from inbox.models import ReviewerProfile

    route(reach_app, users=[reviewer], email_reviewers=True, recipients=[GUEST])
    form = make_form(reach_app)
    row = form.recipients.get(email=reviewer.email)
    FormRecipient.objects.filter(pk=row.pk).update(time_zone="America/New_York")
    row.refresh_from_db()
    assert notify.reading_zone(row) == "America/New_York"
    ReviewerProfile.remember(reviewer, time_zone="Europe/Paris")
    assert notify.reading_zone(row) == "Europe/Paris"


def test_text_in_angle_brackets_that_is_no_html_stays_in_the_email(
    reach_route: Route, reach_app: DifyApp
) -> None:
    form = make_form(
        reach_app,
        content="Refund <customer name> if the amount < 100 and <b>now</b><!-- note -->.",
    )
    notify.send_form_emails(form.pk)
    message = by_recipient()[GUEST]
    assert "Refund <customer name> if the amount < 100 and now ." in message.body
    html = html_of(message)
    assert "Refund &lt;customer name&gt; if the amount &lt; 100 and now ." in html
    assert "<b>" not in html and "note" not in html
