"""How a form was answered in Dify is learnt from Dify's evidence (a `human_input_form_filled`,
the Human Input node's `node_finished` outputs), which newer builds replay from the run's
start: for a form found answered there (GET form's 412), and for a decision Dify refused as come
too late whose answer was in fact its own (a database restored from a backup taken while it was
on its way: the original installation delivered it). Against the Dify simulator over loopback,
with the real database; the delivery task, the reconcile and the capture run in this process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.utils import timezone

from inbox import capture, notify
from inbox.dify.client import DifyClient
from inbox.follower import release_lease, take_leases
from inbox.models import (
    AuditEntry,
    Decision,
    DifyApp,
    Form,
    FormRecipient,
    Route,
    RouteRecipient,
    Run,
)
from inbox.tasks import _ask_about_form, deliver_decision
from tests.delivery.helpers import simulated_forms

APP = "refund-approval"


@pytest.fixture
def app(db: None, simulator: Any, settings: Any) -> DifyApp:
    settings.INBOX_DELIVERY_RETRY_BASE_SECONDS = 0.01
    settings.INBOX_DELIVERY_RETRY_CAP_SECONDS = 0.05
    settings.INBOX_DELIVERY_MAX_ATTEMPTS = 5
    settings.INBOX_DELIVERY_TIMEOUT_SECONDS = 1.0
    settings.INBOX_DELIVERY_WATCH_SECONDS = 0.5
    return DifyApp.objects.create(
        name=APP, base_url=simulator.base_url, api_key=simulator.api_key(APP)
    )


def _guest(form: Form) -> FormRecipient:
    """A guest the form's route asks, emailed about the form (its first email went)."""
    route = Route.objects.create(
        app=form.run.app, node=form.node_id, name=form.node_id, allow_guests=True
    )
    email = f"guest-{form.pk}@example.com"
    RouteRecipient.objects.create(route=route, email=email)
    Form.objects.filter(pk=form.pk).update(route=route)
    return FormRecipient.objects.create(form=form, email=email, sent_at=timezone.now())


def _follow(simulator: Any, run: Run) -> None:
    """The follower's read of a run wanting a follow: its snapshot stream (a newer Dify build
    replays the run's retained event log there when `retained_log` is on), applied by
    capture, the lease released."""
    run.refresh_from_db()
    assert run.follow_wanted
    (claim,) = take_leases("follower-1", 10, 60)
    assert claim.pk == run.pk
    client = DifyClient(run.app.base_url, run.app.api_key)
    events: list[dict[str, Any]] = []
    with client.stream_events(
        run.workflow_run_id,
        user=run.dify_user,
        include_state_snapshot=True,
        continue_on_pause=True,
    ) as stream:
        for event in stream:
            events.append(event.raw)
            if event.event == "workflow_finished":
                break
    run.apply_events(events, fetch_definitions=False)
    release_lease("follower-1", claim, "done")


def _notices(recipient: FormRecipient) -> list[str]:
    mail.outbox.clear()
    notify.send_due_emails()
    return [m.body for m in mail.outbox if m.to == [recipient.email]]


# --- a form answered directly in Dify ---


@pytest.mark.parametrize("closed_by", ["form reconcile", "run reconcile"])
def test_a_form_answered_in_dify_learns_the_action_values_and_time_from_the_runs_events(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    settings: Any,
    closed_by: str,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    (form,) = simulated_forms(simulator, app, 1)
    run = form.run
    recipient = _guest(form)
    assert simulator.submit_elsewhere(
        form.form_id, "reject", {"decision_note": "too late to refund"}, channel="webapp"
    )
    simulator.wait_for_status(run.workflow_run_id, "succeeded")
    with django_capture_on_commit_callbacks(execute=True):
        if closed_by == "form reconcile":
            # GET form: 412 submitted.
            assert _ask_about_form(Form.objects.get(pk=form.pk), "reconcile") == (
                "answered_elsewhere"
            )
        else:
            # The run's detail says it ended: closed here first, its open form asked about.
            detail = DifyClient(app.base_url, app.api_key).get_run(run.workflow_run_id)
            capture.apply_run_detail(run.pk, detail)
            assert Run.objects.get(pk=run.pk).status == "succeeded"
    form.refresh_from_db()
    assert (form.status, form.filled_action_id) == ("answered_elsewhere", "")
    # Not known yet how: the guest's notice waits for the run's events.
    assert _notices(recipient) == []
    # The run (finished in Dify, and here too for the run reconcile) is read once more, and a
    # newer build replays its log: the fill and the node's outputs.
    simulator.set_options(retained_log=True)
    _follow(simulator, Run.objects.get(pk=run.pk))
    form.refresh_from_db()
    assert form.status == "answered_elsewhere"
    assert (form.filled_action_id, form.filled_action_text) == ("reject", "Reject")
    assert form.filled_data["decision_note"] == "too late to refund"
    assert "too late to refund" in form.rendered_content
    assert form.decided_at is not None and form.decided_at <= timezone.now()
    (entry,) = AuditEntry.objects.filter(verb="form_answer_learnt", object_id=str(form.pk))
    assert entry.details["action"] == "reject"
    run.refresh_from_db()
    assert not run.follow_wanted and not run.awaits_evidence()
    # The pages say how it was answered; the guest's notice says it too.
    staff = Client()
    reviewer.is_staff = True
    reviewer.save()
    staff.force_login(reviewer)
    page = staff.get(f"/forms/{form.public_id}/").content.decode()
    assert "Answered in Dify: Reject" in page and "too late to refund" in page
    (body,) = _notices(recipient)
    assert "was answered elsewhere" in body and "Action: Reject." in body
    guest_page = Client().get(notify.link_path(notify.link_token(recipient)))
    assert guest_page.status_code == 410
    assert "Action: Reject." in guest_page.content.decode()


def test_an_older_build_shows_no_answer_and_the_form_says_the_action_is_not_known(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    (form,) = simulated_forms(simulator, app, 1)
    recipient = _guest(form)
    assert simulator.submit_elsewhere(form.form_id, "reject", {}, channel="webapp")
    simulator.wait_for_status(form.run.workflow_run_id, "succeeded")
    with django_capture_on_commit_callbacks(execute=True):
        assert _ask_about_form(Form.objects.get(pk=form.pk), "reconcile") == "answered_elsewhere"
    # A state snapshot of a finished run is its end alone.
    _follow(simulator, Run.objects.get(pk=form.run_id))
    form.refresh_from_db()
    assert (form.status, form.filled_action_id, form.decided_at) == (
        "answered_elsewhere",
        "",
        None,
    )
    reviewer.is_staff = True
    reviewer.save()
    staff = Client()
    staff.force_login(reviewer)
    page = staff.get(f"/forms/{form.public_id}/").content.decode()
    assert "Answered in Dify; which action is not known." in page
    # Once the wait is over, the notice goes without the action.
    settings.INBOX_ELSEWHERE_NOTICE_HOLD_SECONDS = 0
    (body,) = _notices(recipient)
    assert "was answered elsewhere" in body and "Action:" not in body


# --- a decision in flight when the backup was taken ---


def _in_flight_at_backup(
    simulator: Any,
    form: Form,
    reviewer: User,
    callbacks: Callable[..., Any],
    *,
    original: tuple[str, str] | None = ("approve", "refund it"),
) -> Decision:
    """A decision whose first attempt met a 503 (nothing reached Dify: `maybe_applied` stays
    false) as the backup was taken. The original installation then delivered it (`original`:
    the action and note Dify received; another action or note is someone else's answer in
    Dify), and the run went on to its end; the restored database still has it queued."""
    simulator.add_fault("status", "form_submit", status=503, times=1)
    with callbacks(execute=False):
        decision = form.decide(
            action_id="approve", inputs={"decision_note": "refund it"}, reviewer=reviewer
        )
        assert deliver_decision(decision.pk) == "retry"
    decision.refresh_from_db()
    assert decision.status == "queued" and not decision.maybe_applied
    if original is not None:
        action, note = original
        if (action, note) == ("approve", "refund it"):
            # What the original installation sent: our token, user, action and values.
            DifyClient(form.run.app.base_url, form.run.app.api_key).submit_form(
                form.form_token,
                inputs={"decision_note": note},
                action=action,
                user=form.run.dify_user,
            )
        else:
            assert simulator.submit_elsewhere(
                form.form_id, action, {"decision_note": note}, channel="webapp"
            )
        simulator.wait_for_status(form.run.workflow_run_id, "succeeded")
    return decision


def test_a_restored_decision_dify_shows_as_its_own_answer_is_delivered_not_rejected(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    forms = simulated_forms(simulator, app, 2)
    decisions = [
        _in_flight_at_backup(simulator, form, reviewer, django_capture_on_commit_callbacks)
        for form in forms
    ]
    recipients = [_guest(form) for form in forms]
    # Restored: the queued decisions are sent again, and Dify says "already submitted"; its
    # run's events (a newer build replays them) show our own action and values.
    simulator.set_options(retained_log=True)
    for decision in decisions:
        with django_capture_on_commit_callbacks(execute=False):
            assert deliver_decision(decision.pk) == "delivered"
    mail.outbox.clear()
    notify.send_due_emails()
    for decision, form, recipient in zip(decisions, forms, recipients, strict=True):
        decision = Decision.objects.get(pk=decision.pk)
        form.refresh_from_db()
        assert decision.status == "delivered" and not decision.delivery_presumed
        assert (form.status, form.filled_action_id) == ("submitted", "approve")
        assert form.filled_data["decision_note"] == "refund it"
        entry = AuditEntry.objects.get(verb="decision_delivered", object_id=str(decision.pk))
        assert entry.details["confirmed_by"] in ("human_input_form_filled", "node_finished")
        assert not AuditEntry.objects.filter(
            verb="form_answered_elsewhere", object_id=str(form.pk)
        ).exists()
        # Sent once, by the original installation: nothing went twice.
        assert simulator.submits_applied(form.form_id) == 1
        (message,) = [m for m in mail.outbox if m.to == [recipient.email]]
        assert "has been decided" in message.body and "answered" not in message.body


def test_a_restored_decision_refused_before_the_evidence_is_corrected_when_it_arrives(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    (form,) = simulated_forms(simulator, app, 1)
    decision = _in_flight_at_backup(simulator, form, reviewer, django_capture_on_commit_callbacks)
    recipient = _guest(form)
    # An older build at the moment of the refusal: nothing shows whose answer Dify took, and a
    # decision never known to have been sent is not presumed ours.
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver_decision(decision.pk) == "answered_elsewhere"
    decision.refresh_from_db()
    form.refresh_from_db()
    assert decision.status == "rejected" and form.status == "answered_elsewhere"
    # The notice of a form answered elsewhere waits for the run's events...
    assert _notices(recipient) == []
    # ... which the follower reads (Dify now replays the log): the decision was ours.
    simulator.set_options(retained_log=True)
    _follow(simulator, Run.objects.get(pk=form.run_id))
    decision = Decision.objects.get(pk=decision.pk)
    form.refresh_from_db()
    assert (decision.status, decision.last_error) == ("delivered", "")
    assert (form.status, form.filled_action_id, form.decided_at) == (
        "submitted",
        "approve",
        decision.created_at,
    )
    entry = AuditEntry.objects.filter(verb="decision_delivered", object_id=str(decision.pk)).get()
    assert entry.details["corrected"] == "answered elsewhere"
    assert simulator.submits_applied(form.form_id) == 1
    (body,) = _notices(recipient)
    assert "has been decided" in body and "answered elsewhere" not in body
    # The reviewer's page shows their decision delivered.
    reviewer.is_staff = True
    reviewer.save()
    client = Client()
    client.force_login(reviewer)
    page = client.get(f"/forms/{form.public_id}/").content.decode()
    assert "Submitted" in page and "Answered in Dify" not in page


@pytest.mark.parametrize(
    ("answer", "title"),
    [(("reject", "refund it"), "Reject"), (("approve", "half of it"), "Approve refund")],
    ids=["another action", "the same action with other values"],
)
def test_another_answer_given_in_dify_is_still_reported_as_answered_elsewhere(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    answer: tuple[str, str],
    title: str,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    (form,) = simulated_forms(simulator, app, 1)
    decision = _in_flight_at_backup(
        simulator, form, reviewer, django_capture_on_commit_callbacks, original=answer
    )
    simulator.set_options(retained_log=True)
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver_decision(decision.pk) == "answered_elsewhere"
    decision.refresh_from_db()
    form.refresh_from_db()
    assert (decision.status, decision.last_error) == (
        "rejected",
        f"This form was answered in Dify before this decision arrived: {title}.",
    )
    assert (form.status, form.filled_action_id) == ("answered_elsewhere", answer[0])
    assert form.filled_data["decision_note"] == answer[1]
    # The follower's read of the run changes nothing of it.
    _follow(simulator, Run.objects.get(pk=form.run_id))
    assert Decision.objects.get(pk=decision.pk).status == "rejected"
    assert Form.objects.get(pk=form.pk).status == "answered_elsewhere"
    assert simulator.submits_applied(form.form_id) == 1
