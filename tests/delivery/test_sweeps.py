"""The periodic tasks: stuck and lost deliveries, expiry, reconcile, and their locks."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone

from inbox.models import AuditEntry, Decision, DifyApp, Form, Run
from inbox.tasks import (
    deliver_decision,
    periodic_lock,
    reconcile_pending_forms,
    sweep_deliveries,
    sweep_expired_forms,
)
from tests.delivery.helpers import make_form
from tests.delivery.scripted import Reply, ScriptedDify, error

pytestmark = pytest.mark.smoke


@pytest.fixture
def dify() -> Iterator[ScriptedDify]:
    server = ScriptedDify()
    yield server
    server.close()


@pytest.fixture
def app(db: None, dify: ScriptedDify, settings: Any) -> DifyApp:
    settings.INBOX_DELIVERY_STUCK_SECONDS = 60
    settings.INBOX_DELIVERY_REQUEUE_AFTER_SECONDS = 60
    settings.INBOX_RECONCILE_AFTER_SECONDS = 600
    return DifyApp.objects.create(name="refunds", base_url=dify.base_url, api_key="app-key-123")


@pytest.fixture
def decided(
    app: DifyApp, reviewer: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> Decision:
    form = make_form(app)
    with django_capture_on_commit_callbacks(execute=False):
        return form.decide(action_id="approve", inputs={"note": "ok"}, reviewer=reviewer)


def _ago(seconds: float) -> dt.datetime:
    return timezone.now() - dt.timedelta(seconds=seconds)


def test_a_delivery_left_by_a_dead_worker_is_queued_again(
    decided: Decision, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    # The worker claimed it two minutes ago and never came back.
    Decision.objects.filter(pk=decided.pk).update(
        status=Decision.Status.DELIVERING, attempts=1, delivery_started_at=_ago(120)
    )
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert sweep_deliveries() == {"stuck": 1, "resent": 0, "released": 0}
    assert len(queued) == 1
    decided.refresh_from_db()
    assert decided.status == "queued" and decided.maybe_applied
    assert decided.last_error == "The delivery was interrupted; trying again."
    assert AuditEntry.objects.filter(verb="delivery_recovered", object_id=str(decided.pk)).exists()
    # A delivery started recently is left alone: its worker may still be waiting for Dify.
    Decision.objects.filter(pk=decided.pk).update(
        status=Decision.Status.DELIVERING, delivery_started_at=_ago(5)
    )
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert sweep_deliveries() == {"stuck": 0, "resent": 0, "released": 0}
    assert not queued


def test_a_queued_decision_whose_task_was_lost_is_sent_again_once(
    decided: Decision, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    Decision.objects.filter(pk=decided.pk).update(next_attempt_at=_ago(300))
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert sweep_deliveries() == {"stuck": 0, "resent": 1, "released": 0}
        # Due again from now: the next tick does not send it a second time.
        assert sweep_deliveries() == {"stuck": 0, "resent": 0, "released": 0}
    assert len(queued) == 1
    assert AuditEntry.objects.filter(verb="delivery_resent").count() == 1


def test_a_decision_waiting_for_its_retry_is_not_resent(
    decided: Decision, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    Decision.objects.filter(pk=decided.pk).update(
        next_attempt_at=timezone.now() + dt.timedelta(minutes=10)
    )
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert sweep_deliveries() == {"stuck": 0, "resent": 0, "released": 0}
    assert not queued


def test_a_recovered_delivery_that_had_landed_counts_once(
    decided: Decision, dify: ScriptedDify, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    form = decided.form
    Decision.objects.filter(pk=decided.pk).update(
        status=Decision.Status.DELIVERING, attempts=1, delivery_started_at=_ago(120)
    )
    with django_capture_on_commit_callbacks(execute=False):
        sweep_deliveries()
    # Dify applied the first call before the worker died: the second gets 412, and the run's
    # events show our action.
    dify.on("POST", "/form/human_input/", error(412, "human_input_form_submitted", "submitted"))
    dify.on(
        "GET",
        "/workflow/",
        Reply(
            events=[
                {
                    "event": "human_input_form_filled",
                    "data": {
                        "node_id": form.node_id,
                        "action_id": "approve",
                        "action_text": "Approve",
                    },
                },
                {"event": "workflow_finished", "data": {"status": "succeeded"}},
            ]
        ),
    )
    assert deliver_decision(decided.pk) == "delivered"
    decided.refresh_from_db()
    assert (decided.status, decided.attempts) == ("delivered", 2)
    assert AuditEntry.objects.filter(verb="decision_delivered").count() == 1


def test_sweep_expired_forms_skips_when_another_run_holds_the_lock(
    app: DifyApp,
) -> None:
    make_form(app, expires_in=dt.timedelta(minutes=-1))
    with periodic_lock("sweep_expired_forms") as held:
        assert held
        other: list[int] = []
        # Another worker process would hold its own connection; a thread does too.
        thread = threading.Thread(target=lambda: other.append(_in_thread(sweep_expired_forms)))
        thread.start()
        thread.join()
        assert other == [0]
    assert sweep_expired_forms() == 1


def _in_thread(task: Callable[[], int]) -> int:
    try:
        return task()
    finally:
        connection.close()


def test_reconcile_finds_forms_answered_or_expired_in_dify(
    app: DifyApp, dify: ScriptedDify
) -> None:
    stale = _ago(3600)
    answered = make_form(app, form_token="tok-answered")
    expired = make_form(app, form_token="tok-expired")
    open_ = make_form(app, form_token="tok-open")
    fresh = make_form(app, form_token="tok-fresh")
    Form.objects.filter(pk__in=[answered.pk, expired.pk, open_.pk]).update(created_at=stale)
    dify.on("GET", "/form/human_input/tok-answered", error(412, "human_input_form_submitted", "x"))
    dify.on("GET", "/form/human_input/tok-expired", error(412, "human_input_form_expired", "x"))
    dify.on(
        "GET",
        "/form/human_input/tok-open",
        Reply(
            body={
                "form_content": "",
                "inputs": [],
                "user_actions": [],
                "resolved_default_values": {},
            }
        ),
    )
    counts = reconcile_pending_forms()
    assert counts == {"checked": 3, "answered_elsewhere": 1, "expired": 1, "errors": 0}
    statuses = dict(Form.objects.values_list("pk", "status"))
    assert statuses == {
        answered.pk: "answered_elsewhere",
        expired.pk: "expired",
        open_.pk: "pending",
        fresh.pk: "pending",  # captured just now: the follower has it, nothing to ask
    }
    assert Run.objects.get(pk=answered.run_id).follow_snapshot
    # Checked forms wait their turn again.
    assert reconcile_pending_forms() == {
        "checked": 0,
        "answered_elsewhere": 0,
        "expired": 0,
        "errors": 0,
    }
    assert len(dify.requests("GET", "/form/human_input/")) == 3
    entry = AuditEntry.objects.get(verb="form_answered_elsewhere")
    assert entry.details["source"] == "reconcile"


def test_reconcile_leaves_an_unreachable_apps_forms_for_later(db: None, settings: Any) -> None:
    down = DifyApp.objects.create(name="down", base_url="http://127.0.0.1:9/v1", api_key="k")
    forms = [make_form(down) for _ in range(3)]
    for hours, form in zip((3, 2, 1), forms, strict=True):
        Form.objects.filter(pk=form.pk).update(created_at=_ago(hours * 3600))
    # One form is asked about per pass, not every form of the app; each pass asks another.
    for asked in (1, 2):
        counts = reconcile_pending_forms()
        assert counts == {"checked": 0, "answered_elsewhere": 0, "expired": 0, "errors": 1}
        assert (
            list(Form.objects.filter(checked_at__isnull=False).order_by("created_at"))
            == (forms[:asked])
        )


def test_admin_retry_delivery_action(decided: Decision, admin_user: User, client: Client) -> None:
    Decision.objects.filter(pk=decided.pk).update(
        status=Decision.Status.FAILED, attempts=12, last_error="Dify could not be reached"
    )
    Form.objects.filter(pk=decided.form_id).update(status=Form.Status.FAILED)
    client.force_login(admin_user)
    page = client.get("/admin/inbox/decision/").content.decode()
    assert "Dify could not be reached" in page
    response = client.post(
        "/admin/inbox/decision/",
        {"action": "retry_delivery", "_selected_action": [decided.pk]},
        follow=True,
    )
    assert "1 decision(s) queued for delivery again; 0 skipped" in response.content.decode()
    decided.refresh_from_db()
    assert (decided.status, decided.attempts, decided.form.status) == ("queued", 0, "submitting")
    entry = AuditEntry.objects.get(verb="delivery_retry_requested")
    assert entry.actor == admin_user
    # Nothing to retry on a decision that is not failed.
    response = client.post(
        "/admin/inbox/decision/",
        {"action": "retry_delivery", "_selected_action": [decided.pk]},
        follow=True,
    )
    assert "0 decision(s) queued for delivery again; 1 skipped" in response.content.decode()


def test_a_form_whose_decision_failed_for_good_is_given_back_or_closed_with_its_run(
    decided: Decision, admin_user: User, client: Client
) -> None:
    Decision.objects.filter(pk=decided.pk).update(
        status=Decision.Status.FAILED, last_error="400 invalid_form_data: note is too long"
    )
    Form.objects.filter(pk=decided.form_id).update(status=Form.Status.FAILED)
    client.force_login(admin_user)

    def failed_on_dashboard() -> str:
        page = client.get("/dashboard/").content.decode()
        return page.split("failed deliveries")[0].rsplit("<strong>", 1)[1].split("<")[0]

    assert failed_on_dashboard() == "1"
    response = client.post(
        "/admin/inbox/decision/",
        {"action": "reopen_form", "_selected_action": [decided.pk]},
        follow=True,
    )
    assert "1 form(s) given back to their reviewers for a new decision" in (
        response.content.decode()
    )
    form = Form.objects.get(pk=decided.form_id)
    assert form.status == Form.Status.PENDING
    decided.refresh_from_db()
    assert decided.status == Decision.Status.FAILED  # the record of what was tried
    assert AuditEntry.objects.get(verb="form_reopened").actor == admin_user
    assert failed_on_dashboard() == "0"
    # Failed again, then its run gone from Dify: the form closes with it.
    Form.objects.filter(pk=form.pk).update(status=Form.Status.FAILED)
    form.run.gone_from_dify(source="reconcile")
    assert Form.objects.get(pk=form.pk).status == Form.Status.GONE
    assert failed_on_dashboard() == "0"


def test_reconcile_asks_once_about_the_forms_of_an_app_dify_refuses_then_leaves_them(
    app: DifyApp, dify: ScriptedDify
) -> None:
    forms = [make_form(app) for _ in range(3)]
    Form.objects.filter(pk__in=[f.pk for f in forms]).update(created_at=_ago(3600))
    dify.on("GET", "/form/human_input/", error(401, "unauthorized", "Access token is invalid"))
    assert reconcile_pending_forms() == {
        "checked": 0,
        "answered_elsewhere": 0,
        "expired": 0,
        "errors": 1,
    }
    assert len(dify.requests("GET", "/form/human_input/")) == 1
    app.refresh_from_db()
    assert app.refusal == "401 unauthorized: Access token is invalid"
    # The forms wait, unchecked, for Dify to accept the key again (the run reconcile finds out).
    assert reconcile_pending_forms()["errors"] == 0
    assert len(dify.requests("GET", "/form/human_input/")) == 1
    assert not Form.objects.filter(checked_at__isnull=False).exists()


# --- a form's page asks Dify about it when someone opens it (tasks.check_form) ---


def test_opening_a_form_answered_in_dify_finds_it_answered_elsewhere(
    app: DifyApp,
    dify: ScriptedDify,
    admin_user: User,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from inbox import tasks

    # The worker's part, run at once: what a real worker does is in tests/test_worker.py.
    monkeypatch.setattr(tasks.check_form, "apply_async", lambda args: tasks.check_form(*args))
    form = make_form(app, form_token="tok-answered")
    dify.on("GET", "/form/human_input/tok-answered", error(412, "human_input_form_submitted", "x"))
    client.force_login(admin_user)
    client.get(f"/forms/{form.public_id}/")
    form.refresh_from_db()
    assert form.status == Form.Status.ANSWERED_ELSEWHERE
    assert AuditEntry.objects.get(verb="form_answered_elsewhere").details["source"] == (
        "check on view"
    )
    # The page read next says so.
    assert "Answered elsewhere" in client.get(f"/forms/{form.public_id}/").content.decode()
    assert len(dify.requests("GET", "/form/human_input/")) == 1


def test_a_form_is_asked_about_at_most_once_a_minute_however_often_it_is_opened(
    app: DifyApp,
    dify: ScriptedDify,
    admin_user: User,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    from inbox import tasks

    settings.INBOX_CHECK_ON_VIEW_SECONDS = 60
    queued: list[int] = []
    monkeypatch.setattr(tasks.check_form, "apply_async", lambda args: queued.append(args[0]))
    form = make_form(app)
    client.force_login(admin_user)
    for _ in range(3):
        assert client.get(f"/forms/{form.public_id}/").status_code == 200
    assert queued == [form.pk]
    # The page's own redraws (htmx, `part=body`) ask nothing.
    client.get(f"/forms/{form.public_id}/?part=body", headers={"HX-Request": "true"})
    assert queued == [form.pk]
    # Asked about by the reconcile a moment ago: nothing to ask.
    other = make_form(app)
    Form.objects.filter(pk=other.pk).update(checked_at=_ago(10))
    client.get(f"/forms/{other.public_id}/")
    assert queued == [form.pk]
    # A closed form is not asked about.
    done = make_form(app)
    Form.objects.filter(pk=done.pk).update(status=Form.Status.SUBMITTED, form_token="")
    client.get(f"/forms/{done.public_id}/")
    assert queued == [form.pk]
    # The task itself skips a form asked about since it was queued, and one still open is
    # stamped as asked about.
    dify.on(
        "GET",
        "/form/human_input/",
        Reply(
            body={
                "form_content": "",
                "inputs": [],
                "user_actions": [],
                "resolved_default_values": {},
            }
        ),
    )
    assert tasks.check_form(form.pk) == "open"
    assert tasks.check_form(form.pk) == "skipped"
    assert tasks.check_form(other.pk) == "skipped"
    assert len(dify.requests("GET", "/form/human_input/")) == 1
    assert Form.objects.get(pk=form.pk).checked_at is not None


def test_a_check_that_cannot_reach_dify_leaves_the_form_open(
    db: None, admin_user: User, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inbox import tasks

    monkeypatch.setattr(tasks.check_form, "apply_async", lambda args: tasks.check_form(*args))
    down = DifyApp.objects.create(name="down", base_url="http://127.0.0.1:9/v1", api_key="k")
    form = make_form(down)
    client.force_login(admin_user)
    assert client.get(f"/forms/{form.public_id}/").status_code == 200
    form.refresh_from_db()
    assert form.status == Form.Status.PENDING and form.checked_at is not None


# --- runs Dify no longer knows ---


def test_a_run_dify_no_longer_knows_is_gone_after_a_second_404_and_its_forms_close(
    app: DifyApp, dify: ScriptedDify, admin_user: User, client: Client, settings: Any
) -> None:
    from inbox.tasks import reconcile_runs
    from tests.delivery.helpers import make_run

    settings.INBOX_RUN_RECONCILE_AFTER_SECONDS = 60
    DifyApp.objects.filter(pk=app.pk).update(updated_at=_ago(7200))  # set up long ago
    run = make_run(app)
    waiting = make_form(app, run=run)
    email_only = make_form(app, run=run, form_token="", status=Form.Status.NOT_ANSWERABLE)
    Run.objects.filter(pk=run.pk).update(updated_at=_ago(3600))
    dify.on("GET", "/workflows/run/", error(404, "not_found", "Workflow run not found"))
    # Dify still answers for the app itself: its /info names it as before.
    DifyApp.objects.filter(pk=app.pk).update(dify_name="Refunds")
    dify.on(
        "GET",
        "/info",
        Reply(
            body={
                "name": "Refunds",
                "description": "",
                "tags": [],
                "mode": "workflow",
                "author_name": "Ada",
            }
        ),
    )
    # A first 404 is only noted: Dify may be about to answer again.
    reconcile_runs()
    assert AuditEntry.objects.filter(verb="run_not_found", object_id=str(run.pk)).count() == 1
    assert Form.objects.get(pk=waiting.pk).status == Form.Status.PENDING
    # Asked again a minute later: the same question, not a second line in the trail.
    Run.objects.filter(pk=run.pk).update(checked_at=_ago(3600), updated_at=_ago(3600))
    reconcile_runs()
    assert AuditEntry.objects.filter(verb="run_not_found", object_id=str(run.pk)).count() == 1
    assert Form.objects.get(pk=waiting.pk).status == Form.Status.PENDING
    # Ten minutes on, Dify still knows no such run: it is gone.
    AuditEntry.objects.filter(verb="run_not_found").update(created_at=_ago(11 * 60))
    Run.objects.filter(pk=run.pk).update(checked_at=_ago(3600), updated_at=_ago(3600))
    reconcile_runs()
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED and "no longer knows this run" in run.error
    assert not run.follow_wanted
    statuses = set(
        Form.objects.filter(pk__in=[waiting.pk, email_only.pk]).values_list("status", flat=True)
    )
    assert statuses == {Form.Status.GONE}
    assert AuditEntry.objects.filter(verb="form_gone").count() == 2
    # The page says so, and takes no decision.
    client.force_login(admin_user)
    page = client.get(f"/forms/{waiting.public_id}/").content.decode()
    assert "Gone from Dify." in page and "decision-form" not in page
    response = client.post(f"/forms/{waiting.public_id}/decide", {"action": "approve"})
    assert response.status_code == 409
    assert "Dify no longer knows this form&#x27;s run; nothing can be sent." in (
        response.content.decode()
    )


def test_a_server_error_that_says_not_found_never_takes_a_run_for_gone(
    app: DifyApp, dify: ScriptedDify, settings: Any
) -> None:
    from inbox.tasks import reconcile_runs
    from tests.delivery.helpers import make_run

    settings.INBOX_RUN_RECONCILE_AFTER_SECONDS = 60
    DifyApp.objects.filter(pk=app.pk).update(updated_at=_ago(7200))
    run = make_run(app)
    form = make_form(app, run=run)
    Run.objects.filter(pk=run.pk).update(updated_at=_ago(3600))
    # Dify failed (500): its body's "not_found" says nothing of the run.
    dify.on("GET", "/workflows/run/", error(500, "not_found", "Workflow run not found"))
    for _ in range(2):
        reconcile_runs()
        AuditEntry.objects.filter(verb="run_not_found").update(created_at=_ago(11 * 60))
        Run.objects.filter(pk=run.pk).update(checked_at=_ago(3600), updated_at=_ago(3600))
    assert not AuditEntry.objects.filter(verb="run_not_found").exists()
    assert Run.objects.get(pk=run.pk).status == Run.Status.PAUSED
    assert Form.objects.get(pk=form.pk).status == Form.Status.PENDING


def test_new_settings_between_two_404s_keep_the_run(
    app: DifyApp, dify: ScriptedDify, settings: Any
) -> None:
    from inbox.tasks import reconcile_runs
    from tests.delivery.helpers import make_run

    settings.INBOX_RUN_RECONCILE_AFTER_SECONDS = 60
    DifyApp.objects.filter(pk=app.pk).update(updated_at=_ago(7200))
    run = make_run(app)
    form = make_form(app, run=run)
    Run.objects.filter(pk=run.pk).update(updated_at=_ago(3600))
    dify.on("GET", "/workflows/run/", error(404, "not_found", "Workflow run not found"))
    reconcile_runs()
    AuditEntry.objects.filter(verb="run_not_found").update(created_at=_ago(11 * 60))
    # An administrator put in another key meanwhile: what the old one could not see says
    # nothing of the new one.
    DifyApp.objects.filter(pk=app.pk).update(updated_at=_ago(5 * 60))
    Run.objects.filter(pk=run.pk).update(checked_at=_ago(3600), updated_at=_ago(3600))
    reconcile_runs()
    assert Run.objects.get(pk=run.pk).status == Run.Status.PAUSED
    assert Form.objects.get(pk=form.pk).status == Form.Status.PENDING


def test_a_page_left_open_asks_dify_about_its_form_through_its_poll(
    app: DifyApp,
    admin_user: User,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    from django.core.cache import cache

    from inbox import tasks

    settings.INBOX_CHECK_ON_VIEW_SECONDS = 60
    queued: list[int] = []
    monkeypatch.setattr(tasks.check_form, "apply_async", lambda args: queued.append(args[0]))
    form = make_form(app)
    client.force_login(admin_user)
    client.get(f"/forms/{form.public_id}/")
    assert queued == [form.pk]
    # Within the minute the poll asks nothing more; a minute on, it asks again.
    client.get(f"/forms/{form.public_id}/live", headers={"HX-Request": "true"})
    assert queued == [form.pk]
    cache.clear()
    Form.objects.filter(pk=form.pk).update(checked_at=_ago(61))
    client.get(f"/forms/{form.public_id}/live", headers={"HX-Request": "true"})
    assert queued == [form.pk, form.pk]
