"""Each shipped scenario end to end: started as the inbox starts runs, followed by a real
follower over real HTTP against the simulator, answered in Dify with the stored token."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone

from inbox.models import AuditEntry, Form, Run, RunEvent
from inbox.tasks import deliver_decision, reconcile_runs, sweep_expired_forms
from tests.capture.conftest import (
    FollowerThread,
    no_stream_left,
    pending,
    run_status,
    start,
    submit,
)
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_single_pause_is_captured_then_followed_to_the_end(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    # Dify resumes a run a moment after the submit; meanwhile a snapshot still says `paused`,
    # with the answered form gone from it. The follower, asked to follow right after the submit,
    # must read on through that gap to see the fill.
    simulator.set_options(resume_delay=0.5)
    run = start(simulator, sim_app("refund-approval"), reviewer)
    assert run.workflow_run_id and run.dify_user == "inbox-alice"
    (form,) = pending(run)
    run = run_status(run, "paused")
    assert form.node_id == "manager_approval" and form.node_title == "Manager approval"
    assert "Refund request for order SO-104233" in form.content
    assert [a["id"] for a in form.definition["user_actions"]] == ["approve", "reject"]
    # The token is the one Dify handed out for this form.
    assert simulator.run(run.workflow_run_id)["forms"][0]["status"] == "waiting"
    # Nothing is held open while the manager thinks.
    no_stream_left(run)
    assert simulator.stats()["streams_open"] == 0

    submit(form, "approve", held_by=simulator, decision_note="Approved, sorry for the trouble.")
    run = run_status(run, "succeeded")
    assert run.outputs == {
        "decision": "approve",
        "note": "Approved, sorry for the trouble.",
        "refund": "RF-88231",
    }
    form.refresh_from_db()
    # Answered with the token directly, not through a decision of ours.
    assert form.status == "answered_elsewhere"
    assert (form.filled_action_id, form.filled_action_text) == ("approve", "Approve refund")
    assert "Approved, sorry for the trouble." in form.rendered_content
    titles = [item.get("title") for item in run.timeline if item.get("event") == "node"]
    assert titles[:3] == ["Start", "Look up order", "Summarize the request"]
    assert "Issue refund" in titles
    assert run.forms.count() == 1
    assert RunEvent.objects.filter(run=run, event="workflow_finished").count() == 1
    no_stream_left(run)


def test_three_sequential_pauses_each_bring_a_new_form(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    run = start(simulator, sim_app("content-publish"))
    seen: list[str] = []
    for _ in range(3):
        form = pending(run)[0]
        seen.append(form.node_id)
        submit(form)
        wait_until(lambda f=form: Form.objects.get(pk=f.pk).status == "answered_elsewhere")
    run = run_status(run, "succeeded")
    assert seen == ["editor_review", "legal_check", "publisher_signoff"]
    assert run.forms.count() == 3
    assert set(run.forms.values_list("status", flat=True)) == {"answered_elsewhere"}
    assert AuditEntry.objects.filter(verb="form_captured").count() == 3


def test_two_parallel_forms_pause_the_run_together(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    run = start(simulator, sim_app("vendor-onboarding"))
    forms = pending(run, 2)
    assert {f.node_id for f in forms} == {"security_review", "finance_review"}
    run = run_status(run, "paused")
    no_stream_left(run)
    submit(forms[0])
    wait_until(lambda: Form.objects.get(pk=forms[0].pk).status == "answered_elsewhere")
    # The other form still waits; the run is paused on it again.
    run = run_status(run, "paused")
    assert Form.objects.get(pk=forms[1].pk).status == "pending"
    submit(forms[1])
    run = run_status(run, "succeeded")
    assert run.forms.count() == 2


def test_a_run_that_ended_before_its_stream_reopened_shows_each_answer_on_its_timeline(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    # Two pauses, each answered here; the follower is away each time until the run has moved on
    # (then ended): the streams it opens replay no fill (a snapshot of the next pause, a finished
    # run's one `workflow_finished`). The timeline still says each form was answered, and how.
    run = start(simulator, sim_app("content-publish"), reviewer)
    steps = [("editor_review", "approve"), ("legal_check", "cleared"), ("publisher_signoff", "")]
    for node, action in steps:
        form = wait_until(lambda n=node: run.forms.filter(node_id=n, status="pending").first())
        no_stream_left(run)
        follower.stop()
        decision = form.decide(
            action_id=action or "publish_now", inputs=_filled(form), reviewer=reviewer
        )
        deliver_decision(decision.pk)
        simulator.wait_for_status(run.workflow_run_id, "paused" if action else "succeeded")
        follower = FollowerThread(f"after-{node}").start()
    try:
        run = run_status(run, "succeeded")
    finally:
        follower.stop()
    # The last fill at least came in no stream of ours: the run had ended when it reopened.
    assert RunEvent.objects.filter(run=run, event="human_input_form_filled").count() < len(steps)
    entries = [(e.get("title"), e.get("status")) for e in run.timeline if "form" in e]
    for form in run.forms.order_by("created_at"):
        assert form.status == "submitted"
        title = form.node_title
        assert (title, "waiting") not in entries
        index = entries.index((title, "paused"))
        assert entries[index + 1] == (title, "answered"), entries
        answered = next(
            e for e in run.timeline if e.get("key", "").startswith(f"filled:{form.form_id}")
        )
        assert answered["action"] == form.filled_action_text and answered["form"] == str(
            form.public_id
        )


def test_a_form_answered_in_dify_before_our_decision_reads_so_on_the_timeline(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    # Answered by email while the follower held no stream; our decision then finds it answered
    # (412), with which action we are not told. The run ends; its timeline must not say
    # "waiting" for that form.
    run = start(simulator, sim_app("refund-approval"), reviewer)
    (form,) = pending(run)
    no_stream_left(run)
    follower.stop()
    assert simulator.submit_elsewhere(form.form_id, "reject", {"decision_note": "No."})
    # Ended before the decision is sent: the run's events (an older build's, which replay a
    # finished run's end alone) cannot show the answer to the delivery's read either.
    simulator.wait_for_status(run.workflow_run_id, "succeeded")
    decision = form.decide(action_id="approve", inputs=_filled(form), reviewer=reviewer)
    assert deliver_decision(decision.pk) == "answered_elsewhere"
    follower = FollowerThread("after-elsewhere").start()
    try:
        run = run_status(run, "succeeded")
    finally:
        follower.stop()
    form.refresh_from_db()
    assert form.status == "answered_elsewhere"
    entries = [(e.get("title"), e.get("status")) for e in run.timeline if "form" in e]
    assert entries == [(form.node_title, "answered_elsewhere")], entries


def _filled(form: Form) -> dict[str, Any]:
    """Values every input of the form accepts: text, the first option."""
    values: dict[str, Any] = {}
    for spec in (form.definition or {}).get("inputs", []):
        name = spec["output_variable_name"]
        if spec["type"] == "select":
            values[name] = spec["option_source"]["value"][0]
        elif spec["type"] == "paragraph":
            values[name] = "Fine."
    return values


def test_a_chatflow_pause_and_its_answer(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    run = start(simulator, sim_app("support-chat"))
    (form,) = pending(run)
    run.refresh_from_db()
    assert run.conversation_id and run.message_id
    assert "delivery is late" in run.answer
    answer_before = run.answer
    submit(form, "grant", held_by=simulator, agent_message="Credit added.")
    run = run_status(run, "succeeded")
    assert run.answer.startswith(answer_before) and len(run.answer) > len(answer_before)
    assert run.outputs.get("answer") == run.answer
    assert RunEvent.objects.filter(run=run, event="message_end").count() == 1


def test_a_chatflow_followed_through_replays_of_its_whole_event_log_keeps_one_answer(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    # Newer builds replay the retained log from the start on every stream the follower opens:
    # each text chunk, the form, the pause and the fill again (CONTRACT 6.1).
    simulator.set_options(retained_log=True)
    run = start(simulator, sim_app("support-chat"))
    (form,) = pending(run)
    run = run_status(run, "paused")
    assert run.answer == simulator.run(run.workflow_run_id)["answer"]
    decision = form.decide(
        action_id="grant", inputs={"agent_message": "Credit added."}, reviewer=reviewer
    )
    deliver_decision(decision.pk)
    run = run_status(run, "succeeded")
    assert run.answer == simulator.run(run.workflow_run_id)["answer"]
    assert run.answer.count("delivery is late") == 1 and run.answer.endswith("Credit added.")
    form.refresh_from_db()
    assert (form.status, form.filled_action_id) == ("submitted", "grant")
    assert "Credit added." in form.rendered_content
    assert RunEvent.objects.filter(run=run, event="human_input_form_filled").count() == 1


def test_an_email_only_form_is_recorded_read_only_and_the_run_followed_to_the_end(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    run = start(simulator, sim_app("expense-email"))
    form = wait_until(lambda: run.forms.first())
    assert form.status == "not_answerable" and form.form_token == ""
    assert form.approval_channels == ["email"] and form.content
    assert form.definition_fetched_at is None  # no token: nothing to GET
    run = run_status(run, "paused")
    no_stream_left(run)
    # The owner answers by email. Nothing tells the inbox but Dify itself: the periodic
    # reconcile reads the run detail and hands a pause on such a form back to the follower;
    # such a run is asked about more often than others (every minute, here at once).
    # Dify's task queue holds the resumed run until the follower reads it again: a stream
    # opened only after the end would carry `workflow_finished` alone, and which action the
    # owner chose would stay unknown (test_apply_event.py, `..._closes_with_its_run`).
    simulator.hold_resumes()
    assert simulator.submit_elsewhere(form.form_id, "approve")
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["followed"] == 0  # not due yet: asked about a moment ago
    with override_settings(
        INBOX_RUN_RECONCILE_AFTER_SECONDS=3600, INBOX_RUN_RECONCILE_OUTSIDE_SECONDS=0
    ):
        assert reconcile_runs()["followed"] == 1
    simulator.wait_for(lambda: simulator.run(run.workflow_run_id)["streams"])
    simulator.release_resumes()
    run = run_status(run, "succeeded")
    form.refresh_from_db()
    assert form.status == "answered_elsewhere" and form.filled_action_id == "approve"


def test_a_form_that_times_out_takes_the_timeout_branch(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    run = start(simulator, sim_app("access-request"))
    (form,) = pending(run)
    no_stream_left(run)
    # The node's timeout passes, in Dify and here: the run takes the timeout branch in Dify,
    # the expiry sweep closes the form here and has the run followed to its next pause.
    Form.objects.filter(pk=form.pk).update(expiration_time=timezone.now())
    assert simulator.expire_form(form.form_id)
    assert sweep_expired_forms() == 1
    escalation = pending(run)[0]
    assert escalation.node_id == "on_call_approval"
    assert Form.objects.get(pk=form.pk).status == "expired"
    submit(escalation, "grant")
    run = run_status(run, "succeeded")
    assert run.forms.count() == 2


def test_the_next_form_after_a_timeout_is_read_as_soon_as_dify_takes_the_branch(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    """The expiry sweep here runs before Dify's own: the run is followed from the expiry, and
    the escalation is captured when Dify takes the timeout branch, with no reconcile."""
    run = start(simulator, sim_app("access-request"))
    (form,) = pending(run)
    no_stream_left(run)
    Form.objects.filter(pk=form.pk).update(expiration_time=timezone.now())
    assert sweep_expired_forms() == 1
    # The follower reads the replayed pause (nothing waits for a person there now) and keeps
    # listening; Dify's timeout comes a moment later.
    wait_until(lambda: Run.objects.filter(pk=run.pk).exclude(lease_owner="").exists())
    assert simulator.expire_form(form.form_id)
    escalation = wait_until(
        lambda: Form.objects.filter(run=run, node_id="on_call_approval").first()
    )
    assert escalation.status == "pending"
    no_stream_left(run)


def test_a_failed_run_ends_failed_with_dify_s_error(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    run = start(simulator, sim_app("invoice-sync"))
    (form,) = pending(run)
    submit(form, "post")
    run = run_status(run, "failed")
    assert "posting period 2025-11 is locked" in run.error
    assert run.finished_at is not None
    failed = [i for i in run.timeline if i.get("status") == "failed"]
    assert failed and failed[0]["title"]


def test_a_stopped_run_ends_stopped(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    from inbox.runs import stop_run

    # Slow nodes, so there is a working run to stop.
    simulator.set_options(time_scale=30.0)
    run = start(simulator, sim_app("refund-approval"), reviewer)
    run = run_status(run, "running")

    def working() -> Run | None:
        run.refresh_from_db()
        running = [
            i
            for i in run.timeline
            if str(i.get("key", "")).startswith("node:") and i.get("status") == "running"
        ]
        return run if running else None

    run = wait_until(working)  # a node is at work
    stop_run(run, actor=reviewer)
    run = run_status(run, "stopped")
    assert run.forms.count() == 0
    # The node the stop cut short says so, not "running" under a run that has ended.
    nodes = [i for i in run.timeline if str(i.get("key", "")).startswith("node:")]
    assert nodes and not [i for i in nodes if i.get("status") == "running"], nodes
    assert AuditEntry.objects.filter(verb="run_stop_requested").count() == 1
