"""Reminders before expiry to those who have not answered, and a notice when the form closes.
The clock is passed in (`now`), so each test walks through a form's life in a few calls."""

from __future__ import annotations

import datetime as dt
import re
import threading
from typing import Any
from unittest import mock

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from inbox import notify
from inbox.models import Decision, DifyApp, Form, FormRecipient, Route, Run
from inbox.tasks import periodic_lock, send_reminders
from tests.reach.conftest import GUEST, GUEST_ZH
from tests.reach.factories import html_of, make_form, route

H = dt.timedelta(hours=1)
# Now, to the minute: decisions are taken on the real clock, so the forms must be open on it.
T0 = timezone.now().replace(second=0, microsecond=0)


def captured(reach_app: DifyApp, hours_left: float, **kwargs: object) -> Form:
    """A form captured at T0 with `hours_left` before it expires, its first emails sent."""
    with mock.patch("django.utils.timezone.now", return_value=T0):
        form = make_form(reach_app, expires_in=None, **kwargs)
    Form.objects.filter(pk=form.pk).update(expiration_time=T0 + hours_left * H, created_at=T0)
    form.refresh_from_db()
    assert notify.send_form_emails(form.pk, now=T0) == 2
    mail.outbox.clear()
    return form


def sweep(at: dt.datetime) -> dict[str, int]:
    return notify.send_due_emails(at)


def subjects() -> list[tuple[str, str]]:
    return sorted((m.to[0], m.subject) for m in mail.outbox)


@pytest.mark.parametrize(
    ("offsets", "sent_hours_before", "now_hours_before", "expected"),
    [
        ([86400, 3600], 48, 30, (None, [])),  # nothing due yet
        ([86400, 3600], 48, 24, (86400, [86400])),  # the 24 h reminder
        ([86400, 3600], 48, 0.5, (3600, [86400, 3600])),  # after a pause: only the most urgent
        ([86400, 3600], 5, 4, (None, [86400])),  # 24 h had passed when the email went out
        ([86400, 3600], 5, 1, (3600, [86400, 3600])),
        ([86400, 3600], 48, 0, (None, [])),  # expired: nothing
    ],
)
def test_due_reminder(
    offsets: list[int],
    sent_hours_before: float,
    now_hours_before: float,
    expected: tuple[int | None, list[int]],
) -> None:
    expires = T0 + 100 * H
    result = notify.due_reminder(
        offsets, expires, expires - sent_hours_before * H, [], expires - now_hours_before * H
    )
    assert (result[0], sorted(result[1], reverse=True)) == expected


def test_reminders_at_24_and_1_hour_before_expiry(reach_route: Route, reach_app: DifyApp) -> None:
    form = captured(reach_app, hours_left=48)
    assert sweep(T0 + 23 * H)["reminders"] == 0
    assert sweep(T0 + 24 * H)["reminders"] == 2
    assert subjects() == [
        (GUEST, "Reminder: Manager approval (payroll) expires in 24 hours"),
        (GUEST_ZH, "提醒：Manager approval（payroll）24小时后过期"),  # noqa: RUF001
    ]
    mail.outbox.clear()
    assert sweep(T0 + 30 * H)["reminders"] == 0  # nothing more until the last hour
    assert sweep(T0 + 47 * H)["reminders"] == 2
    assert {m.subject for m in mail.outbox if m.to == [GUEST]} == {
        "Reminder: Manager approval (payroll) expires in 60 minutes"
    }
    mail.outbox.clear()
    assert sweep(T0 + 47.5 * H)["reminders"] == 0
    recipient = FormRecipient.objects.get(form=form, email=GUEST)
    assert recipient.reminders_sent == [86400, 3600] and recipient.next_reminder_at is None
    assert recipient.reminded_at == T0 + 47 * H


def test_a_reminder_reads_the_time_left_and_links_the_form(
    reach_route: Route, reach_app: DifyApp
) -> None:
    captured(reach_app, hours_left=48)
    sweep(T0 + 47 * H)
    message = next(m for m in mail.outbox if m.to == [GUEST])
    assert "has not been answered yet, and it expires in 60 minutes." in message.body
    assert "/r/" in message.body


def test_a_reminder_carries_a_link_signed_when_the_reminder_is_sent(
    reach_route: Route, reach_app: DifyApp
) -> None:
    captured(reach_app, hours_left=48)
    reminded = T0 + 47 * H
    # Signing's clock at the reminder's time, so the link's timestamp says when it was made.
    with mock.patch("time.time", return_value=reminded.timestamp()):
        sweep(reminded)
    message = next(m for m in mail.outbox if m.to == [GUEST])
    found = re.search(r"/r/([^/\s]+)/", message.body)
    assert found is not None
    token = found.group(1)
    assert notify._signed_at(token) == int(reminded.timestamp())
    assert notify.check_link(token, now=reminded).ok


def test_a_short_form_gets_only_the_last_hour_reminder(
    reach_route: Route, reach_app: DifyApp
) -> None:
    captured(reach_app, hours_left=5)
    assert sweep(T0 + 1 * H)["reminders"] == 0
    assert sweep(T0 + 4 * H)["reminders"] == 2
    assert sweep(T0 + 4.5 * H)["reminders"] == 0


def test_a_reminder_due_moments_after_the_first_email_is_not_sent(
    reach_route: Route, reach_app: DifyApp
) -> None:
    """A one-day form with a 24h reminder, captured seconds after Dify opened it: the first
    email said "expires in 1 day"; a reminder saying "23 hours" 20 seconds later is noise."""
    form = captured(reach_app, hours_left=24 + 20 / 3600)
    recipient = FormRecipient.objects.get(form=form, email=GUEST)
    assert recipient.reminders_sent == [86400]
    assert recipient.next_reminder_at == T0 + 23 * H + dt.timedelta(seconds=20)
    assert sweep(T0 + dt.timedelta(seconds=30))["reminders"] == 0
    assert sweep(T0 + 23.5 * H)["reminders"] == 2  # the last hour's
    # One long enough after it is sent: a day's reminder for a form with a day and 3h left.
    late = captured(reach_app, hours_left=27)
    assert FormRecipient.objects.get(form=late, email=GUEST).reminders_sent == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1000000d", "“1000000d” is more than a year; reminders are at most 366d before expiry."),
        ("24h,²h", "“²h” is not a time before expiry; write e.g. 2d, 24h or 30m, comma-separated."),
    ],
)
def test_a_reminder_schedule_out_of_any_calendar_is_refused_and_never_breaks_the_sweep(
    reach_route: Route, reach_app: DifyApp, text: str, error: str
) -> None:
    from django.core.exceptions import ValidationError

    from inbox.models import validate_offsets

    with pytest.raises(ValidationError) as refused:
        validate_offsets(text)
    assert refused.value.messages == [error]
    validate_offsets("366d,1h")
    # A route saved before the check (or behind the admin's back) sends its emails, unreminded.
    Route.objects.filter(pk=reach_route.pk).update(reminders=text)
    captured(reach_app, hours_left=48)
    assert sweep(T0 + 47 * H) == {"requests": 0, "reminders": 0, "notices": 0, "failures": 0}


def test_no_reminder_once_someone_decided(reach_route: Route, reach_app: DifyApp) -> None:
    form = captured(reach_app, hours_left=48)
    form.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST)
    assert sweep(T0 + 24 * H)["reminders"] == 0  # on its way to Dify: none
    assert mail.outbox == []
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTED, form_token="")
    assert sweep(T0 + 25 * H)["reminders"] == 0
    assert not FormRecipient.objects.filter(next_reminder_at__isnull=False).exists()


def test_the_decided_notice_goes_to_those_who_did_not_decide(
    reach_route: Route, reach_app: DifyApp
) -> None:
    form = captured(reach_app, hours_left=48)
    decision = form.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST)
    assert sweep(T0 + 2 * H)["notices"] == 0  # still on its way to Dify: not decided yet
    Decision.objects.filter(pk=decision.pk).update(status=Decision.Status.DELIVERED)
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.SUBMITTED, form_token="", updated_at=T0 + 2 * H
    )
    counts = sweep(T0 + 2 * H)
    assert counts["notices"] == 0 + 1
    assert [m.to for m in mail.outbox] == [[GUEST_ZH]]
    assert mail.outbox[0].subject == "已决定：Manager approval（payroll）"  # noqa: RUF001
    # Another guest is not told who decided: neither a reviewer's name nor a guest's address.
    assert "guest@example.net" not in mail.outbox[0].body
    assert "另一位收件人选择了：Approve。" in mail.outbox[0].body  # noqa: RUF001
    assert "。 " not in mail.outbox[0].body  # Chinese sentences run on, with no space between
    assert sweep(T0 + 3 * H)["notices"] == 0  # once


def test_the_expired_notice(reach_route: Route, reach_app: DifyApp) -> None:
    form = captured(reach_app, hours_left=2)
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=T0 + 2 * H
    )
    assert sweep(T0 + 2 * H)["notices"] == 2
    message = next(m for m in mail.outbox if m.to == [GUEST])
    assert message.subject == "Expired: Manager approval (payroll)"
    assert "expired without a decision" in message.body


@pytest.mark.parametrize("ending", ["stopped", "failed"])
def test_a_form_closed_by_its_run_s_end_is_not_said_to_have_taken_a_timeout_path(
    reach_route: Route, reach_app: DifyApp, ending: str
) -> None:
    form = captured(reach_app, hours_left=48)
    # Stopped (or failed) an hour in, long before the form's deadline: Dify marks it expired.
    Run.objects.filter(pk=form.run_id).update(status=ending, finished_at=T0 + H)
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=T0 + H
    )
    assert sweep(T0 + H)["notices"] == 2
    message = next(m for m in mail.outbox if m.to == [GUEST])
    assert message.subject == "Closed: Manager approval (payroll)"
    assert "closed without a decision." in message.body
    assert "timeout path" not in message.body and "expired" not in message.body
    said = {"stopped": "The workflow was stopped.", "failed": "The workflow ended with an error."}
    assert said[ending] in message.body and said[ending] in html_of(message)
    chinese = next(m for m in mail.outbox if m.to == [GUEST_ZH])
    assert chinese.subject == "\u5df2\u5173\u95ed\uff1aManager approval\uff08payroll\uff09"
    assert "\u8d85\u65f6" not in chinese.body  # 超时: no timeout path
    # Its page says the same, to a reviewer with the run's words.
    form.refresh_from_db()
    assert form.closed_by_run_end == ending


def test_a_form_whose_time_ran_out_before_its_run_failed_keeps_its_timeout(
    reach_route: Route, reach_app: DifyApp
) -> None:
    form = captured(reach_app, hours_left=2)
    Run.objects.filter(pk=form.run_id).update(status="failed", finished_at=T0 + 3 * H)
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=T0 + 3 * H
    )
    assert sweep(T0 + 3 * H)["notices"] == 2
    message = next(m for m in mail.outbox if m.to == [GUEST])
    assert message.subject == "Expired: Manager approval (payroll)"
    assert "expired without a decision; the workflow took its timeout path" in message.body


def test_the_expired_notice_of_a_decision_that_arrived_too_late_says_so(
    reach_route: Route, reach_app: DifyApp, reviewer: Any
) -> None:
    form = captured(reach_app, hours_left=48)
    decision = form.decide(action_id="approve", inputs={"note": ""}, reviewer=reviewer)
    # Dify had timed the form out first: the decision was refused, the form closed expired.
    Decision.objects.filter(pk=decision.pk).update(status=Decision.Status.REJECTED)
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=T0 + 2 * H
    )
    assert sweep(T0 + 2 * H)["notices"] == 2
    body = next(m for m in mail.outbox if m.to == [GUEST]).body
    # A guest is told without Dify's name or the inbox's.
    assert (
        "closed before the decision made on it could be sent, so that decision was not sent" in body
    )
    assert "without a decision" not in body
    assert "Dify" not in body and "in the inbox" not in body


def test_the_too_late_notice_tells_a_guest_the_unsent_decision_was_theirs(
    reach_route: Route, reach_app: DifyApp
) -> None:
    form = captured(reach_app, hours_left=48)
    decision = form.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST)
    Decision.objects.filter(pk=decision.pk).update(status=Decision.Status.REJECTED)
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=T0 + 2 * H
    )
    assert sweep(T0 + 2 * H)["notices"] == 2
    mine = next(m for m in mail.outbox if m.to == [GUEST])
    assert (
        "closed before your decision (\u201cApprove\u201d) could be sent, so your decision was not "
        "sent; the workflow took its timeout path." in " ".join(mine.body.split())
    )
    assert "Dify" not in mine.body and "Dify" not in mine.alternatives[0][0]
    other = next(m for m in mail.outbox if m.to == [GUEST_ZH]).body
    assert (
        "\u5728\u5bf9\u5b83\u4f5c\u51fa\u7684\u51b3\u5b9a\u9001\u51fa\u4e4b\u524d" in other
    )  # 在对它作出的决定送出之前
    assert "Dify" not in other and "\u6536\u4ef6\u7bb1\u4e2d" not in other  # 收件箱中


def test_no_notice_for_news_days_old(reach_route: Route, reach_app: DifyApp) -> None:
    form = captured(reach_app, hours_left=2)
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=T0 + 2 * H
    )
    assert sweep(T0 + 72 * H)["notices"] == 0
    assert not FormRecipient.objects.filter(closed_notice_at__isnull=True).exists()


def test_recipients_never_emailed_get_no_reminder_or_notice(
    reach_route: Route, reach_app: DifyApp
) -> None:
    with mock.patch("django.utils.timezone.now", return_value=T0):
        form = make_form(reach_app, expires_in=None)
    Form.objects.filter(pk=form.pk).update(
        expiration_time=T0 + 2 * H, status=Form.Status.EXPIRED, form_token=""
    )
    assert sweep(T0 + 2 * H) == {"requests": 0, "reminders": 0, "notices": 0, "failures": 0}
    assert mail.outbox == []


def test_who_is_no_longer_asked_gets_no_reminder_notice_or_resent_email(
    reach_route: Route, reach_app: DifyApp
) -> None:
    form = captured(reach_app, hours_left=48)
    # The Chinese guest is taken off the route after the first email.
    reach_route.recipients.filter(email=GUEST_ZH).delete()
    assert sweep(T0 + 24 * H)["reminders"] == 1
    assert [m.to for m in mail.outbox] == [[GUEST]]
    mail.outbox.clear()
    assert notify.resend_form_emails(form) == 1
    assert [m.to for m in mail.outbox] == [[GUEST]]
    mail.outbox.clear()
    # Nor does the sweep after the resend send it the first email again.
    assert sweep(T0 + 25 * H)["requests"] == 0
    assert [GUEST_ZH] not in [m.to for m in mail.outbox]
    mail.outbox.clear()
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=T0 + 30 * H
    )
    assert sweep(T0 + 30 * H)["notices"] == 1
    assert [m.to for m in mail.outbox] == [[GUEST]]


def test_a_reviewer_taken_off_the_group_or_deactivated_is_reminded_of_nothing(
    reach_app: DifyApp,
) -> None:
    from django.contrib.auth.models import Group, User

    finance = Group.objects.create(name="finance")
    carol = User.objects.create_user("carol", "carol@example.com", "pw-carol-123")
    dave = User.objects.create_user("dave", "dave@example.com", "pw-dave-123")
    erin = User.objects.create_user("erin", "erin@example.com", "pw-erin-123")
    finance.user_set.add(carol, dave, erin)
    route(reach_app, groups=[finance], email_reviewers=True, reminders="24h,1h")
    with mock.patch("django.utils.timezone.now", return_value=T0):
        form = make_form(reach_app, expires_in=None)
    Form.objects.filter(pk=form.pk).update(expiration_time=T0 + 48 * H, created_at=T0)
    assert notify.send_form_emails(form.pk, now=T0) == 3
    mail.outbox.clear()
    finance.user_set.remove(carol)
    dave.is_active = False
    dave.save()
    # Their links stay rows, not withdrawn: the sweep itself turns them away.
    assert form.recipients.filter(withdrawn_at__isnull=True).count() == 3
    assert sweep(T0 + 24 * H)["reminders"] == 1
    assert [m.to for m in mail.outbox] == [["erin@example.com"]]
    mail.outbox.clear()
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=T0 + 48 * H
    )
    assert sweep(T0 + 48 * H)["notices"] == 1
    assert [m.to for m in mail.outbox] == [["erin@example.com"]]


def test_the_periodic_task_holds_a_lock(reach_route: Route, reach_app: DifyApp) -> None:
    make_form(reach_app)
    FormRecipient.objects.update(created_at=timezone.now() - dt.timedelta(minutes=5))
    holding, release = threading.Event(), threading.Event()

    def other_run() -> None:
        # Another worker's run: its own database connection (PostgreSQL's advisory locks are
        # per session) or its own open lock file (SQLite's flock).
        try:
            with periodic_lock("send_reminders") as held:
                assert held
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert holding.wait(10)
        assert send_reminders() == {}  # another run holds the lock: this one does nothing
    finally:
        release.set()
        thread.join(10)
    assert mail.outbox == []
    assert send_reminders() == {"requests": 2, "reminders": 0, "notices": 0, "failures": 0}


def test_a_reminder_the_mail_server_refused_is_sent_at_a_later_sweep(
    reach_route: Route, reach_app: DifyApp
) -> None:
    form = captured(reach_app, hours_left=48)
    assert sweep(T0 + 24 * H)["reminders"] == 2
    mail.outbox.clear()
    refused = OSError("mail server unavailable")
    with mock.patch(
        "django.core.mail.backends.locmem.EmailBackend.send_messages", side_effect=refused
    ):
        assert sweep(T0 + 47 * H)["reminders"] == 0
    recipient = FormRecipient.objects.get(form=form, email=GUEST)
    assert recipient.reminders_sent == [86400] and "unavailable" in recipient.last_error
    assert sweep(T0 + 47 * H + dt.timedelta(minutes=1))["reminders"] == 0  # not yet again
    assert sweep(T0 + 47 * H + dt.timedelta(minutes=6))["reminders"] == 2
    assert [m.to for m in mail.outbox].count([GUEST]) == 1
    recipient.refresh_from_db()
    assert recipient.reminders_sent == [86400, 3600] and recipient.next_reminder_at is None


def test_a_form_that_never_expires_is_reminded_of_after_its_first_email(
    reach_route: Route, reach_app: DifyApp
) -> None:
    with mock.patch("django.utils.timezone.now", return_value=T0):
        form = make_form(reach_app, expires_in=None)
    Form.objects.filter(pk=form.pk).update(created_at=T0)
    assert notify.send_form_emails(form.pk, now=T0) == 2
    mail.outbox.clear()
    recipient = FormRecipient.objects.get(form=form, email=GUEST)
    # Nothing to count back from: the route's 24h,1h come 1 h and 24 h after the first email.
    assert recipient.next_reminder_at == T0 + H
    assert sweep(T0 + 0.5 * H)["reminders"] == 0
    assert sweep(T0 + H)["reminders"] == 2
    assert subjects() == [
        (GUEST, "Reminder: Manager approval (payroll) waits for your decision"),
        (GUEST_ZH, "提醒：Manager approval（payroll）等待您的决定"),  # noqa: RUF001
    ]
    message = next(m for m in mail.outbox if m.to == [GUEST])
    assert "A form you were asked about has not been answered yet." in message.body
    assert "expires" not in message.body.split("/r/")[0]
    mail.outbox.clear()
    assert sweep(T0 + 23 * H)["reminders"] == 0
    assert sweep(T0 + 24 * H)["reminders"] == 2
    mail.outbox.clear()
    assert sweep(T0 + 100 * H)["reminders"] == 0
    recipient.refresh_from_db()
    assert sorted(recipient.reminders_sent) == [3600, 86400]
    assert recipient.next_reminder_at is None


def test_after_a_pause_a_form_that_never_expires_gets_only_its_latest_reminder() -> None:
    sent = T0
    assert notify.due_reminder([86400, 3600], None, sent, [], sent + 30 * H) == (
        86400,
        [86400, 3600],
    )
    assert notify.due_reminder([86400, 3600], None, sent, [], sent + 0.5 * H) == (None, [])


def test_reminders_go_on_when_dify_refuses_a_decision_and_the_form_asks_again(
    reach_route: Route, reach_app: DifyApp
) -> None:
    form = captured(reach_app, hours_left=48)
    decision = form.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST)
    # Dify is down: the decision waits, the 24 h reminder falls due meanwhile, and none goes.
    for hour in (24, 25, 30):
        assert sweep(T0 + hour * H)["reminders"] == 0
    assert mail.outbox == []
    # Dify comes back and refuses the values (400 invalid_form_data): the form asks again.
    Decision.finish(
        decision.pk,
        status=Decision.Status.REJECTED,
        form_status=Form.Status.PENDING,
        reason="bad values",
        verb="decision_rejected",
    )
    assert sweep(T0 + 31 * H)["reminders"] == 2  # the reminder held back, now it may go
    assert sweep(T0 + 40 * H)["reminders"] == 0
    mail.outbox.clear()
    assert sweep(T0 + 47 * H)["reminders"] == 2
    assert {m.subject for m in mail.outbox if m.to == [GUEST]} == {
        "Reminder: Manager approval (payroll) expires in 60 minutes"
    }


def test_a_reminder_reads_the_time_left_as_of_when_it_was_due(
    reach_route: Route, reach_app: DifyApp
) -> None:
    captured(reach_app, hours_left=48)
    # The beat's sweep comes up to a minute after the reminder was due.
    sweep(T0 + 47 * H + dt.timedelta(seconds=50))
    assert {m.subject for m in mail.outbox if m.to == [GUEST]} == {
        "Reminder: Manager approval (payroll) expires in 60 minutes"
    }


def test_a_reminder_late_after_a_pause_reads_the_time_actually_left(
    reach_route: Route, reach_app: DifyApp
) -> None:
    captured(reach_app, hours_left=48)
    # The worker was down for half an hour: 30 minutes are left, and a sweep's interval at most
    # is added (the sweep may read its clock up to that late).
    sweep(T0 + 47.5 * H)
    assert {m.subject for m in mail.outbox if m.to == [GUEST]} == {
        "Reminder: Manager approval (payroll) expires in 31 minutes"
    }


def test_a_reminder_says_who_is_handling_the_form(
    reach_app: DifyApp, reviewer: Any, other_reviewer: Any
) -> None:
    route(
        reach_app,
        users=[reviewer, other_reviewer],
        email_reviewers=True,
        recipients=[(GUEST, "en"), (GUEST_ZH, "zh-hans")],
        allow_guests=True,
        reminders="24h,1h",
    )
    with mock.patch("django.utils.timezone.now", return_value=T0):
        form = make_form(reach_app, expires_in=None)
    Form.objects.filter(pk=form.pk).update(expiration_time=T0 + 48 * H, created_at=T0)
    form.refresh_from_db()
    assert notify.send_form_emails(form.pk, now=T0) == 4
    mail.outbox.clear()
    Form.objects.get(pk=form.pk).claim(reviewer)
    assert sweep(T0 + 24 * H)["reminders"] == 4
    bodies = {m.to[0]: (m.body, html_of(m)) for m in mail.outbox}
    for text in bodies["bob@example.com"]:
        assert "Alice is handling this form." in text
    for text in bodies[GUEST]:
        assert "A reviewer is handling this form." in text and "Alice" not in text
    for text in bodies[GUEST_ZH]:
        assert "\u4e00\u4f4d\u5ba1\u6279\u4eba\u6b63\u5728\u5904\u7406\u6b64\u8868\u5355" in text
    for text in bodies["alice@example.com"]:
        assert "handling" not in text  # her own: nothing to say
