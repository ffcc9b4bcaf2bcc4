"""Dify's form token is a bearer secret. Through a whole form's life (capture from a real
stream, routing, emails, reminders, a lapsed link and the new link it sends, the guest's page,
upload, decision, delivery, the closing notice, every admin and reviewer page), it must not
appear in any email, any page, any log line, or any audit entry."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from inbox import notify
from inbox.models import (
    ApiToken,
    AuditEntry,
    Decision,
    Form,
    FormRecipient,
    Route,
    Run,
    RunEvent,
)
from inbox.tasks import deliver_decision, send_reminders
from tests.reach.conftest import GUEST
from tests.reach.factories import make_form, route


class RecordingClient(Client):
    """A test client that keeps every response body it was given."""

    pages: list[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pages = []

    def request(self, **request: Any) -> Any:
        response = super().request(**request)
        if getattr(response, "streaming", False):
            body = b"".join(response.streaming_content)
            response.streaming_content = [body]
        else:
            body = response.content
        self.pages.append(
            f"{request.get('PATH_INFO')} {response.status_code}\n{body.decode(errors='replace')}"
        )
        for name, value in response.items():
            self.pages.append(f"header {name}: {value}")
        return response


@pytest.fixture
def captured_form(
    simulator: Any, simulator_dify_app: Any, reviewer: User, admin_user: User
) -> Form:
    """A refund approval captured from a real run on the simulator, routed to alice and to a
    guest by email."""
    app = simulator_dify_app("contract-review")
    route(app, users=[reviewer], recipients=[(GUEST, "en")], allow_guests=True, reminders="1h")
    started = simulator.start_run("contract-review", user="inbox-secret-run")
    run = Run.objects.create(
        app=app,
        workflow_run_id=started.workflow_run_id,
        task_id=started.task_id,
        dify_user="inbox-secret-run",
        follow_wanted=False,
    )
    run.apply_events(started.events)
    form = Form.objects.get(run=run)
    assert form.form_token == started.forms[0]["form_token"] and form.form_token
    return form


def test_the_form_token_never_leaves_the_database(
    captured_form: Form,
    reviewer: User,
    other_reviewer: User,
    admin_user: User,
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # every request URL, which would hold it
    form = captured_form
    token = form.form_token

    # Emails: the request, then a reminder.
    assert notify.send_form_emails(form.pk) == 1
    recipient = form.recipients.get(email=GUEST)
    late = form.expiration_time - dt.timedelta(minutes=30)  # type: ignore[operator]
    assert notify.send_due_emails(late)["reminders"] == 1

    # A link too old to open the form, were it a form without an expiry: its page offers a new
    # link, and sends one.
    guest = RecordingClient()
    expires = form.expiration_time
    Form.objects.filter(pk=form.pk).update(expiration_time=None)
    with mock.patch("time.time", return_value=time.time() - 31 * 86400):
        fresh = FormRecipient.objects.get(pk=recipient.pk)  # with the form as it is now
        lapsed = notify.link_path(notify.link_token(fresh))
    assert "Email me a new link" in guest.get(lapsed).content.decode()
    assert "We sent a new link" in guest.post(f"{lapsed}renew", follow=True).content.decode()
    Form.objects.filter(pk=form.pk).update(expiration_time=expires)

    # The guest: page, live poll, an upload, a refused decision, then the decision.
    link = notify.link_path(notify.link_token(recipient))
    assert guest.get(link).status_code == 200
    guest.get(f"{link}live?state=open")
    upload = guest.post(
        f"{link}files/signed_contract",
        {"file": SimpleUploadedFile("contract.pdf", b"%PDF-1.4 signed", "application/pdf")},
    )
    assert upload.status_code == 302
    upload_id = str(form.uploads.get().public_id)
    guest.post(f"{link}decide", {"action": "approve"})  # missing inputs: refused
    decided = guest.post(
        f"{link}decide",
        {
            "action": "approve",
            "in_assessment": "Fine.",
            "in_reviewer": "Priya Raman (Commercial)",
            "in_risk_level": "low",
            "in_signed_contract": upload_id,
            "in_annexes": "",
        },
    )
    assert decided.status_code == 302, decided.content.decode()[-3000:]
    decision = Decision.objects.get(form=form)
    assert deliver_decision(decision.pk) == "delivered"
    assert simulator.submit_count(form.form_id) == 1

    # The closing notice goes to nobody (the guest decided) but runs through the sweep.
    Form.objects.filter(pk=form.pk).update(updated_at=timezone.now())
    send_reminders()

    # Reviewers, staff and the API look at everything there is.
    alice, bob, staff = RecordingClient(), RecordingClient(), RecordingClient()
    alice.force_login(reviewer)
    bob.force_login(other_reviewer)
    staff.force_login(admin_user)
    for client in (alice, bob, staff):
        client.get("/")
        client.get("/?status=all")
        client.get(f"/forms/{form.public_id}/")
        client.get(f"/forms/{form.public_id}/live?state=open")
        client.get(f"/runs/{form.run.public_id}/")
        client.get("/runs/")
    staff.get("/dashboard/")
    for model in ("form", "run", "decision", "upload", "runevent", "auditentry", "route"):
        staff.get(reverse(f"admin:inbox_{model}_changelist"))
    staff.get(reverse("admin:inbox_form_change", args=[form.pk]))
    staff.get(reverse("admin:inbox_run_change", args=[form.run.pk]))
    staff.get(reverse("admin:inbox_decision_change", args=[decision.pk]))
    for event in RunEvent.objects.filter(run=form.run):
        staff.get(reverse("admin:inbox_runevent_change", args=[event.pk]))
    staff.post(
        reverse("admin:inbox_auditentry_changelist"),
        {
            "action": "export_csv",
            "_selected_action": [str(pk) for pk in AuditEntry.objects.values_list("pk", flat=True)],
        },
    )
    api = RecordingClient()
    raw = ApiToken.issue(reviewer)[1]
    api.get(f"/api/v1/forms/{form.public_id}", HTTP_AUTHORIZATION=f"Bearer {raw}")
    api.get("/api/v1/forms?status=all", HTTP_AUTHORIZATION=f"Bearer {raw}")
    api.get(f"/api/v1/runs/{form.run.public_id}", HTTP_AUTHORIZATION=f"Bearer {raw}")

    # What we scan, and that there was plenty of it.
    emails = [
        "\n".join([m.subject, m.body, *(c for c, _kind in m.alternatives), m.message().as_string()])
        for m in mail.outbox
    ]
    pages = [p for c in (guest, alice, bob, staff, api) for p in c.pages]
    logs = [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    audit = [str(e.details) + e.object_repr for e in AuditEntry.objects.all()]
    assert len(emails) == 3 and len(pages) > 100 and len(logs) > 5
    assert any(token not in p and "Legal review" in p for p in pages)
    assert any("/form/human_input/" in line for line in logs), "the client's request lines"

    leaks = [text[:200] for text in emails + pages + logs + audit if token in text]
    assert leaks == []
    assert Route.objects.count() == 1


@pytest.mark.django_db
def test_a_guest_link_refused_or_served_is_logged_without_its_token(
    client: Client, caplog: Any, reach_route: Route, reach_app: Any
) -> None:
    """An emailed link is a password until it lapses: Django's warning about a refused link and
    the web servers' request lines keep its path, not its token."""
    caplog.set_level(logging.INFO)
    recipient = make_form(reach_app).recipients.get(email=GUEST)
    token = notify.link_token(recipient)
    tampered = token[:-3] + ("abc" if not token.endswith("abc") else "xyz")
    assert client.get(f"/r/{tampered}/").status_code in (400, 404, 410)
    assert "/r/***/" in caplog.text
    # What runserver and gunicorn write for each request.
    logging.getLogger("django.server").info('"%s" %s %s', f"GET /r/{token}/ HTTP/1.1", 200, 512)
    logging.getLogger("gunicorn.access").info(
        '%(h)s "%(r)s" %(s)s', {"h": "10.0.0.1", "r": f"POST /r/{token}/decide HTTP/1.1", "s": 302}
    )
    # A link whose characters a mail client or proxy percent-encoded opens the same page.
    encoded = "%2E" + token[1:].replace(":", "%3A")
    assert client.get(f"/r/{encoded}/").status_code == 200
    logging.getLogger("gunicorn.access").info('"GET /r/%s/ HTTP/1.1" 200', encoded)
    # Other spellings of the same address, and the link in a Referer header.
    for path in (f"/%72/{token}/", f"/r%2F{token}/"):
        logging.getLogger("gunicorn.access").info('"GET %s HTTP/1.1" 200', path)
    assert client.get(f"/%72/{token}/").status_code == 200
    logging.getLogger("django.server").info("Referer: https://inbox.example/r/%s/decide", token)
    assert token not in caplog.text and tampered not in caplog.text
    assert token.split(":")[-1] not in caplog.text and encoded[6:] not in caplog.text
    assert token.split(":")[0][:20] not in caplog.text
    assert '"GET /r/***/ HTTP/1.1" 200 512' in caplog.text
    assert '10.0.0.1 "POST /r/***/decide HTTP/1.1" 302' in caplog.text


@pytest.mark.django_db
def test_a_guest_post_refused_by_the_csrf_check_is_logged_without_its_token(
    caplog: Any, reach_route: Route, reach_app: Any
) -> None:
    """Django's CSRF check logs the path of the POST it refuses under its own logger: a guest's
    decision or request for a new link sent without the page's token (an old tab, cookies
    cleared) must not put the link in the log."""
    caplog.set_level(logging.INFO)
    recipient = make_form(reach_app).recipients.get(email=GUEST)
    token = notify.link_token(recipient)
    browser = Client(enforce_csrf_checks=True)
    for action in ("decide", "renew"):
        assert browser.post(f"/r/{token}/{action}", {"action": "approve"}).status_code == 403
    assert "Forbidden (CSRF cookie not set.): /r/***/decide" in caplog.text
    assert "Forbidden (CSRF cookie not set.): /r/***/renew" in caplog.text
    assert token not in caplog.text


@pytest.mark.django_db
def test_a_search_is_logged_without_its_words(client: Client, caplog: Any) -> None:
    """A search's words are most often a person's name: the request lines (and a refused
    request's warning) keep the path and the other parameters, not the search."""
    caplog.set_level(logging.INFO)
    access = logging.getLogger("gunicorn.access")
    access.info('"%s" %s', "GET /api/v1/forms?app=claim-review&q=Kundenmann HTTP/1.1", 200)
    logging.getLogger("django.server").info(
        '"%s" %s', "GET /?q=Erika+M%C3%BCller&status=all HTTP/1.1", 200
    )
    # The admin carries its list's search to the page opened from it; a login page its next.
    access.info("GET /admin/inbox/run/7/change/?_changelist_filters=q%3DMustermann3 HTTP/1.1")
    access.info("GET /login/?next=/runs/%3Fstatus%3Dall%26q%3DHans%26page%3D2 HTTP/1.1")
    assert client.get("/admin/inbox/decision/?q=Kundenmann2").status_code == 302
    text = caplog.text
    for words in ("Kundenmann", "M%C3%BCller", "Erika", "Mustermann3", "Hans"):
        assert words not in text
    assert '"GET /api/v1/forms?app=claim-review&q=*** HTTP/1.1" 200' in text
    assert '"GET /?q=***&status=all HTTP/1.1" 200' in text
    assert "/runs/%3Fstatus%3Dall%26q%3D***%26page%3D2" in text
