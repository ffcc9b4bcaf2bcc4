"""Emails while the mail server fails: refused for minutes or hours, hanging until the task's
time limit, or the worker killed mid-send. A first email is never abandoned while its form still
asks (tried again after a growing wait), nor passes for sent when it was not; a closing notice
is tried again a few times. The clock is passed in (`now`), as the sweep's beat would."""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth.models import User
from django.core import mail
from django.core.mail import EmailMultiAlternatives
from django.db import connection
from django.test import Client
from django.utils import timezone

from inbox import notify, tasks
from inbox.models import DifyApp, Form, FormRecipient
from tests.reach.factories import make_form, route

M = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)
T0 = timezone.now().replace(second=0, microsecond=0)
GUESTS = [f"guest{n}@example.net" for n in range(1, 5)]
REFUSED = ConnectionRefusedError(111, "Connection refused")
SEND = EmailMultiAlternatives.send  # the real one, as the locmem backend sends it


def scripted(*outcomes: BaseException | None) -> Any:
    """A mail server that answers each send in turn: None sends, an exception is raised (in the
    send, as a time limit or a refused connection would be); past the script, it sends."""
    left = iter(outcomes)

    def send(message: Any) -> Any:
        outcome = next(left, None)
        if outcome is not None:
            raise outcome
        return SEND(message)

    return send


def captured(app: DifyApp, *, hours_left: float = 48) -> Form:
    """A form captured at T0, routed to four guests, its first emails not sent yet."""
    route(app, recipients=GUESTS, allow_guests=True, reminders="24h,1h")
    with mock.patch("django.utils.timezone.now", return_value=T0):
        form = make_form(app, expires_in=None)
    Form.objects.filter(pk=form.pk).update(expiration_time=T0 + hours_left * H, created_at=T0)
    FormRecipient.objects.filter(form=form).update(created_at=T0)
    form.refresh_from_db()
    return form


def unsent() -> list[str]:
    return sorted(
        FormRecipient.objects.filter(sent_at__isnull=True).values_list("email", flat=True)
    )


def emailed() -> list[str]:
    return sorted(m.to[0] for m in mail.outbox)


@pytest.fixture
def mail_server() -> Iterator[mock.MagicMock]:
    """The mail server as the test scripts it: `side_effect` refuses, hangs or sends."""
    server = mock.MagicMock(side_effect=SEND)
    with mock.patch.object(EmailMultiAlternatives, "send", autospec=True, side_effect=server):
        yield server


def test_the_task_s_time_limit_stops_the_sending_and_the_sweep_sends_the_rest(
    reach_app: DifyApp, mail_server: mock.MagicMock
) -> None:
    form = captured(reach_app)
    # The second send hangs until the task's soft limit is raised inside it.
    mail_server.side_effect = scripted(None, SoftTimeLimitExceeded())
    # The task stops at once: no send after the soft limit, so the hard limit never kills it.
    assert notify.send_form_emails(form.pk, now=T0) == 1
    assert mail_server.call_count == 2
    assert len(unsent()) == 3
    # The row being sent when time ran out is given back, not left as sent.
    interrupted = FormRecipient.objects.get(email=mail_server.call_args_list[1].args[0].to[0])
    assert interrupted.sent_at is None and interrupted.send_attempts == 1
    assert notify.send_due_emails(T0 + 2 * M)["requests"] == 3
    assert unsent() == [] and emailed() == GUESTS


def test_the_sweep_stops_at_the_time_limit_and_the_next_one_goes_on(
    reach_app: DifyApp, mail_server: mock.MagicMock
) -> None:
    captured(reach_app)
    mail_server.side_effect = scripted(None, SoftTimeLimitExceeded())
    counts = notify.send_due_emails(T0 + 2 * M)
    assert counts["requests"] == 1 and mail_server.call_count == 2
    assert notify.send_due_emails(T0 + 4 * M)["requests"] == 3
    assert unsent() == []


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_send_leaves_the_email_to_a_later_sweep(
    reach_app: DifyApp, mail_server: mock.MagicMock
) -> None:
    form = captured(reach_app)
    hanging, let_go = threading.Event(), threading.Event()
    stuck: list[str] = []

    def hangs_in_the_worker(message: Any) -> Any:
        if threading.current_thread() is worker:
            # The worker's connection never answers; its process is killed at the hard limit.
            stuck.append(message.to[0])
            hanging.set()
            let_go.wait(30)
            raise ConnectionAbortedError("killed")
        return SEND(message)

    def run_task() -> None:
        try:
            notify.send_form_emails(form.pk, now=T0)
        finally:
            connection.close()

    mail_server.side_effect = hangs_in_the_worker
    worker = threading.Thread(target=run_task)
    worker.start()
    try:
        assert hanging.wait(10)
        # The sweep sends the others at once; the one being sent is left to its sender...
        assert notify.send_due_emails(T0 + 2 * M)["requests"] == 3
        assert unsent() == stuck
        assert notify.send_due_emails(T0 + 4 * M)["requests"] == 0
        # ...until its claim is older than any sending task may live: it was never sent.
        later = T0 + notify.SEND_CLAIM + M
        assert notify.send_due_emails(later)["requests"] == 1
    finally:
        let_go.set()
        worker.join(30)
    assert unsent() == [] and emailed() == GUESTS
    # The killed worker's late end does not undo what the sweep did.
    assert FormRecipient.objects.get(email=stuck[0]).sent_at == later


def test_a_claim_outlasts_every_task_that_sends_and_a_hung_connection_fits_in_one() -> None:
    sending = [tasks.send_form_emails, tasks.send_reminders, tasks.send_failure_notice]
    assert notify.SEND_CLAIM.total_seconds() > max(task.time_limit for task in sending)
    assert settings.EMAIL_TIMEOUT * 2 <= min(task.soft_time_limit for task in sending)


def test_first_emails_outlast_a_mail_outage_of_any_length(
    reach_app: DifyApp, mail_server: mock.MagicMock, client: Client, admin_user: User
) -> None:
    form = captured(reach_app)
    mail_server.side_effect = REFUSED
    notify.send_form_emails(form.pk, now=T0)
    for minute in range(1, 180):  # three hours of sweeps, one a minute
        notify.send_due_emails(T0 + minute * M)
    rows = FormRecipient.objects.filter(form=form)
    # Tried after 1, 5, 15, then every 30 minutes: not once a minute, and not given up.
    assert {r.send_attempts for r in rows} == {9}
    assert {r.sent_at for r in rows} == {None}
    assert {r.last_error for r in rows} == {"[Errno 111] Connection refused"}
    client.force_login(admin_user)
    assert "<strong>4</strong>emails not sent yet" in client.get("/dashboard/").content.decode()

    mail_server.side_effect = SEND  # the mail server is back
    for minute in range(180, 211):
        notify.send_due_emails(T0 + minute * M)
    assert unsent() == [] and emailed() == GUESTS
    assert "<strong>0</strong>emails not sent yet" in client.get("/dashboard/").content.decode()
    # Their reminders follow, as for an email sent on time.
    mail.outbox.clear()
    assert notify.send_due_emails(T0 + 24 * H)["reminders"] == 4


def test_a_first_email_unsent_when_its_form_closed_is_given_up_and_logged_once(
    reach_app: DifyApp, mail_server: mock.MagicMock, caplog: pytest.LogCaptureFixture
) -> None:
    form = captured(reach_app, hours_left=2)
    mail_server.side_effect = REFUSED
    notify.send_form_emails(form.pk, now=T0)
    for minute in range(1, 120):
        notify.send_due_emails(T0 + minute * M)
    Form.objects.filter(pk=form.pk).update(status=Form.Status.EXPIRED, form_token="")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inbox.notify"):
        for minute in range(120, 180):
            notify.send_due_emails(T0 + minute * M)
    given_up = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 4
    assert re.match(
        rf"form {form.pk} closed before its first email to recipient \d+ could be sent; given "
        r"up after \d+ attempts \(last error: \[Errno 111\] Connection refused\)",
        given_up[0],
    )
    assert mail_server.call_count == 4 * 7  # nothing tried once it closed
    assert mail.outbox == []


def test_a_closing_notice_the_mail_server_refused_is_sent_at_a_later_sweep(
    reach_app: DifyApp, mail_server: mock.MagicMock
) -> None:
    form = captured(reach_app, hours_left=2)
    notify.send_form_emails(form.pk, now=T0)
    mail.outbox.clear()
    closed = T0 + 2 * H
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=closed
    )
    mail_server.side_effect = REFUSED
    assert notify.send_due_emails(closed + M)["notices"] == 0
    mail_server.side_effect = SEND
    assert notify.send_due_emails(closed + M + M // 2)["notices"] == 0  # not yet again
    assert notify.send_due_emails(closed + 2 * M)["notices"] == 4
    assert emailed() == GUESTS
    assert {m.subject for m in mail.outbox} == {"Expired: Manager approval (payroll)"}
    assert notify.send_due_emails(closed + 3 * M)["notices"] == 0  # once


def test_a_closing_notice_is_given_up_after_its_attempts(
    reach_app: DifyApp, mail_server: mock.MagicMock, caplog: pytest.LogCaptureFixture
) -> None:
    form = captured(reach_app, hours_left=2)
    notify.send_form_emails(form.pk, now=T0)
    closed = T0 + 2 * H
    Form.objects.filter(pk=form.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=closed
    )
    mail_server.reset_mock()
    mail_server.side_effect = REFUSED
    with caplog.at_level(logging.WARNING, logger="inbox.notify"):
        for minute in range(1, 4 * 60):
            notify.send_due_emails(closed + minute * M)
    assert mail_server.call_count == 4 * notify.MAX_NOTICE_ATTEMPTS
    given_up = [r for r in caplog.records if "closing notice" in r.getMessage()]
    assert len(given_up) == 4
    assert not FormRecipient.objects.filter(closed_notice_at__isnull=True).exists()
