"""A decision that fails for good: its maker is told (the notice tried again while the mail server
refuses it, at most MAX_NOTICE_ATTEMPTS times, never twice), and an administrator who reopens the
form asks its recipients again (their used links open again, their reminders start over)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.contrib.auth.models import User
from django.core import mail
from django.core.mail import EmailMultiAlternatives
from django.test import Client
from django.utils import timezone
from django.utils.translation import gettext_noop

from inbox import notify
from inbox.models import Decision, Form, FormRecipient
from inbox.reasons import Reason
from tests.reach.conftest import GUEST, GUEST_ZH

RECEIPT = "https://files.example.org/receipt.pdf"
REFUSED = Reason(
    gettext_noop("Dify refused the decision (%(status)s %(code)s): %(message)s"),
    status=400,
    code="invalid_param",
    message="Invalid value for field cause",
)


def _fail(decision: Decision, callbacks: Callable[..., Any]) -> int:
    """Dify refused it for good, as the worker records it; returns the tasks queued."""
    with callbacks(execute=False) as queued:
        assert Decision.finish(
            decision.pk,
            status=Decision.Status.FAILED,
            form_status=Form.Status.FAILED,
            reason=REFUSED,
            verb="decision_failed",
        )
    return len(queued)


def _guest_decides(form: Form, email: str) -> tuple[str, Client, Decision]:
    link = notify.link_path(notify.link_token(form.recipients.get(email=email)))
    browser = Client()
    response = browser.post(
        f"{link}decide", {"action": "approve", "in_note": "ok", "in_receipt": RECEIPT}
    )
    assert response.status_code == 302
    return link, browser, Decision.objects.get(form=form)


def test_a_guest_whose_decision_fails_for_good_is_told_once_in_her_language(
    routed_form: Form, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    notify.send_form_emails(routed_form.pk)
    mail.outbox.clear()
    _link, _browser, decision = _guest_decides(routed_form, GUEST_ZH)
    assert _fail(decision, django_capture_on_commit_callbacks) == 1  # the notice's task

    assert notify.send_failure_notice(decision.pk) == 1
    assert [m.to for m in mail.outbox] == [[GUEST_ZH]]  # only her: the others hear nothing
    message = mail.outbox[0]
    assert (
        message.subject
        == "\u672a\u80fd\u6295\u9012\uff1a\u60a8\u5bf9 Manager approval\uff08payroll\uff09\u7684\u51b3\u5b9a"
    )
    body = message.body
    # A guest is told neither Dify's name nor its words, as on her page.
    assert "Dify" not in body and "invalid_param" not in body
    assert "Invalid value for field cause" not in body
    assert "\u672a\u80fd\u6295\u9012" in body  # could not be delivered
    assert "\u5de5\u4f5c\u6d41" in body  # the people who run the workflow can send it again
    html = next(content for content, kind in message.alternatives if kind == "text/html")
    for text in (body, html, message.subject):
        assert routed_form.form_token not in text
    # Once: the task again, and the sweep, send nothing more.
    assert notify.send_failure_notice(decision.pk) == 0
    later = timezone.now() + dt.timedelta(minutes=5)
    assert notify.send_due_emails(later)["failures"] == 0
    assert len(mail.outbox) == 1


def test_the_sweep_tells_the_maker_when_the_task_was_lost(
    routed_form: Form, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    _link, _browser, decision = _guest_decides(routed_form, GUEST)
    _fail(decision, django_capture_on_commit_callbacks)  # its task never runs
    mail.outbox.clear()
    later = timezone.now() + dt.timedelta(minutes=5)
    assert notify.send_due_emails(later)["failures"] == 1
    assert [m.to for m in mail.outbox] == [[GUEST]]
    assert "could not be delivered, so the workflow has not moved on" in mail.outbox[0].body
    assert "Dify" not in mail.outbox[0].body
    assert "If they give it back, you will be emailed" in mail.outbox[0].body
    assert notify.send_due_emails(later)["failures"] == 0


def test_a_reviewer_emailed_about_nothing_else_is_told_at_their_address(
    routed_form: Form,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    assert not routed_form.recipients.filter(user=reviewer).exists()
    with django_capture_on_commit_callbacks(execute=False):
        decision = routed_form.decide(
            action_id="reject", inputs={"note": "no", "receipt": None}, reviewer=reviewer
        )
    _fail(decision, django_capture_on_commit_callbacks)
    mail.outbox.clear()
    assert notify.send_failure_notice(decision.pk) == 1
    (message,) = mail.outbox
    assert message.to == [reviewer.email]
    assert "\u201cReject\u201d, could not be delivered to Dify" in message.body
    assert "the form waits in your inbox again" in message.body
    assert f"/forms/{routed_form.public_id}/" in message.body
    assert "/r/" not in message.body  # no guest link for an account


def test_reopening_asks_the_recipients_again_and_opens_the_used_link_anywhere(
    routed_form: Form,
    reviewer: User,
    admin_user: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    notify.send_form_emails(routed_form.pk)
    link, _browser, decision = _guest_decides(routed_form, GUEST_ZH)
    _fail(decision, django_capture_on_commit_callbacks)
    elsewhere = Client()
    assert elsewhere.get(link).status_code == 410  # used, and the form is not open
    # Their reminders as the first emails left them: the 24 h one already done.
    FormRecipient.objects.filter(form=routed_form).update(reminders_sent=[86400])
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert decision.reopen_form(actor=admin_user)
    assert len(queued) == 1  # the form's emails
    assert notify.send_form_emails(routed_form.pk) == 2
    mails = {m.to[0]: m for m in mail.outbox}
    assert set(mails) == {GUEST, GUEST_ZH}
    assert mails[GUEST].subject == "Decision needed again: Manager approval (payroll)"
    assert "could not be delivered, so the form was given back" in mails[GUEST].body
    assert "Dify" not in mails[GUEST].body
    assert "\u518d\u6b21" in mails[GUEST_ZH].subject  # "again"
    for message in mail.outbox:
        assert routed_form.form_token not in message.body
        assert routed_form.form_token not in message.alternatives[0][0]
    # Their reminders start over from this email: the 24 h one is due again.
    for recipient in routed_form.recipients.all():
        assert recipient.reminders_sent == []
        assert recipient.next_reminder_at == routed_form.expiration_time - dt.timedelta(hours=24)
        assert recipient.link_used_at is None
    # Sent once: the task again, and the sweep, send nothing more.
    assert notify.send_form_emails(routed_form.pk) == 0
    assert notify.send_due_emails(timezone.now() + dt.timedelta(minutes=5))["requests"] == 0
    assert len(mail.outbox) == 2

    # Her link takes a decision again, in any browser.
    page = elsewhere.get(link)
    assert page.status_code == 200
    assert f'action="{link}decide"' in page.content.decode()

    # A reviewer who may see the form finds it waiting again in their inbox.
    alice = Client()
    alice.force_login(reviewer)
    assert routed_form.public_id.hex in alice.get("/?status=pending").content.decode().replace(
        "-", ""
    )
    assert alice.get(f"/forms/{routed_form.public_id}/").status_code == 200
    assert Form.objects.get(pk=routed_form.pk).status == Form.Status.PENDING


def test_reopening_asks_no_one_taken_off_the_route(
    routed_form: Form,
    admin_user: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    notify.send_form_emails(routed_form.pk)
    _link, _browser, decision = _guest_decides(routed_form, GUEST_ZH)
    _fail(decision, django_capture_on_commit_callbacks)
    routed_form.route.recipients.filter(email=GUEST).delete()
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=False):
        assert decision.reopen_form(actor=admin_user)
    assert notify.send_form_emails(routed_form.pk) == 1
    assert [m.to for m in mail.outbox] == [[GUEST_ZH]]


REFUSED_BY_MAIL = ConnectionRefusedError(111, "Connection refused")
M = dt.timedelta(minutes=1)


def _mail_server(side_effect: Any) -> Any:
    """The mail server refusing (or hanging: a time limit) every email while the block runs."""
    return mock.patch.object(EmailMultiAlternatives, "send", autospec=True, side_effect=side_effect)


def _failed_by(
    form: Form, email: str, callbacks: Callable[..., Any]
) -> tuple[Decision, dt.datetime]:
    """`email`'s decision on `form`, failed for good; its notice's task not run yet."""
    notify.send_form_emails(form.pk)
    _link, _browser, decision = _guest_decides(form, email)
    _fail(decision, callbacks)
    mail.outbox.clear()
    return decision, timezone.now()


def test_a_failure_notice_the_mail_server_refused_is_sent_by_a_later_sweep_once(
    routed_form: Form, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    decision, now = _failed_by(routed_form, GUEST, django_capture_on_commit_callbacks)
    with _mail_server(REFUSED_BY_MAIL) as server:
        assert notify.send_failure_notice(decision.pk, now=now) == 0
    assert server.call_count == 1
    assert mail.outbox == []
    # Tried again after its wait, by the sweep (or the task run again), not before.
    assert notify.send_failure_notice(decision.pk, now=now + M // 2) == 0
    assert notify.send_due_emails(now + M + M // 2)["failures"] == 1
    assert [m.to for m in mail.outbox] == [[GUEST]]
    assert "could not be delivered, so the workflow has not moved on" in mail.outbox[0].body
    # Once.
    assert notify.send_failure_notice(decision.pk, now=now + 2 * M) == 0
    assert notify.send_due_emails(now + 10 * M)["failures"] == 0
    assert len(mail.outbox) == 1


def test_a_failure_notice_whose_send_ran_out_of_time_is_sent_by_a_later_sweep(
    routed_form: Form, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    decision, now = _failed_by(routed_form, GUEST_ZH, django_capture_on_commit_callbacks)
    with _mail_server(SoftTimeLimitExceeded()), pytest.raises(SoftTimeLimitExceeded):
        notify.send_failure_notice(decision.pk, now=now)
    assert notify.send_due_emails(now + 2 * M)["failures"] == 1
    assert [m.to for m in mail.outbox] == [[GUEST_ZH]]


def test_a_failure_notice_is_given_up_after_its_attempts(
    routed_form: Form,
    django_capture_on_commit_callbacks: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    decision, now = _failed_by(routed_form, GUEST, django_capture_on_commit_callbacks)
    with (
        _mail_server(REFUSED_BY_MAIL) as server,
        caplog.at_level(logging.WARNING, logger="inbox.notify"),
    ):
        notify.send_failure_notice(decision.pk, now=now)
        for minute in range(1, 6 * 60):
            notify.send_due_emails(now + minute * M)
    assert server.call_count == notify.MAX_NOTICE_ATTEMPTS
    given_up = [r for r in caplog.records if "failure notice given up" in r.getMessage()]
    assert len(given_up) == 1
    assert Decision.objects.get(pk=decision.pk).failure_notice_at is not None
    assert notify.send_due_emails(now + 7 * 60 * M)["failures"] == 0
    assert mail.outbox == []


def test_a_failure_notice_waiting_to_be_tried_again_is_not_sent_once_the_decision_is_sent_again(
    routed_form: Form,
    admin_user: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    decision, now = _failed_by(routed_form, GUEST, django_capture_on_commit_callbacks)
    with _mail_server(REFUSED_BY_MAIL):
        assert notify.send_failure_notice(decision.pk, now=now) == 0
    # An administrator sends it again meanwhile: nothing to tell while it is on its way.
    with django_capture_on_commit_callbacks(execute=False):
        assert decision.retry_delivery(actor=admin_user)
    assert notify.send_due_emails(now + 5 * M)["failures"] == 0
    assert notify.send_failure_notice(decision.pk, now=now + 5 * M) == 0
    assert mail.outbox == []
    # It fails for good again: its maker is told, once.
    _fail(Decision.objects.get(pk=decision.pk), django_capture_on_commit_callbacks)
    later = timezone.now()
    assert notify.send_due_emails(later + 2 * M)["failures"] == 1
    assert notify.send_due_emails(later + 10 * M)["failures"] == 0
    assert [m.to for m in mail.outbox] == [[GUEST]]
