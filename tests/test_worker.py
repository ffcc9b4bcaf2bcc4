from __future__ import annotations

import subprocess
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from inbox.models import AuditEntry, DifyApp, Form, Run
from inbox.tasks import sweep_expired_forms
from tests.conftest import wait_until
from tests.delivery.helpers import simulated_forms


def _form(app: DifyApp, form_id: str, minutes: int) -> Form:
    run = Run.objects.create(app=app, dify_user="u", workflow_run_id=f"R-{form_id}")
    return Form.objects.create(
        run=run,
        form_id=form_id,
        node_id="n",
        form_token="t",
        expiration_time=timezone.now() + timedelta(minutes=minutes),
    )


@pytest.mark.smoke
def test_sweep_expires_only_pending_forms_past_their_time(dify_app: DifyApp) -> None:
    old = _form(dify_app, "F-old", -5)
    fresh = _form(dify_app, "F-fresh", 30)
    done = _form(dify_app, "F-done", -5)
    Form.objects.filter(pk=done.pk).update(status=Form.Status.SUBMITTED, form_token="")
    assert sweep_expired_forms() == 1
    statuses = dict(Form.objects.values_list("form_id", "status"))
    assert statuses == {"F-old": "expired", "F-fresh": "pending", "F-done": "submitted"}
    assert AuditEntry.objects.get(verb="form_expired").object_id == str(old.pk)
    assert fresh.pk


def test_expired_sessions_are_cleared_and_live_ones_kept(db: None) -> None:
    from django.conf import settings
    from django.contrib.sessions.models import Session

    from inbox.celery import app
    from inbox.tasks import clear_expired_sessions

    now = timezone.now()
    Session.objects.create(session_key="old", session_data="", expire_date=now - timedelta(1))
    Session.objects.create(session_key="live", session_data="", expire_date=now + timedelta(1))
    clear_expired_sessions()
    assert list(Session.objects.values_list("session_key", flat=True)) == ["live"]
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "inbox.tasks.clear_expired_sessions" in scheduled
    assert "inbox.tasks.clear_expired_sessions" in app.tasks


@pytest.mark.worker
def test_a_task_travels_through_redis_to_a_real_worker(
    celery_worker_process: subprocess.Popen[bytes], dify_app: DifyApp
) -> None:
    form = _form(dify_app, "F-worker", -1)
    sweep_expired_forms.delay()
    wait_until(lambda: Form.objects.get(pk=form.pk).status == Form.Status.EXPIRED, timeout=60)
    assert AuditEntry.objects.filter(verb="form_expired", object_id=str(form.pk)).count() == 1


@pytest.mark.worker
def test_opening_a_form_answered_in_dify_meanwhile_turns_it_answered_elsewhere(
    celery_worker_process: subprocess.Popen[bytes],
    simulator: Any,
    simulator_dify_app: Any,
    admin_client: Client,
) -> None:
    [form] = simulated_forms(simulator, simulator_dify_app("refund-approval"), 1)
    assert simulator.submit_elsewhere(form.form_id, "approve", {"decision_note": "ok"})
    page = admin_client.get(f"/forms/{form.public_id}/").content.decode()
    # Nothing known yet when the page is read; the worker asks Dify, and the page's next poll
    # finds the form closed.
    assert "Answered elsewhere" not in page and "Answered in Dify" not in page
    wait_until(
        lambda: Form.objects.get(pk=form.pk).status == Form.Status.ANSWERED_ELSEWHERE, timeout=60
    )
    live = admin_client.get(f"/forms/{form.public_id}/live", headers={"HX-Request": "true"})
    assert "Answered in Dify" in live.content.decode()
