"""A form gone from the workflow (its run deleted in Dify, taken for gone by the reconcile): those
emailed a link to it are told, in their language, that it is no longer available and nothing more
is needed, through the closing notices' claimed and retried path; and if the run comes back, they
are emailed again. The sweep is the real one, its clock passed in."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.mail import EmailMultiAlternatives
from django.test import Client
from django.utils import timezone

from inbox import notify
from inbox.models import AuditEntry, Decision, Form, FormRecipient
from tests.reach.conftest import GUEST, GUEST_ZH
from tests.reach.factories import html_of, make_form
from tests.reach.test_failures import _fail, _guest_decides

M = dt.timedelta(minutes=1)
REFUSED = ConnectionRefusedError(111, "Connection refused")
SEND = EmailMultiAlternatives.send  # the real one, as the locmem backend sends it


@pytest.fixture
def mail_server() -> Iterator[mock.MagicMock]:
    """The mail server as the test scripts it: `side_effect` refuses or sends."""
    server = mock.MagicMock(side_effect=SEND)
    with mock.patch.object(EmailMultiAlternatives, "send", autospec=True, side_effect=server):
        yield server


def emailed(form: Form) -> Form:
    assert notify.send_form_emails(form.pk) == 2
    mail.outbox.clear()
    return form


def gone(form: Form) -> dt.datetime:
    """Its run taken for gone, as the reconcile does after two 404s; returns when."""
    assert form.run.gone_from_dify(source="reconcile") == 1
    form.refresh_from_db()
    assert form.status == Form.Status.GONE
    return form.updated_at


def test_those_emailed_are_told_the_form_is_gone_in_their_language(routed_form: Form) -> None:
    form = emailed(routed_form)
    token = form.form_token
    at = gone(form)
    assert notify.send_due_emails(at + M)["notices"] == 2
    mails = {m.to[0]: m for m in mail.outbox}
    assert set(mails) == {GUEST, GUEST_ZH}
    english = mails[GUEST]
    assert english.subject == "No longer available: Manager approval (payroll)"
    for text in (english.body, html_of(english)):
        flat = " ".join(text.split())
        assert "is no longer available" in flat
        assert "No decision was taken on it here." in flat
        assert "Nothing more is needed from you." in flat
        # Not the closing notice's words, and a guest is told neither Dify's name nor its words.
        assert "decided" not in flat.lower() and "expired" not in flat.lower()
        assert "Dify" not in flat
    chinese = mails[GUEST_ZH]
    # "No longer available: ..." in Chinese
    assert (
        chinese.subject == "\u5df2\u4e0d\u518d\u53ef\u7528\uff1aManager approval\uff08payroll\uff09"
    )
    assert "\u65e0\u9700\u518d\u505a\u4efb\u4f55\u4e8b" in chinese.body  # nothing more needed
    assert "\u5df2\u51b3\u5b9a" not in chinese.subject + chinese.body  # not "decided"
    for message in mail.outbox:
        assert token not in message.body + html_of(message) + message.subject
    # Once: nothing more at later sweeps.
    assert notify.send_due_emails(at + 5 * M)["notices"] == 0
    assert len(mail.outbox) == 2
    assert not FormRecipient.objects.filter(form=form, closed_notice_at__isnull=True).exists()


def test_a_reviewer_is_told_dify_no_longer_has_the_run(routed_form: Form, reviewer: User) -> None:
    form = emailed(routed_form)
    gone(form)
    recipient = form.recipients.get(email=GUEST)
    recipient.user = reviewer  # an account's row: a reviewer reads of Dify and the inbox
    message = notify.build_email(recipient, "gone")
    for text in (message.body, html_of(message)):
        flat = " ".join(text.split())
        assert "Dify no longer has its workflow run" in flat
        assert "No decision was taken on it in the inbox." in flat


def test_a_gone_notice_the_mail_server_refused_is_sent_at_a_later_sweep_and_given_up_in_time(
    routed_form: Form, mail_server: mock.MagicMock, caplog: pytest.LogCaptureFixture
) -> None:
    form = emailed(routed_form)
    at = gone(form)
    mail_server.reset_mock()
    mail_server.side_effect = REFUSED
    assert notify.send_due_emails(at + M)["notices"] == 0
    assert mail_server.call_count == 2
    mail_server.side_effect = SEND
    assert notify.send_due_emails(at + M + M // 2)["notices"] == 0  # its wait is not over
    assert notify.send_due_emails(at + 2 * M)["notices"] == 2
    assert {m.subject for m in mail.outbox} == {
        "No longer available: Manager approval (payroll)",
        "\u5df2\u4e0d\u518d\u53ef\u7528\uff1aManager approval\uff08payroll\uff09",
    }
    assert notify.send_due_emails(at + 3 * M)["notices"] == 0  # once

    # Another form gone while the mail server refuses for hours: given up after its attempts.
    other = emailed(make_form(form.run.app))
    at = gone(other)
    mail_server.reset_mock()
    mail_server.side_effect = REFUSED
    with caplog.at_level(logging.WARNING, logger="inbox.notify"):
        for minute in range(1, 4 * 60):
            notify.send_due_emails(at + minute * M)
    assert mail_server.call_count == 2 * notify.MAX_NOTICE_ATTEMPTS
    given_up = [r for r in caplog.records if "gone notice" in r.getMessage()]
    assert len(given_up) == 2
    assert not FormRecipient.objects.filter(closed_notice_at__isnull=True).exists()


def test_no_gone_notice_for_news_days_old(routed_form: Form) -> None:
    form = emailed(routed_form)
    at = gone(form)
    assert notify.send_due_emails(at + dt.timedelta(days=3))["notices"] == 0
    assert mail.outbox == []
    assert not FormRecipient.objects.filter(form=form, closed_notice_at__isnull=True).exists()


def test_no_gone_notice_to_who_is_no_longer_asked(routed_form: Form) -> None:
    form = emailed(routed_form)
    form.route.recipients.filter(email=GUEST_ZH).delete()
    at = gone(form)
    assert notify.send_due_emails(at + M)["notices"] == 1
    assert [m.to for m in mail.outbox] == [[GUEST]]


def test_the_maker_of_the_decision_that_failed_is_not_told_again_when_its_form_goes(
    routed_form: Form, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    form = emailed(routed_form)
    _link, _browser, decision = _guest_decides(form, GUEST_ZH)
    _fail(decision, django_capture_on_commit_callbacks)
    assert notify.send_failure_notice(decision.pk) == 1
    mail.outbox.clear()
    # Dify did not know the form (404) because its run was deleted there: the reconcile finds
    # the run gone, and the failed form goes with it.
    at = gone(form)
    assert notify.send_due_emails(at + M)["notices"] == 1
    assert [m.to for m in mail.outbox] == [[GUEST]]
    assert notify.send_due_emails(at + 5 * M)["notices"] == 0


def test_once_given_back_the_maker_of_the_failed_decision_is_told_too(
    routed_form: Form, admin_user: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    form = emailed(routed_form)
    _link, _browser, decision = _guest_decides(form, GUEST_ZH)
    _fail(decision, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=False):
        assert decision.reopen_form(actor=admin_user)
    assert notify.send_form_emails(form.pk) == 2  # asked again, both of them
    mail.outbox.clear()
    at = gone(form)
    assert notify.send_due_emails(at + M)["notices"] == 2
    assert sorted(m.to[0] for m in mail.outbox) == sorted([GUEST, GUEST_ZH])


def test_a_form_back_from_gone_emails_those_told_again_with_a_link_that_works(
    routed_form: Form,
) -> None:
    form = emailed(routed_form)
    at = gone(form)
    assert notify.send_due_emails(at + M)["notices"] == 2
    mail.outbox.clear()
    link = notify.link_path(notify.link_token(form.recipients.get(email=GUEST)))
    assert form.run.back_in_dify(source="ingest")
    # The snapshot hands out a fresh token: the form waits again (`capture.refresh_form`).
    form.refresh_from_db()
    assert form.status == Form.Status.NOT_ANSWERABLE
    assert notify.send_due_emails(timezone.now() + 2 * M)["requests"] == 0  # no token yet
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.PENDING, form_token="dify-form-token-fresh"
    )
    later = timezone.now() + 2 * M
    assert notify.send_due_emails(later)["requests"] == 2
    mails = {m.to[0]: m for m in mail.outbox}
    assert set(mails) == {GUEST, GUEST_ZH}
    assert mails[GUEST].subject == "Decision needed again: Manager approval (payroll)"
    flat = " ".join(mails[GUEST].body.split())
    assert "You may have been told that this form was no longer available" in flat
    assert "Dify" not in flat
    assert "\u518d\u6b21" in mails[GUEST_ZH].subject  # "again"
    for message in mail.outbox:
        assert "dify-form-token-fresh" not in message.body + html_of(message)
    assert notify.send_due_emails(later + M)["requests"] == 0  # once
    # The old link opens the form again, and a closing notice is owed once it closes.
    assert Client().get(link).status_code == 200
    decision = form.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST)
    Decision.objects.filter(pk=decision.pk).update(status=Decision.Status.DELIVERED)
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.SUBMITTED, form_token="", updated_at=later + M
    )
    mail.outbox.clear()
    assert notify.send_due_emails(later + 2 * M)["notices"] == 1
    assert [m.to for m in mail.outbox] == [[GUEST_ZH]]


def _close_here(client: Client, *runs: Any) -> str:
    """The action as an administrator takes it: the page that says what it will close, then
    its confirmation."""
    chosen = {"action": "close_here", "_selected_action": [str(run.pk) for run in runs]}
    client.post("/admin/inbox/run/", chosen)
    page: str = client.post(
        "/admin/inbox/run/", {**chosen, "index": "0", "confirm": "yes"}, follow=True
    ).content.decode()
    return page


def test_closing_runs_here_first_says_what_it_will_close(
    routed_form: Form, admin_user: User
) -> None:
    admin = Client()
    admin.force_login(admin_user)
    page = admin.post(
        "/admin/inbox/run/",
        {"action": "close_here", "_selected_action": [str(routed_form.run_id)]},
    ).content.decode()
    assert "This cannot be undone." in page and 'name="confirm"' in page
    assert "1 run selected." in page and "<td>1</td>" in page  # its one open form
    assert Form.objects.get(pk=routed_form.pk).status == Form.Status.PENDING
    assert not AuditEntry.objects.filter(verb="run_closed_here").exists()


def test_an_administrator_writes_off_a_run_of_a_retired_server_and_those_emailed_are_told(
    routed_form: Form, admin_user: User
) -> None:
    from inbox.models import CLOSED_HERE_REASON, AuditEntry, Run

    # The app's server was retired: Dify will never answer for the run (its base URL answers
    # nothing here), and nothing is asked of it.
    form = emailed(routed_form)
    run = form.run
    # A decision a worker is sending right now: that run is left alone, and the administrator
    # is told why.
    busy = make_form(form.run.app)
    sending = busy.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST)
    Decision.objects.filter(pk=sending.pk).update(status=Decision.Status.DELIVERING)
    # A decision waiting to be sent again (its server down for good): it fails, its maker is
    # told, and its form closes with the run.
    stuck = make_form(form.run.app)
    waiting = stuck.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST)
    admin = Client()
    admin.force_login(admin_user)
    page = _close_here(admin, run, busy.run, stuck.run)
    assert "closed here; 1 open form closed as gone from Dify, its recipients told." in page
    assert "not closed: a decision on one of its forms is being sent to Dify right now" in page
    assert Form.objects.get(pk=busy.pk).status == Form.Status.SUBMITTING
    assert not Run.objects.get(pk=busy.run_id).is_finished
    waiting.refresh_from_db()
    assert waiting.status == Decision.Status.FAILED
    assert "an administrator closed its run here" in waiting.last_error
    assert Form.objects.get(pk=stuck.pk).status == Form.Status.GONE
    assert Run.objects.get(pk=stuck.run_id).is_finished
    run.refresh_from_db()
    form.refresh_from_db()
    assert run.status == Run.Status.FAILED and run.error == CLOSED_HERE_REASON
    assert run.finished_at is not None and not run.follow_wanted
    assert form.status == Form.Status.GONE and form.form_token == ""
    closed = AuditEntry.objects.get(verb="run_closed_here", object_id=str(run.pk))
    assert closed.actor == admin_user and closed.details["forms"] == 1
    gone_entry = AuditEntry.objects.get(verb="form_gone", object_id=str(form.pk))
    assert gone_entry.actor == admin_user and gone_entry.details["previous"] == "pending"
    # Those emailed are told, as for a run gone from Dify.
    assert notify.send_due_emails(form.updated_at + M)["notices"] == 2
    told = {m.to[0]: m for m in mail.outbox}
    assert set(told) == {GUEST, GUEST_ZH}
    assert told[GUEST].subject == "No longer available: Manager approval (payroll)"
    # Once is enough.
    assert "not closed: it had ended already." in _close_here(admin, run)


def test_writing_off_runs_takes_the_runs_change_permission(
    routed_form: Form, django_user_model: Any
) -> None:
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_run"))
    client = Client()
    client.force_login(staff)
    assert "close_here" not in client.get("/admin/inbox/run/").content.decode()
    _close_here(client, routed_form.run)
    assert Form.objects.get(pk=routed_form.pk).status == Form.Status.PENDING
    staff.user_permissions.add(Permission.objects.get(codename="change_run"))
    staff = django_user_model.objects.get(pk=staff.pk)
    client.force_login(staff)
    assert "close_here" in client.get("/admin/inbox/run/").content.decode()
    assert "closed here" in _close_here(client, routed_form.run)
    assert Form.objects.get(pk=routed_form.pk).status == Form.Status.GONE
