"""A decision delivered by presumption (an attempt's answer lost, then Dify's 412 "already
submitted" with no trace of whose answer it took) is checked against what the run's events show
later: confirmed when they name our action, corrected (answered elsewhere) when they name
another. Against the Dify simulator over loopback, with the real database; the delivery task and
the capture are called in this process."""

from __future__ import annotations

import re
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
from inbox.models import AuditEntry, Decision, DifyApp, Form, FormRecipient, Run
from inbox.tasks import deliver_decision, deliver_queued
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


def _presumed(
    simulator: Any,
    form: Form,
    reviewer: User,
    callbacks: Callable[..., Any],
    *,
    elsewhere: str | None,
    before_retry: Callable[[], None] | None = None,
) -> Decision:
    """Our first submit hangs past the timeout without being applied; `elsewhere` (an action)
    is then answered in Dify's web app, or (None) the first submit is applied with its answer
    lost and the resume held back. The retry meets 412 and, Dify's snapshot replaying no fill,
    the decision is presumed delivered."""
    if elsewhere is None:
        simulator.add_fault("drop_after_submit", "form_submit", times=1)
        simulator.hold_resumes()
    else:
        simulator.add_fault("delay", "form_submit", delay=2.0, times=1)
    with callbacks(execute=False):
        decision = form.decide(
            action_id="approve", inputs={"decision_note": "ours"}, reviewer=reviewer
        )
        assert deliver_decision(decision.pk) == "retry"
    decision.refresh_from_db()
    assert decision.maybe_applied
    if elsewhere is not None:
        assert simulator.submit_elsewhere(
            form.form_id, elsewhere, {"decision_note": "elsewhere"}, channel="webapp"
        )
        simulator.wait_for_status(form.run.workflow_run_id, "succeeded")
    if before_retry is not None:
        before_retry()
    with callbacks(execute=False):
        assert deliver_decision(decision.pk) == "delivered"
    decision = Decision.objects.get(pk=decision.pk)
    assert decision.status == "delivered" and decision.delivery_presumed
    if elsewhere is None:
        simulator.release_resumes()
        simulator.wait_for_status(form.run.workflow_run_id, "succeeded")
    return decision


def _follow(simulator: Any, run: Run, *, drop: str = "") -> None:
    """What the follower reads of the run after the delivery: its snapshot stream, which newer
    Dify builds fill with the run's retained event log (CONTRACT 6.1), applied by capture."""
    simulator.set_options(retained_log=True)
    client = DifyClient(run.app.base_url, run.app.api_key)
    events: list[dict[str, Any]] = []
    with client.stream_events(
        run.workflow_run_id,
        user=run.dify_user,
        include_state_snapshot=True,
        continue_on_pause=True,
    ) as stream:
        for event in stream:
            if event.event != drop:
                events.append(event.raw)
            if event.event == "workflow_finished":
                break
    run.apply_events(events, fetch_definitions=False)


def test_a_presumed_delivery_that_dify_answered_another_way_is_corrected(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    (form,) = simulated_forms(simulator, app, 1)
    reviewer.is_staff = True  # sees every form, as if routed to them
    reviewer.save()
    # The decision's maker was emailed about the form, and spared the closing notice of their
    # own decision.
    FormRecipient.objects.create(
        form=form,
        email=reviewer.email,
        user=reviewer,
        sent_at=timezone.now(),
        closed_notice_at=timezone.now(),
    )
    decision = _presumed(
        simulator, form, reviewer, django_capture_on_commit_callbacks, elsewhere="reject"
    )
    assert simulator.submits_applied(form.form_id) == 1  # the web app's, not ours

    _follow(simulator, Run.objects.get(pk=form.run_id))

    decision.refresh_from_db()
    form.refresh_from_db()
    assert decision.status == "rejected"
    assert decision.last_error == (
        "This form was answered in Dify before this decision arrived: Reject."
    )
    assert not Decision.objects.get(pk=decision.pk).delivery_presumed
    assert form.status == "answered_elsewhere"
    assert form.filled_action_id == "reject"
    assert "elsewhere" in form.rendered_content
    entry = AuditEntry.objects.get(verb="decision_rejected", object_id=str(decision.pk))
    assert entry.details["corrected"] == "presumed delivery"
    assert entry.details["evidence"] == "human_input_form_filled"
    assert AuditEntry.objects.filter(
        verb="form_answered_elsewhere", object_id=str(form.pk)
    ).exists()
    # The run's timeline names Dify's answer, not ours.
    run = Run.objects.get(pk=form.run_id)
    actions = [i.get("action") for i in run.timeline if i.get("key", "").startswith("filled:")]
    assert actions == ["Reject"]
    # Its maker is told, as for any decision Dify did not take: the closing notice.
    recipient = FormRecipient.objects.get(form=form)
    assert recipient.closed_notice_at is None
    mail.outbox.clear()
    notify.send_due_emails()
    (message,) = mail.outbox
    assert message.to == [reviewer.email]
    assert "was answered in Dify" in message.body and "Action: Reject." in message.body

    # A replay changes nothing more.
    _follow(simulator, Run.objects.get(pk=form.run_id))
    assert AuditEntry.objects.filter(verb="decision_rejected").count() == 1
    assert Decision.objects.get(pk=decision.pk).status == "rejected"

    # The form's page no longer says the reviewer's action was delivered.
    client = Client()
    client.force_login(reviewer)
    page = client.get(f"/forms/{form.public_id}/").content.decode()
    assert "Not confirmed by Dify" not in page


def test_the_nodes_outputs_alone_correct_a_presumed_delivery(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    (form,) = simulated_forms(simulator, app, 1)
    decision = _presumed(
        simulator, form, reviewer, django_capture_on_commit_callbacks, elsewhere="reject"
    )
    # No fill in what is read: the Human Input node's `node_finished` outputs (`__action_id`).
    _follow(simulator, Run.objects.get(pk=form.run_id), drop="human_input_form_filled")
    decision.refresh_from_db()
    form.refresh_from_db()
    assert (decision.status, form.status, form.filled_action_id) == (
        "rejected",
        "answered_elsewhere",
        "reject",
    )
    entry = AuditEntry.objects.get(verb="decision_rejected", object_id=str(decision.pk))
    assert entry.details["evidence"] == "node_finished"


def test_a_presumed_delivery_the_events_show_as_ours_is_confirmed(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    (form,) = simulated_forms(simulator, app, 1)
    decision = _presumed(
        simulator, form, reviewer, django_capture_on_commit_callbacks, elsewhere=None
    )
    assert simulator.submits_applied(form.form_id) == 1  # ours
    # The dashboard counts it until Dify's events confirm it, and the admin lists it.
    admin = Client()
    admin.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw-boss-123"))
    presumed_card = re.compile(
        r"<strong>(\d+)</strong><a href=\"/admin/inbox/decision/\?delivery=presumed\">"
    )
    assert presumed_card.findall(admin.get("/dashboard/").content.decode()) == ["1"]
    listing = admin.get("/admin/inbox/decision/?delivery=presumed").content.decode()
    assert str(decision.public_id) in listing
    _follow(simulator, Run.objects.get(pk=form.run_id))
    decision = Decision.objects.get(pk=decision.pk)
    form.refresh_from_db()
    assert (decision.status, form.status, form.filled_action_id) == (
        "delivered",
        "submitted",
        "approve",
    )
    assert not decision.delivery_presumed
    assert presumed_card.findall(admin.get("/dashboard/").content.decode()) == ["0"]
    listing = admin.get("/admin/inbox/decision/?delivery=presumed").content.decode()
    assert str(decision.public_id) not in listing
    (entry,) = AuditEntry.objects.filter(verb="delivery_confirmed")
    assert entry.details["confirmed_by"] in ("human_input_form_filled", "node_finished")
    _follow(simulator, Run.objects.get(pk=form.run_id))
    assert AuditEntry.objects.filter(verb="delivery_confirmed").count() == 1


def test_a_presumed_delivery_on_a_run_already_closed_here_is_still_followed_for_its_evidence(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    (form,) = simulated_forms(simulator, app, 1)
    run = form.run

    def closed_here() -> None:
        # Before the retry, the reconcile saw the run's end in its detail and closed it here.
        detail = DifyClient(app.base_url, app.api_key).get_run(run.workflow_run_id)
        capture.apply_run_detail(run.pk, detail)
        assert Run.objects.get(pk=run.pk).status == "succeeded"

    decision = _presumed(
        simulator,
        form,
        reviewer,
        django_capture_on_commit_callbacks,
        elsewhere="reject",
        before_retry=closed_here,
    )
    # Finished here, but its events may still say whose answer Dify took: a follower reads it.
    run.refresh_from_db()
    assert run.is_finished and run.follow_wanted and run.follow_snapshot
    (claim,) = take_leases("follower-1", 10, 60)
    assert claim.pk == run.pk
    _follow(simulator, run, drop="human_input_form_filled")
    release_lease("follower-1", claim, "done")
    decision.refresh_from_db()
    form.refresh_from_db()
    assert (decision.status, form.status, form.filled_action_id) == (
        "rejected",
        "answered_elsewhere",
        "reject",
    )
    entry = AuditEntry.objects.get(verb="decision_rejected", object_id=str(decision.pk))
    assert entry.details["evidence"] == "node_finished"
    # Settled: the finished run wants no more following.
    run.refresh_from_db()
    assert not run.follow_wanted and not run.awaits_evidence()
    assert not run.request_follow(snapshot=True)


# --- a database away while a decision Dify accepted is recorded ---


def _flaky(monkeypatch: pytest.MonkeyPatch, failures: int | None) -> list[int]:
    """`Decision.finish_delivered` fails as a restarting database fails, `failures` times
    (None: always); returns the list counting the calls."""
    from django.db import OperationalError

    real = Decision.finish_delivered.__func__  # type: ignore[attr-defined]
    calls: list[int] = []

    def finish(cls: type[Decision], claimed: Any) -> Any:
        calls.append(1)
        if failures is None or len(calls) <= failures:
            raise OperationalError("the database system is starting up")
        return real(cls, claimed)

    monkeypatch.setattr(Decision, "finish_delivered", classmethod(finish))
    monkeypatch.setattr("inbox.tasks.time.sleep", lambda seconds: None)
    return calls


def test_a_database_away_for_a_moment_after_dify_accepted_is_waited_out(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (form,) = simulated_forms(simulator, app, 1)
    calls = _flaky(monkeypatch, 2)
    with django_capture_on_commit_callbacks(execute=False):
        decision = form.decide(
            action_id="approve", inputs={"decision_note": "ok"}, reviewer=reviewer
        )
    # The delivery pump sends it and records it (its batch path).
    assert deliver_queued(helper=True) == {"delivered": 1}
    assert len(calls) == 3
    decision = Decision.objects.get(pk=decision.pk)
    assert (decision.status, decision.attempts) == ("delivered", 1)
    assert not decision.delivery_presumed
    assert Form.objects.get(pk=form.pk).status == "submitted"
    assert Run.objects.get(pk=form.run_id).follow_wanted
    assert simulator.submits_applied(form.form_id) == 1


def _handed_on(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The decisions `_record_accepted` hands to a new task (not queued: listed)."""
    from inbox import tasks

    monkeypatch.setattr(tasks, "RECORD_RETRY_SECONDS", 0.0)
    queued: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        tasks.deliver_decision,
        "apply_async",
        lambda args, kwargs, countdown: queued.append((args, kwargs, countdown)),
    )
    return queued


def _decided_and_sent(
    form: Form, reviewer: User, capture: Callable[..., Any]
) -> tuple[Decision, str]:
    """The reviewer approves `form` and one delivery task sends it (the decision's own queueing
    held back): the decision and the task's outcome."""
    with capture(execute=False):
        decision = form.decide(
            action_id="approve", inputs={"decision_note": "ok"}, reviewer=reviewer
        )
        return decision, deliver_decision(decision.pk)


def test_a_database_away_longer_hands_the_accepted_decision_to_a_new_task(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from inbox import tasks

    (form,) = simulated_forms(simulator, app, 1)
    _flaky(monkeypatch, None)
    queued = _handed_on(monkeypatch)
    decision, outcome = _decided_and_sent(form, reviewer, django_capture_on_commit_callbacks)
    assert outcome == "requeued"
    assert queued == [
        ((decision.pk,), {"accepted": True, "handed": 1}, tasks.RECORD_REQUEUE_SECONDS)
    ]
    assert Decision.objects.get(pk=decision.pk).status == "delivering"
    # The database is back: the new task records it, confirmed, and sends nothing again.
    monkeypatch.undo()
    args, kwargs, _countdown = queued[0]
    assert deliver_decision(*args, **kwargs) == "delivered"
    decision = Decision.objects.get(pk=decision.pk)
    assert (decision.status, decision.attempts) == ("delivered", 1)
    assert not decision.delivery_presumed
    assert simulator.submit_count(form.form_id) == 1
    assert deliver_decision(*args, **kwargs) == "skipped"


def test_a_database_still_away_when_the_new_task_runs_hands_it_on_again_later(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import OperationalError, connection

    from inbox import tasks

    (form,) = simulated_forms(simulator, app, 1)
    _flaky(monkeypatch, None)
    queued = _handed_on(monkeypatch)
    decision, outcome = _decided_and_sent(form, reviewer, django_capture_on_commit_callbacks)
    assert outcome == "requeued"

    def away(*args: Any) -> Any:
        raise OperationalError("the database system is starting up")

    # The new task comes while the database is still away: not a task that dies (its message
    # gone, the decision left to the stuck sweep, sent again and only presumed), but handed
    # on again, later.
    args, kwargs, _countdown = queued[0]
    with connection.execute_wrapper(away):
        assert deliver_decision(*args, **kwargs) == "requeued"
    assert queued[1] == (
        (decision.pk,),
        {"accepted": True, "handed": 2},
        2 * tasks.RECORD_REQUEUE_SECONDS,
    )
    with connection.execute_wrapper(away):
        assert deliver_decision(*queued[1][0], **queued[1][1]) == "requeued"
    assert queued[2][1:] == ({"accepted": True, "handed": 3}, 4 * tasks.RECORD_REQUEUE_SECONDS)
    # Past RECORD_HANDOVERS tries it is the stuck sweep's, said in the log.
    monkeypatch.setattr(tasks, "RECORD_HANDOVERS", 3)
    with connection.execute_wrapper(away):
        assert deliver_decision(*queued[2][0], **queued[2][1]) == "requeued"
    assert len(queued) == 3
    # The database back, the last task given records it, confirmed, sending nothing again.
    monkeypatch.undo()
    assert deliver_decision(*queued[2][0], **queued[2][1]) == "delivered"
    decision = Decision.objects.get(pk=decision.pk)
    assert (decision.status, decision.attempts) == ("delivered", 1)
    assert not decision.delivery_presumed
    assert simulator.submit_count(form.form_id) == 1


def test_a_delivery_recorded_but_not_its_follow_is_followed_on_by_the_new_task(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import OperationalError

    from inbox import tasks

    (form,) = simulated_forms(simulator, app, 1)
    queued = _handed_on(monkeypatch)
    monkeypatch.setattr("inbox.tasks.time.sleep", lambda seconds: None)

    def away(run_ids: Any) -> Any:
        raise OperationalError("the database system is starting up")

    # The delivery's write went through; the database went away before the run's follow.
    monkeypatch.setattr(tasks, "request_follow_many", away)
    Run.objects.filter(pk=form.run_id).update(follow_wanted=False)
    decision, outcome = _decided_and_sent(form, reviewer, django_capture_on_commit_callbacks)
    assert outcome == "requeued"
    assert Decision.objects.get(pk=decision.pk).status == "delivered"
    assert not Run.objects.get(pk=form.run_id).follow_wanted
    # The new task finds it recorded, and still asks for the run to be followed on.
    monkeypatch.undo()
    args, kwargs, _countdown = queued[0]
    assert deliver_decision(*args, **kwargs) == "skipped"
    assert Run.objects.get(pk=form.run_id).follow_wanted
    assert simulator.submit_count(form.form_id) == 1


def test_a_task_out_of_time_while_recording_hands_the_accepted_decision_on(
    simulator: Any,
    app: DifyApp,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    (form,) = simulated_forms(simulator, app, 1)
    queued = _handed_on(monkeypatch)

    def out_of_time(cls: Any, claimed: Any) -> Any:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(Decision, "finish_delivered", classmethod(out_of_time))
    decision, outcome = _decided_and_sent(form, reviewer, django_capture_on_commit_callbacks)
    assert outcome == "requeued"
    assert [q[:2] for q in queued] == [((decision.pk,), {"accepted": True, "handed": 1})]
    monkeypatch.undo()
    assert deliver_decision(*queued[0][0], **queued[0][1]) == "delivered"
    assert simulator.submit_count(form.form_id) == 1
