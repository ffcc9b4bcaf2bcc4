"""deliver_decision, called directly against the real database and a scripted Dify on loopback:
one test per outcome of a submit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import Q
from django.test import Client
from django.utils import timezone

from inbox.models import AuditEntry, Decision, DifyApp, Form, Run
from inbox.tasks import deliver_decision, retry_delay
from tests.delivery.helpers import make_form, make_run
from tests.delivery.scripted import Reply, ScriptedDify, error

pytestmark = pytest.mark.smoke

SUBMIT = "/form/human_input/"


@pytest.fixture
def dify() -> Iterator[ScriptedDify]:
    server = ScriptedDify()
    yield server
    server.close()


@pytest.fixture
def app(db: None, dify: ScriptedDify, settings: Any) -> DifyApp:
    settings.INBOX_DELIVERY_RETRY_BASE_SECONDS = 0.01
    settings.INBOX_DELIVERY_RETRY_CAP_SECONDS = 0.05
    settings.INBOX_DELIVERY_MAX_ATTEMPTS = 3
    settings.INBOX_DELIVERY_TIMEOUT_SECONDS = 1.0
    return DifyApp.objects.create(name="refunds", base_url=dify.base_url, api_key="app-key-123")


@pytest.fixture
def decide(
    reviewer: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> Callable[..., Decision]:
    def make(form: Form, action: str = "approve", inputs: dict[str, Any] | None = None) -> Decision:
        # The task is called by the test itself, not through the broker.
        with django_capture_on_commit_callbacks(execute=False):
            return form.decide(action_id=action, inputs=inputs or {"note": "ok"}, reviewer=reviewer)

    return make


def _state(decision: Decision) -> tuple[str, str, int]:
    decision.refresh_from_db()
    return decision.status, decision.form.status, decision.attempts


def _no_secret_anywhere(token: str) -> None:
    assert token
    for entry in AuditEntry.objects.all():
        assert token not in str(entry.details) and token not in entry.object_repr
    for decision in Decision.objects.all():
        assert token not in decision.last_error and token not in str(decision.last_error_parts)


def _retry(decision: Decision, callbacks: Callable[..., Any]) -> str:
    """The retry the task scheduled, run now (the countdown is the broker's business)."""
    with callbacks(execute=False) as queued:
        outcome = deliver_decision(decision.pk)
    # The next attempt's task, or for a decision that failed for good its maker's notice.
    assert len(queued) == (1 if outcome in ("retry", "failed") else 0)
    return outcome


def test_a_delivered_decision_submits_the_form_and_resumes_following_the_run(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    form = make_form(app)
    token = form.form_token
    decision = decide(form, "approve", {"note": "refund in full"})
    assert deliver_decision(decision.pk) == "delivered"

    (post,) = dify.requests("POST", SUBMIT)
    assert post.body == {
        "inputs": {"note": "refund in full"},
        "action": "approve",
        "user": form.run.dify_user,
    }
    assert _state(decision) == ("delivered", "submitted", 1)
    form.refresh_from_db()
    assert form.decided_at == decision.created_at
    assert (form.filled_action_id, form.filled_action_text) == ("approve", "Approve")
    assert decision.delivered_at is not None
    run = Run.objects.get(pk=form.run_id)
    assert run.follow_wanted and run.follow_snapshot
    # The delivery's own trail: entries on the decision, and on the form naming the decision.
    verbs = list(
        AuditEntry.objects.filter(Q(object_type="decision") | Q(details__has_key="decision"))
        .order_by("id")
        .values_list("verb", flat=True)
    )
    assert verbs == ["decision_made", "delivery_started", "decision_delivered", "form_submitted"]
    _no_secret_anywhere(token)
    # Nothing is sent for the form again: its token is let go with the delivery.
    assert form.form_token == ""
    # A second task for the same decision (a redelivered message) sends nothing.
    assert deliver_decision(decision.pk) == "skipped"
    assert len(dify.requests("POST", SUBMIT)) == 1


def test_a_task_for_a_deleted_decision_returns_quietly(app: DifyApp) -> None:
    assert deliver_decision(424242) == "skipped"


def test_dify_validation_sends_the_decision_back_to_the_reviewer_with_its_message(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    dify.on("POST", SUBMIT, error(400, "invalid_form_data", "Missing required inputs: note"))
    form = make_form(app)
    decision = decide(form, "approve", {"note": ""})
    assert deliver_decision(decision.pk) == "rejected"
    assert _state(decision) == ("rejected", "pending", 1)
    assert decision.last_error == "Missing required inputs: note"
    assert decision.inputs == {"note": ""}  # the reviewer's values, to refill the page
    # The reviewer fixes it and decides again.
    dify.on("POST", SUBMIT, Reply())
    again = decide(Form.objects.get(pk=form.pk), "approve", {"note": "now with a note"})
    assert deliver_decision(again.pk) == "delivered"
    assert _state(again) == ("delivered", "submitted", 1)


def test_a_form_answered_in_dify_first_is_shown_as_answered_elsewhere(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    dify.on(
        "POST",
        SUBMIT,
        error(412, "human_input_form_submitted", "already been submitted by another user"),
    )
    form = make_form(app)
    decision = decide(form)
    assert deliver_decision(decision.pk) == "answered_elsewhere"
    assert _state(decision) == ("rejected", "answered_elsewhere", 1)
    assert decision.last_error == "This form was answered in Dify before this decision arrived."
    # The run's events are read once for how it was answered (one read, bounded in time):
    # they show nothing here, and a decision never known to have been sent is not presumed.
    assert len(dify.requests("GET", "/workflow/", query="include_state_snapshot")) == 1
    assert Run.objects.get(pk=form.run_id).follow_snapshot


def _filled(form: Form, action: str, title: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": "human_input_form_filled",
        "workflow_run_id": form.run.workflow_run_id,
        "data": {"node_id": form.node_id, "action_id": action, "action_text": title, **extra},
    }


def test_a_lost_answer_is_confirmed_from_the_run_events_watched_during_the_submit(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    form = make_form(app)
    # Dify applies the submit and the connection drops before the answer: the live stream that
    # was open during the call shows our action filling the form.
    dify.on("POST", SUBMIT, Reply(drop=True))
    dify.on(
        "GET",
        f"/workflow/{form.run.workflow_run_id}/events",
        Reply(
            events=[
                "event: ping",
                _filled(form, "approve", "Approve", rendered_content="Refund 120 EUR? ok"),
                {"event": "workflow_finished", "data": {"status": "succeeded"}},
            ]
        ),
    )
    decision = decide(form, "approve")
    assert deliver_decision(decision.pk) == "delivered"
    assert _state(decision) == ("delivered", "submitted", 1)
    (watch,) = dify.requests("GET", "/workflow/")
    assert "include_state_snapshot" not in watch.query
    assert f"user={form.run.dify_user}" in watch.query
    form.refresh_from_db()
    assert form.rendered_content == "Refund 120 EUR? ok"
    assert len(dify.requests("POST", SUBMIT)) == 1
    entry = AuditEntry.objects.get(verb="decision_delivered")
    assert entry.details["confirmed_by"] == "live events"


def test_a_lost_answer_with_another_action_in_the_events_is_answered_elsewhere(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    form = make_form(app)
    dify.on("POST", SUBMIT, Reply(drop=True))
    dify.on("GET", "/workflow/", Reply(events=[_filled(form, "reject", "Reject")]))
    decision = decide(form, "approve")
    assert deliver_decision(decision.pk) == "answered_elsewhere"
    assert _state(decision) == ("rejected", "answered_elsewhere", 1)
    assert decision.last_error == (
        "This form was answered in Dify before this decision arrived: Reject."
    )
    form.refresh_from_db()
    assert (form.filled_action_id, form.filled_action_text) == ("reject", "Reject")


def test_a_lost_answer_then_412_is_confirmed_from_a_snapshot_that_replays_the_fill(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    # The live stream showed nothing in time; newer Dify builds replay the retained event log
    # in a snapshot, which the retry reads after its 412.
    form = make_form(app)
    dify.on(
        "POST",
        SUBMIT,
        Reply(drop=True),
        error(412, "human_input_form_submitted", "already been submitted by another user"),
    )
    dify.on(
        "GET",
        "/workflow/",
        Reply(
            events=[
                {"event": "workflow_started", "data": {}},
                _filled(form, "approve", "Approve"),
                {"event": "workflow_finished", "data": {"status": "succeeded"}},
            ]
        ),
        query="include_state_snapshot=true",
    )
    decision = decide(form, "approve")
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    decision.refresh_from_db()
    assert decision.status == "queued" and decision.maybe_applied
    assert deliver_decision(decision.pk) == "delivered"
    assert _state(decision) == ("delivered", "submitted", 2)
    assert len(dify.requests("GET", "/workflow/", query="include_state_snapshot=true")) == 1
    assert len(dify.requests("POST", SUBMIT)) == 2


def test_a_lost_answer_then_412_with_no_trace_of_either_answer_is_presumed_ours(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    form = make_form(app)
    dify.on(
        "POST",
        SUBMIT,
        Reply(drop=True),
        error(412, "human_input_form_submitted", "already been submitted by another user"),
    )
    decision = decide(form, "approve")
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    assert deliver_decision(decision.pk) == "delivered"
    assert _state(decision) == ("delivered", "submitted", 2)
    entry = AuditEntry.objects.get(verb="decision_delivered")
    assert entry.details["confirmed_by"].startswith("presumed")
    # What was looked at first: the run's events, with a snapshot, for a trace of either answer.
    assert len(dify.requests("GET", "/workflow/", query="include_state_snapshot=true")) == 1
    # Readers are told it is presumed, not confirmed: the form's page and the API.
    decision = Decision.objects.get(pk=decision.pk)
    assert decision.delivery_presumed
    reviewer = decision.reviewer
    assert reviewer is not None
    reviewer.is_staff = True
    reviewer.save()
    client = Client()
    client.force_login(reviewer)
    page = client.get(f"/forms/{form.public_id}/").content.decode()
    assert "Not confirmed by Dify: an attempt to send this decision got no answer" in page
    from inbox.api import _decision_json

    assert _decision_json(decision)["delivery_presumed"] is True  # type: ignore[index]


def test_a_503_then_412_is_an_answer_given_elsewhere_not_ours(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    # Service Unavailable, answered in full: the submit was not taken on. The form closed in
    # Dify meanwhile: someone answered there (in the web app, by email).
    form = make_form(app)
    dify.on(
        "POST",
        SUBMIT,
        error(503, "unavailable", "Service Unavailable"),
        error(412, "human_input_form_submitted", "already been submitted by another user"),
    )
    decision = decide(form, "approve")
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    decision.refresh_from_db()
    assert not decision.maybe_applied
    deliver_decision(decision.pk)
    decision.refresh_from_db()
    assert decision.status != Decision.Status.DELIVERED
    assert decision.form.status == Form.Status.ANSWERED_ELSEWHERE
    assert not decision.delivery_presumed


def _loop(app: DifyApp) -> tuple[Form, Form]:
    """A node in a loop: its first form filled with "reject" (as capture records it), its
    second one now pending."""
    run = make_run(app)
    first = make_form(app, run=run, node_id="loop_review", form_id="F-loop-1")
    fill = _filled(first, "reject", "Reject", rendered_content="first round")
    run.apply_events([fill], fetch_definitions=False)
    first.refresh_from_db()
    assert first.filled_action_id == "reject"
    second = make_form(app, run=run, node_id="loop_review", form_id="F-loop-2")
    return first, second


def test_the_fill_of_an_earlier_form_of_the_same_node_is_not_taken_for_this_ones(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    _first, second = _loop(app)
    dify.on(
        "POST",
        SUBMIT,
        error(412, "human_input_form_submitted", "already been submitted by another user"),
    )
    decision = decide(second, "approve")
    assert deliver_decision(decision.pk) == "answered_elsewhere"
    # Not "...: Reject.": that was the first round's answer.
    assert decision.form.filled_action_id == ""
    decision.refresh_from_db()
    assert decision.last_error == "This form was answered in Dify before this decision arrived."


def test_a_replay_from_the_start_gives_a_loops_earlier_fill_to_its_own_form(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    first, second = _loop(app)
    dify.on(
        "POST",
        SUBMIT,
        Reply(drop=True),
        error(412, "human_input_form_submitted", "already been submitted by another user"),
    )
    announce = {"node_id": "loop_review", "form_content": "Refund 120 EUR?"}
    dify.on(
        "GET",
        "/workflow/",
        Reply(
            events=[
                {"event": "workflow_started", "data": {}},
                {"event": "human_input_required", "data": {**announce, "form_id": first.form_id}},
                _filled(first, "reject", "Reject", rendered_content="first round"),
                {"event": "human_input_required", "data": {**announce, "form_id": second.form_id}},
            ]
        ),
        query="include_state_snapshot=true",
    )
    decision = decide(second, "approve")
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    # The first round's "reject" is not this form's answer; this form is replayed as still
    # pending, and our own lost attempt is the only answer in sight.
    assert deliver_decision(decision.pk) == "delivered"
    entry = AuditEntry.objects.get(verb="decision_delivered")
    assert entry.details["confirmed_by"].startswith("presumed")


def test_the_followers_record_of_the_fill_is_used_before_asking_dify(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    form = make_form(app)
    dify.on(
        "POST",
        SUBMIT,
        error(502, "", "bad gateway"),
        error(412, "human_input_form_submitted", "already submitted"),
    )
    decision = decide(form, "approve")
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    # As capture stores a fill it gave to this form.
    form.run.events.create(
        event="human_input_form_filled",
        key=f"filled:{form.form_id}:approve",
        payload={
            "event": "human_input_form_filled",
            "data": {"node_id": form.node_id, "action_id": "approve"},
        },
    )
    assert deliver_decision(decision.pk) == "delivered"
    assert not dify.requests("GET", "/workflow/", query="include_state_snapshot")


def test_an_expired_form_in_dify_expires_here(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    dify.on("POST", SUBMIT, error(412, "human_input_form_expired", "This form has expired"))
    form = make_form(app)
    decision = decide(form)
    assert deliver_decision(decision.pk) == "expired"
    assert _state(decision) == ("rejected", "expired", 1)
    assert decision.last_error == "The form expired in Dify before the decision arrived."


def test_a_form_that_expired_while_queued_is_not_sent(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    form = make_form(app)
    decision = decide(form)
    Form.objects.filter(pk=form.pk).update(expiration_time=timezone.now() - dt.timedelta(seconds=1))
    assert deliver_decision(decision.pk) == "skipped"
    assert not dify.requests("POST", SUBMIT)
    assert _state(decision) == ("rejected", "expired", 0)
    assert decision.last_error == "The form expired before the decision could be delivered."


def test_an_unknown_form_fails_with_a_clear_reason(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    dify.on("POST", SUBMIT, error(404, "not_found", "Form not found"))
    form = make_form(app)
    decision = decide(form)
    assert deliver_decision(decision.pk) == "failed"
    assert _state(decision) == ("failed", "failed", 1)
    assert decision.last_error.startswith("Dify does not know this form (404)")


@pytest.mark.parametrize("status", [422, 409, 404])
def test_a_final_status_fails_whatever_code_its_body_gives(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision], status: int
) -> None:
    # The status says the same submit would fail again; the body's "internal_server_error"
    # does not make it worth retrying.
    dify.on("POST", SUBMIT, error(status, "internal_server_error", "Internal Server Error"))
    form = make_form(app)
    decision = decide(form)
    assert deliver_decision(decision.pk) == "failed"
    assert _state(decision) == ("failed", "failed", 1)
    assert len(dify.requests("POST", SUBMIT)) == 1
    assert f"({status}" in decision.last_error


def test_a_server_error_is_retried_whatever_code_its_body_gives(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    # Dify answered 500: its body's "not_found" does not make the form unknown for good.
    dify.on("POST", SUBMIT, error(500, "not_found", "Form not found"), Reply())
    form = make_form(app)
    decision = decide(form)
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    decision.refresh_from_db()
    assert decision.status == "queued"
    assert "404" not in decision.last_error and "does not know" not in decision.last_error
    Decision.objects.filter(pk=decision.pk).update(next_attempt_at=timezone.now())
    assert deliver_decision(decision.pk) == "delivered"
    assert _state(decision) == ("delivered", "submitted", 2)


def test_5xx_and_429_are_retried_and_honour_retry_after(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    dify.on(
        "POST",
        SUBMIT,
        # A bad gateway may come after Dify took the submit (a 503 is never taken on).
        error(502, "", "bad gateway"),
        error(429, "too_many_requests", "slow down", **{"Retry-After": "7"}),
        Reply(),
    )
    form = make_form(app)
    decision = decide(form)
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    decision.refresh_from_db()
    assert decision.last_error == "502: bad gateway" and decision.maybe_applied
    before = timezone.now()
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    decision.refresh_from_db()
    assert decision.next_attempt_at is not None
    assert decision.next_attempt_at - before >= dt.timedelta(seconds=6.9)
    # A task that starts before the backoff is over (a redelivered or older countdown) is not
    # the one for this attempt: it sends nothing and spends no attempt.
    assert deliver_decision(decision.pk) == "skipped"
    assert _state(decision) == ("queued", "submitting", 2)
    assert len(dify.requests("POST", SUBMIT)) == 2
    # The backoff is over: the task scheduled for it delivers.
    Decision.objects.filter(pk=decision.pk).update(next_attempt_at=timezone.now())
    assert deliver_decision(decision.pk) == "delivered"
    assert _state(decision) == ("delivered", "submitted", 3)
    verbs = list(AuditEntry.objects.order_by("id").values_list("verb", flat=True))
    assert verbs.count("delivery_retry_scheduled") == 2


def test_retries_run_out_into_a_failed_decision_an_admin_can_retry(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    admin_user: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    dify.on("POST", SUBMIT, error(500, "internal_server_error", "boom"))
    form = make_form(app)
    decision = decide(form)
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    assert _retry(decision, django_capture_on_commit_callbacks) == "failed"
    assert _state(decision) == ("failed", "failed", 3)
    assert decision.last_error == (
        "Dify could not be reached after 3 attempts. Last error: 500 internal_server_error: boom"
    )
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert decision.retry_delivery(actor=admin_user)
    assert len(queued) == 1
    assert _state(decision) == ("queued", "submitting", 0)
    retried = AuditEntry.objects.get(verb="delivery_retry_requested", actor=admin_user)
    # A fresh budget for the backoff, and the sends before it kept: every send is counted.
    assert retried.details["attempts_before_retry"] == 3
    assert decision.total_attempts() == 3
    dify.on("POST", SUBMIT, Reply())
    assert deliver_decision(decision.pk) == "delivered"
    decision.refresh_from_db()
    assert (decision.attempts, decision.total_attempts()) == (1, 4)


@pytest.mark.parametrize("down", ["refused", "503"])
def test_an_outage_longer_than_the_attempts_fails_nothing(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
    down: str,
) -> None:
    form = make_form(app)
    decision = decide(form)
    if down == "refused":
        DifyApp.objects.filter(pk=app.pk).update(base_url="http://127.0.0.1:9/v1")
    else:
        # A gateway with nothing behind it.
        dify.on("POST", SUBMIT, error(503, "", "no healthy upstream"))
    for _ in range(5):
        assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
        Decision.objects.filter(pk=decision.pk).update(next_attempt_at=timezone.now())
    # Past its three attempts, still waiting for Dify, at the longest backoff.
    assert _state(decision) == ("queued", "submitting", 5)
    decision.refresh_from_db()
    assert decision.dify_unreachable == (down == "refused")
    before = timezone.now()
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    decision.refresh_from_db()
    assert decision.next_attempt_at is not None
    wait = (decision.next_attempt_at - before).total_seconds()
    assert 0.75 * settings.INBOX_DELIVERY_RETRY_CAP_SECONDS - 1 <= wait
    assert wait <= settings.INBOX_DELIVERY_RETRY_CAP_SECONDS + 1
    # Dify is back: delivered, once.
    DifyApp.objects.filter(pk=app.pk).update(base_url=dify.base_url)
    dify.on("POST", SUBMIT, Reply())
    Decision.objects.filter(pk=decision.pk).update(next_attempt_at=timezone.now())
    assert deliver_decision(decision.pk) == "delivered"
    assert len(dify.requests("POST", SUBMIT)) == (1 if down == "refused" else 7)


def test_a_timeout_is_retried_and_marks_the_attempt_as_maybe_applied(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    settings.INBOX_DELIVERY_TIMEOUT_SECONDS = 0.3
    dify.on("POST", SUBMIT, Reply(delay=1.0), Reply())
    form = make_form(app)
    decision = decide(form)
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    decision.refresh_from_db()
    assert decision.maybe_applied and "timed out" in decision.last_error
    assert deliver_decision(decision.pk) == "delivered"


def test_a_refused_connection_is_retried_and_known_not_to_have_landed(
    db: None,
    decide: Callable[..., Decision],
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    settings.INBOX_DELIVERY_RETRY_BASE_SECONDS = 0.01
    closed = DifyApp.objects.create(name="down", base_url="http://127.0.0.1:9/v1", api_key="k")
    decision = decide(make_form(closed))
    assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    decision.refresh_from_db()
    assert not decision.maybe_applied and "ConnectError" in decision.last_error


@pytest.mark.parametrize(
    ("attempt", "low", "high"), [(1, 1.5, 2.0), (2, 3.0, 4.0), (5, 24.0, 32.0), (30, 675.0, 900.0)]
)
def test_backoff_doubles_with_jitter_up_to_the_cap(
    settings: Any, attempt: int, low: float, high: float
) -> None:
    settings.INBOX_DELIVERY_RETRY_BASE_SECONDS = 2.0
    settings.INBOX_DELIVERY_RETRY_CAP_SECONDS = 900.0
    delays = [retry_delay(attempt) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # jittered, not one value
    assert retry_delay(1, retry_after=60.0) == 60.0


def test_a_refused_key_marks_the_app_and_the_next_delivery_dify_accepts_clears_it(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    dify.on(
        "POST",
        SUBMIT,
        # About this submission's values: the app is fine.
        error(400, "invalid_form_data", "Missing required inputs: note"),
        error(401, "unauthorized", "Access token is invalid"),
        Reply(),
    )
    form = make_form(app)
    assert deliver_decision(decide(form, "approve", {"note": ""}).pk) == "rejected"
    app.refresh_from_db()
    assert app.refused_at is None
    held = decide(form)
    assert deliver_decision(held.pk) == "held"
    app.refresh_from_db()
    assert app.refused_at is not None
    assert (app.refusal, app.refusal_status) == ("401 unauthorized: Access token is invalid", 401)
    assert AuditEntry.objects.get(verb="app_refused").details["source"] == "delivery"
    # The key is put right; the next decision goes through and the app is fine again.
    assert deliver_decision(decide(make_form(app)).pk) == "delivered"
    app.refresh_from_db()
    assert app.refused_at is None and app.refusal == ""
    # And the decision kept while the app was refused is due again.
    held.refresh_from_db()
    assert held.status == "queued" and not held.held_for_app and held.next_attempt_at


def test_the_worker_s_reasons_are_kept_in_english_and_read_in_the_reviewer_s_language(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    admin_user: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    """A reason with values in it (the attempts, Dify's status and words) is written by the
    worker in English, for the admin, the audit trail and the API; a reviewer reading Chinese
    reads the sentence in Chinese around the same values, Dify's words as Dify said them."""
    dify.on(
        "POST",
        SUBMIT,
        error(401, "unauthorized", "Access token is invalid"),
        error(500, "internal_server_error", "boom"),
        error(500, "internal_server_error", "boom"),
    )
    form = make_form(app)
    decision = decide(form)
    assert deliver_decision(decision.pk) == "held"
    decision.refresh_from_db()
    assert decision.last_error == (
        "Dify refused the decision (401 unauthorized): Access token is invalid"
    )
    client = Client()
    client.force_login(admin_user)

    def page() -> str:
        return client.get(
            f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans"
        ).content.decode()

    assert "Dify 拒绝了该决定（401 unauthorized）：Access token is invalid" in page()  # noqa: RUF001
    # The app is accepted again: the decision goes on, and runs out of its three attempts.
    Decision.release_held([app.pk])
    for expected in ("retry", "failed"):
        assert _retry(decision, django_capture_on_commit_callbacks) == expected
    decision.refresh_from_db()
    english = (
        "Dify could not be reached after 3 attempts. Last error: 500 internal_server_error: boom"
    )
    assert decision.last_error == english
    assert AuditEntry.objects.filter(verb="decision_failed").get().details["reason"] == english
    chinese = page()
    assert "尝试 3 次后仍无法连接 Dify。最后一次错误：500 internal_server_error: boom" in chinese  # noqa: RUF001
    assert "Dify could not be reached" not in chinese
    assert english in client.get(f"/forms/{form.public_id}/").content.decode()
    # A token in a value is kept out of the stored values as out of the text.
    assert form.form_token not in str(decision.last_error_parts)


def test_a_decision_dify_refuses_for_good_tells_its_maker_once(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    from django.core import mail

    from inbox import notify

    dify.on("POST", SUBMIT, error(400, "invalid_param", "Invalid value for field cause"))
    form = make_form(app)
    decision = decide(form)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert deliver_decision(decision.pk) == "failed"
    assert _state(decision) == ("failed", "failed", 1)
    assert len(queued) == 1  # the failure notice's task, once the failure is written
    mail.outbox.clear()
    assert notify.send_failure_notice(decision.pk) == 1
    (message,) = mail.outbox
    assert message.to == [reviewer.email]
    assert "“Approve”, could not be delivered to Dify" in message.body
    assert "400 invalid_param" in message.body and form.form_token not in message.body
    assert notify.send_failure_notice(decision.pk) == 0
    assert notify.send_due_emails(timezone.now() + dt.timedelta(minutes=5))["failures"] == 0
    assert len(mail.outbox) == 1


def test_a_failed_attempt_is_one_line_naming_the_app_and_its_server(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Dify's gateway has nothing behind it: the run's events and the submit both answer 503.
    dify.on("GET", "/workflow/", error(503, "", "no healthy upstream"))
    dify.on("POST", SUBMIT, error(503, "", "no healthy upstream"))
    form = make_form(app)
    decision = decide(form)
    with caplog.at_level("INFO", logger="inbox.tasks"):
        assert _retry(decision, django_capture_on_commit_callbacks) == "retry"
    assert dify.requests("GET", "/workflow/")  # the watch was tried
    lines = [r.getMessage() for r in caplog.records if f"decision {decision.pk}:" in r.getMessage()]
    # One line for the attempt (not a "not watching the run" line before it), saying which
    # app and which Dify, with no secret.
    (line,) = lines
    assert line.startswith(f"decision {decision.pk}: attempt 1 failed (503")
    assert f"app 'refunds' (id {app.pk}) at http://127.0.0.1:{dify.port}" in line
    assert form.form_token not in line and "app-key-123" not in line
