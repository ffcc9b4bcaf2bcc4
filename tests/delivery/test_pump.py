"""The delivery pump (`deliver_queued`): the due decisions in batches, each with the outcome a
lone `deliver_decision` would give it; one message per burst of decisions. Real database
(committed rows: the batch is sent from threads), a scripted Dify on loopback."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, connections
from django.db.models import Q
from django.utils import timezone

from inbox import tasks
from inbox.models import AuditEntry, Decision, DeliveryPump, DifyApp, Form, Run
from inbox.tasks import deliver_queued
from tests.delivery.helpers import make_form
from tests.delivery.scripted import Reply, ScriptedDify, error

pytestmark = [pytest.mark.smoke, pytest.mark.django_db(transaction=True)]

SUBMIT = "/form/human_input/"


@pytest.fixture
def dify() -> Iterator[ScriptedDify]:
    server = ScriptedDify()
    yield server
    server.close()


@pytest.fixture
def app(dify: ScriptedDify, settings: Any) -> DifyApp:
    settings.INBOX_DELIVERY_RETRY_BASE_SECONDS = 0.01
    settings.INBOX_DELIVERY_RETRY_CAP_SECONDS = 0.05
    settings.INBOX_DELIVERY_MAX_ATTEMPTS = 3
    settings.INBOX_DELIVERY_TIMEOUT_SECONDS = 1.0
    settings.INBOX_DELIVERY_BATCH = 2
    # One pump unless a test calls helpers.
    settings.INBOX_DELIVERY_PUMPS = 1
    return DifyApp.objects.create(name="refunds", base_url=dify.base_url, api_key="app-key-123")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The messages that would reach the broker: the pump's wake-ups and the retries' tasks.
    The tests run the pump themselves."""
    messages: list[str] = []
    monkeypatch.setattr(
        tasks.deliver_queued,
        "apply_async",
        lambda *a, kwargs=None, **k: messages.append(
            "deliver_queued helper" if (kwargs or {}).get("helper") else "deliver_queued"
        ),
    )
    monkeypatch.setattr(
        tasks.deliver_decision,
        "apply_async",
        lambda args, kwargs=None, **k: messages.append(f"deliver_decision {args[0]}"),
    )
    return messages


@pytest.fixture
def decide(reviewer: User, sent: list[str]) -> Callable[..., Decision]:
    def make(form: Form, action: str = "approve") -> Decision:
        return form.decide(action_id=action, inputs={"note": f"ok {form.pk}"}, reviewer=reviewer)

    return make


def _trail(decision: Decision) -> list[str]:
    return list(
        AuditEntry.objects.filter(
            Q(object_type="decision", object_id=str(decision.pk)) | Q(details__decision=decision.pk)
        )
        .order_by("id")
        .values_list("verb", flat=True)
    )


def test_the_pump_sends_every_due_decision_once_and_records_each_as_a_lone_delivery_would(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision], sent: list[str]
) -> None:
    forms = [make_form(app) for _ in range(5)]
    decisions = [decide(form, "reject" if i == 3 else "approve") for i, form in enumerate(forms)]
    # Five decisions, one message: the first wakes the pump, the others find it on its way.
    assert sent == ["deliver_queued"]

    assert deliver_queued() == {"delivered": 5}

    posts = dify.requests("POST", SUBMIT)
    assert sorted(p.path.rsplit("/", 1)[1] for p in posts) == sorted(f.form_token for f in forms)
    for form, decision in zip(forms, decisions, strict=True):
        (post,) = [p for p in posts if p.path.endswith(form.form_token)]
        assert post.body == {
            "inputs": {"note": f"ok {form.pk}"},
            "action": decision.action_id,
            "user": form.run.dify_user,
        }
        decision.refresh_from_db()
        form.refresh_from_db()
        assert (decision.status, decision.attempts, decision.last_error) == ("delivered", 1, "")
        assert decision.delivered_at is not None and decision.next_attempt_at is None
        assert form.status == "submitted"
        assert form.decided_at == decision.created_at
        title = "Reject" if decision.action_id == "reject" else "Approve"
        assert (form.filled_action_id, form.filled_action_text) == (decision.action_id, title)
        run = Run.objects.get(pk=form.run_id)
        assert run.follow_wanted and run.follow_snapshot
        assert _trail(decision) == [
            "decision_made",
            "delivery_started",
            "decision_delivered",
            "form_submitted",
        ]
    assert DeliveryPump.objects.get(pk=1).requested_at is None
    # Nothing is due any more: a second pump finds nothing and sends nothing.
    assert deliver_queued() == {}
    assert len(dify.requests("POST", SUBMIT)) == 5


def test_every_other_outcome_in_a_batch_is_recorded_for_its_own_decision(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision], sent: list[str]
) -> None:
    accepted, invalid, taken, closed, expired = (make_form(app) for _ in range(5))
    dify.on("POST", SUBMIT + invalid.form_token, error(400, "invalid_form_data", "note missing"))
    dify.on(
        "POST",
        SUBMIT + taken.form_token,
        error(412, "human_input_form_submitted", "already been submitted"),
    )
    decisions = {form.pk: decide(form) for form in (accepted, invalid, taken, closed, expired)}
    # While they wait: one form is answered in Dify (the follower saw the fill), one expires.
    Form.objects.filter(pk=closed.pk).update(
        status=Form.Status.ANSWERED_ELSEWHERE, form_token="", filled_action_id="reject"
    )
    Form.objects.filter(pk=expired.pk).update(
        expiration_time=timezone.now() - dt.timedelta(minutes=1)
    )

    counts = deliver_queued()

    assert counts == {"delivered": 1, "rejected": 1, "answered_elsewhere": 1, "skipped": 2}
    # No call for the two forms already closed.
    assert sorted(p.path.rsplit("/", 1)[1] for p in dify.requests("POST", SUBMIT)) == sorted(
        [accepted.form_token, invalid.form_token, taken.form_token]
    )
    expect = {
        accepted.pk: ("delivered", "submitted"),
        invalid.pk: ("rejected", "pending"),
        taken.pk: ("rejected", "answered_elsewhere"),
        closed.pk: ("rejected", "answered_elsewhere"),
        expired.pk: ("rejected", "expired"),
    }
    for form_pk, (status, form_status) in expect.items():
        decision = Decision.objects.select_related("form").get(pk=decisions[form_pk].pk)
        assert (decision.status, decision.form.status) == (status, form_status), form_pk
    assert Decision.objects.get(pk=decisions[invalid.pk].pk).last_error == "note missing"


def test_a_decision_due_later_waits_for_its_own_task_and_a_dify_error_retries_it(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    sent: list[str],
    settings: Any,
) -> None:
    settings.INBOX_DELIVERY_RETRY_BASE_SECONDS = 60
    settings.INBOX_DELIVERY_RETRY_CAP_SECONDS = 60
    busy, fine = make_form(app), make_form(app)
    dify.on("POST", SUBMIT + busy.form_token, error(503, "unavailable", "try later"))
    retried, delivered = decide(busy), decide(fine)
    sent.clear()

    assert deliver_queued() == {"retry": 1, "delivered": 1}

    retried.refresh_from_db()
    assert (retried.status, retried.attempts) == ("queued", 1)
    assert retried.next_attempt_at is not None and retried.next_attempt_at > timezone.now()
    # The retry is its own task, with the backoff as its countdown; the pump leaves it alone
    # until it is due.
    assert sent == [f"deliver_decision {retried.pk}"]
    assert deliver_queued() == {}
    assert len(dify.requests("POST", SUBMIT + busy.form_token)) == 1
    Decision.objects.filter(pk=retried.pk).update(next_attempt_at=timezone.now())
    dify.on("POST", SUBMIT + busy.form_token)
    assert deliver_queued() == {"delivered": 1}
    assert Decision.objects.get(pk=delivered.pk).status == "delivered"


def test_the_pump_is_woken_again_once_it_started_or_when_its_wake_up_was_lost(
    app: DifyApp, decide: Callable[..., Decision], sent: list[str]
) -> None:
    decide(make_form(app))
    decide(make_form(app))
    assert sent == ["deliver_queued"]
    # The pump starts: a decision made from now on may come after its last look at the queue.
    DeliveryPump.started()
    decide(make_form(app))
    assert sent == ["deliver_queued"] * 2
    # A wake-up older than STALE_SECONDS whose pump never started (its message lost with a
    # killed worker) does not hold the next one back.
    DeliveryPump.objects.filter(pk=1).update(
        requested_at=timezone.now() - dt.timedelta(seconds=DeliveryPump.STALE_SECONDS + 1)
    )
    decide(make_form(app))
    assert sent == ["deliver_queued"] * 3
    # Without its row (a flushed table), the pump is woken and the row made again.
    DeliveryPump.objects.all().delete()
    decide(make_form(app))
    assert sent == ["deliver_queued"] * 4
    assert DeliveryPump.objects.get(pk=1).requested_at is not None


def test_a_pump_that_fails_calls_another_rather_than_leave_the_queue_to_the_sweep(
    app: DifyApp,
    decide: Callable[..., Decision],
    sent: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decide(make_form(app))
    sent.clear()

    def broken(limit: int) -> Any:
        raise DatabaseError("database is locked")

    monkeypatch.setattr(Decision, "claim_due", broken)
    with pytest.raises(DatabaseError):
        deliver_queued()
    # It had cleared the pump's request; another pump is on its way for what is due.
    assert sent == ["deliver_queued"]
    # A helper that fails leaves that to the pump that called it.
    sent.clear()
    with pytest.raises(DatabaseError):
        deliver_queued(helper=True)
    assert sent == []


def test_a_backlog_longer_than_the_pump_time_goes_on_in_a_new_pump(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    sent: list[str],
    settings: Any,
) -> None:
    settings.INBOX_DELIVERY_PUMP_SECONDS = 0
    decisions = [decide(make_form(app)) for _ in range(5)]
    sent.clear()

    # One batch (of 2), or on SQLite one decision: all a pump claims at a time there.
    first = 2 if connection.features.has_select_for_update_skip_locked else 1
    assert deliver_queued() == {"delivered": first}
    assert sent == ["deliver_queued"]
    assert Decision.objects.filter(status="queued").count() == 5 - first
    # The new pump (and the next) take the rest.
    while Decision.objects.filter(status="queued").exists():
        deliver_queued()
    assert {d.status for d in Decision.objects.filter(pk__in=[d.pk for d in decisions])} == {
        "delivered"
    }
    assert len(dify.requests("POST", SUBMIT)) == 5


def test_on_sqlite_a_slow_dify_leaves_what_the_pump_did_not_send_queued_and_unattempted(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    sent: list[str],
    settings: Any,
) -> None:
    if connection.features.has_select_for_update_skip_locked:
        pytest.skip("SQLite's one-call-at-a-time path; PostgreSQL sends a batch on threads")
    # Each submit takes longer than the pump may run: the pump stops after the first.
    settings.INBOX_DELIVERY_PUMP_SECONDS = 0.2
    dify.on("POST", SUBMIT, Reply(delay=0.4, body={"result": "success"}))
    decisions = [decide(make_form(app)) for _ in range(4)]
    sent.clear()
    assert deliver_queued() == {"delivered": 1}
    waiting = Decision.objects.exclude(status="delivered")
    assert waiting.count() == 3
    # Never claimed: no attempt counted, not marked as perhaps applied, not "delivering".
    assert {(d.status, d.attempts, d.maybe_applied) for d in waiting} == {("queued", 0, False)}
    assert sent == ["deliver_queued"]
    assert len(dify.requests("POST", SUBMIT)) == 1
    assert len(decisions) == 4


def test_a_backlog_calls_helper_pumps_that_share_it_and_leave_the_wake_up_to_the_pump(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    sent: list[str],
    settings: Any,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("helpers need row locks that skip what another pump holds (PostgreSQL)")
    settings.INBOX_DELIVERY_PUMPS = 3
    forms = [make_form(app) for _ in range(7)]
    for form in forms:
        decide(form)
    sent.clear()
    # A full batch claimed: two helpers are called, once.
    assert deliver_queued() == {"delivered": 7}
    assert sent == ["deliver_queued helper"] * 2
    # A helper that comes late finds nothing; it never clears the pump's wake-up record (a
    # decision made meanwhile already sent the message that record stands for).
    sent.clear()
    requested = timezone.now()
    DeliveryPump.objects.filter(pk=1).update(requested_at=requested)
    assert deliver_queued(helper=True) == {}
    assert DeliveryPump.objects.get(pk=1).requested_at == requested
    # A helper calls no helper and, out of time, hands nothing on: its pump does.
    settings.INBOX_DELIVERY_PUMP_SECONDS = 0
    for _ in range(5):
        decide(make_form(app))
    sent.clear()
    assert deliver_queued(helper=True) == {"delivered": 2}
    assert sent == []
    assert Decision.objects.filter(status="queued").count() == 3
    assert len(dify.requests("POST", SUBMIT)) == 9
    posts = [p.path.rsplit("/", 1)[1] for p in dify.requests("POST", SUBMIT)]
    assert len(set(posts)) == 9


def test_two_pumps_started_at_once_send_each_decision_once_and_leave_none_behind(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision], settings: Any
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip(
            "two writers at once: SQLite's in-memory test database (shared cache) fails the "
            "second with 'table is locked' instead of waiting as the embedded file database does"
        )
    settings.INBOX_DELIVERY_BATCH = 3
    forms = [make_form(app) for _ in range(20)]
    for form in forms:
        decide(form)
    # Two wake-ups waiting when the worker starts: both pumps reach the queue at once. Each
    # runs once, as its message would; neither may take the other's share of a batch for the
    # end of the queue.
    results: list[dict[str, int]] = []
    failures: list[BaseException] = []
    ready = threading.Barrier(2)

    def pump() -> None:
        try:
            ready.wait(timeout=10)
            results.append(deliver_queued())
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=pump) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert not Decision.objects.exclude(status="delivered").exists()
    assert sum(r.get("delivered", 0) for r in results) == 20
    posts = [p.path.rsplit("/", 1)[1] for p in dify.requests("POST", SUBMIT)]
    assert sorted(posts) == sorted(f.form_token for f in forms)
    assert Decision.objects.filter(status="delivered", attempts=1).count() == 20


def test_once_dify_answers_again_the_decisions_that_could_not_reach_it_are_sent_at_once(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    sent: list[str],
    settings: Any,
) -> None:
    settings.INBOX_DELIVERY_RETRY_BASE_SECONDS = 60
    settings.INBOX_DELIVERY_RETRY_CAP_SECONDS = 60
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    # Dify is down: nothing listens there, the connections are refused.
    DifyApp.objects.filter(pk=app.pk).update(base_url=f"http://127.0.0.1:{closed_port}/v1")
    first, second = decide(make_form(app)), decide(make_form(app))
    assert deliver_queued() == {"retry": 2}
    # Dify is back, and busy for one more form: that one reached it and was told to wait.
    DifyApp.objects.filter(pk=app.pk).update(base_url=dify.base_url)
    busy_form = make_form(app)
    dify.on("POST", SUBMIT + busy_form.form_token, error(503, "unavailable", "try later"))
    busy = decide(busy_form)
    assert deliver_queued() == {"retry": 1}
    waiting = {d.pk: d for d in Decision.objects.filter(pk__in=[first.pk, second.pk, busy.pk])}
    assert [waiting[d.pk].dify_unreachable for d in (first, second, busy)] == [True, True, False]
    assert all(
        d.next_attempt_at > timezone.now() + dt.timedelta(seconds=30) for d in waiting.values()
    )

    # The first retry comes due and gets through.
    Decision.objects.filter(pk=first.pk).update(next_attempt_at=timezone.now())
    sent.clear()
    assert tasks.deliver_decision(first.pk) == "delivered"

    # The other one that never reached Dify is due now and the pump is woken for it; the one
    # Dify asked to wait keeps its backoff.
    assert sent == ["deliver_queued"]
    assert deliver_queued() == {"delivered": 1}
    assert Decision.objects.get(pk=second.pk).status == "delivered"
    busy.refresh_from_db()
    assert busy.status == "queued" and busy.next_attempt_at > timezone.now()
    assert len(dify.requests("POST", SUBMIT + busy_form.form_token)) == 1


def test_a_batch_dify_accepts_clears_the_refusal_of_its_app(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    DifyApp.objects.filter(pk=app.pk).update(
        refused_at=timezone.now(),
        refusal="401 unauthorized: Access token is invalid",
        refusal_status=401,
    )
    for _ in range(3):
        decide(make_form(app))
    assert deliver_queued() == {"delivered": 3}
    app.refresh_from_db()
    assert app.refused_at is None and app.refusal == ""
    assert AuditEntry.objects.filter(verb="app_accepted").count() == 1


def test_a_decision_dify_refuses_for_its_app_is_kept_until_dify_accepts_the_app_again(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision], sent: list[str]
) -> None:
    # The app's key was revoked in Dify: the decision is not at fault, the app is.
    dify.on("POST", SUBMIT, error(401, "unauthorized", "Access token is invalid"))
    form = make_form(app)
    decision = decide(form)
    assert deliver_queued() == {"held": 1}
    decision.refresh_from_db()
    assert (decision.status, decision.held_for_app, decision.next_attempt_at) == (
        "queued",
        True,
        None,
    )
    assert decision.last_error == (
        "Dify refused the decision (401 unauthorized): Access token is invalid"
    )
    assert Form.objects.get(pk=form.pk).status == "submitting"
    assert _trail(decision)[-2:] == ["delivery_started", "delivery_held"]
    app.refresh_from_db()
    assert app.refused_at is not None

    # Nothing sends it while the app is refused: not the pump, not a stale task, not the sweep.
    assert deliver_queued() == {}
    assert tasks.deliver_decision(decision.pk) == "skipped"
    assert tasks.sweep_deliveries() == {"stuck": 0, "resent": 0, "released": 0}
    assert len(dify.requests("POST", SUBMIT)) == 1

    # Dify accepts the app again (the reconcile's probe, say): the decision is due at once.
    dify.on("POST", SUBMIT, Reply())
    sent.clear()
    assert app.note_accepted("reconcile")
    assert sent == ["deliver_queued"]
    decision.refresh_from_db()
    assert not decision.held_for_app and decision.next_attempt_at is not None
    assert deliver_queued() == {"delivered": 1}
    assert _state_of(decision) == ("delivered", "submitted", 2)
    assert len(dify.requests("POST", SUBMIT + form.form_token)) == 2


def _state_of(decision: Decision) -> tuple[str, str, int]:
    decision.refresh_from_db()
    return decision.status, decision.form.status, decision.attempts


def test_an_administrators_new_key_sends_the_decisions_held_for_the_app(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision], admin_user: User
) -> None:
    dify.on("POST", SUBMIT, error(403, "forbidden", "App is disabled"), Reply(), Reply())
    first, second = decide(make_form(app)), decide(make_form(app))
    # The first is refused and held; the second, claimed in the same batch, is refused too.
    dify.on("POST", SUBMIT, error(403, "forbidden", "App is disabled"))
    assert deliver_queued() == {"held": 2}
    app.refresh_from_db()
    app.api_key = "app-key-new"
    app.save()
    dify.on("POST", SUBMIT, Reply())
    app.settings_changed(actor=admin_user)
    assert deliver_queued() == {"delivered": 2}
    assert {d.status for d in Decision.objects.filter(pk__in=[first.pk, second.pk])} == {
        "delivered"
    }


def test_the_sweep_sends_a_held_decision_whose_app_was_accepted_meanwhile_or_whose_form_expired(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision], sent: list[str]
) -> None:
    dify.on("POST", SUBMIT, error(401, "unauthorized", "Access token is invalid"))
    kept, late = decide(make_form(app)), decide(make_form(app))
    assert deliver_queued() == {"held": 2}
    # The form of one expires in Dify while it waits: the attempt settles it without asking.
    Form.objects.filter(pk=late.form_id).update(
        expiration_time=timezone.now() - dt.timedelta(seconds=1)
    )
    sent.clear()
    assert tasks.sweep_deliveries() == {"stuck": 0, "resent": 0, "released": 1}
    assert sent == ["deliver_queued"]
    assert deliver_queued() == {"skipped": 1}
    late.refresh_from_db()
    assert (late.status, late.held_for_app) == ("rejected", False)
    assert Form.objects.get(pk=late.form_id).status == "expired"
    # Dify accepted the app again, but the release missed the other one (it was held a moment
    # after the release read): the sweep finds it.
    DifyApp.objects.filter(pk=app.pk).update(refused_at=None, refusal="", refusal_status=None)
    dify.on("POST", SUBMIT, Reply())
    assert tasks.sweep_deliveries() == {"stuck": 0, "resent": 0, "released": 1}
    assert deliver_queued() == {"delivered": 1}
    assert Decision.objects.get(pk=kept.pk).status == "delivered"
    assert len(dify.requests("POST", SUBMIT)) == 3


def test_a_refusal_that_comes_back_while_dify_accepts_other_calls_fails_after_the_attempts(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    # A key that may read runs but not submit forms: each release ends in another refusal.
    dify.on("POST", SUBMIT, error(403, "forbidden", "Not allowed"))
    decision = decide(make_form(app))
    outcomes = []
    for _ in range(3):
        outcomes.append(deliver_queued())
        app.refresh_from_db()
        app.note_accepted("reconcile")
    assert outcomes == [{"held": 1}, {"held": 1}, {"failed": 1}]
    assert _state_of(decision) == ("failed", "failed", 3)
    assert decision.last_error == "Dify refused the decision (403 forbidden): Not allowed"


def test_the_sweep_sends_a_held_decision_once_its_app_is_refused_only_for_its_kind(
    app: DifyApp, dify: ScriptedDify, decide: Callable[..., Decision]
) -> None:
    dify.on("POST", SUBMIT, error(401, "unauthorized", "Access token is invalid"))
    decision = decide(make_form(app))
    assert deliver_queued() == {"held": 1}
    # The key was fixed, and a start since found the app set up as the wrong kind: Dify takes
    # the key, and a submit does not care about the app's kind.
    DifyApp.objects.filter(pk=app.pk).update(
        refusal="400 not_workflow_app: Please check if your app mode matches the right API route.",
        refusal_status=400,
        refusal_code="not_workflow_app",
    )
    dify.on("POST", SUBMIT, Reply())
    assert tasks.sweep_deliveries() == {"stuck": 0, "resent": 0, "released": 1}
    assert deliver_queued() == {"delivered": 1}
    assert Decision.objects.get(pk=decision.pk).status == "delivered"


def test_a_decision_this_process_cannot_decrypt_waits_and_the_others_go(
    app: DifyApp,
    dify: ScriptedDify,
    decide: Callable[..., Decision],
    sent: list[str],
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from cryptography.fernet import Fernet

    settings.INBOX_DELIVERY_RETRY_CAP_SECONDS = 900.0  # as in production
    # Captured by a web process that already has the new key in front; this worker has not.
    newer = Fernet.generate_key().decode()
    before = list(settings.INBOX_ENCRYPTION_KEYS)
    settings.INBOX_ENCRYPTION_KEYS = [newer, *before]
    unreadable = decide(make_form(app))
    settings.INBOX_ENCRYPTION_KEYS = before
    readable = decide(make_form(app))

    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver_queued() == {"delivered": 1}
    readable.refresh_from_db()
    unreadable.refresh_from_db()
    assert readable.status == "delivered"
    assert unreadable.status == "queued" and unreadable.attempts == 0
    assert "lacks the key that encrypted it" in unreadable.last_error
    # Looked at again within a minute, not after the longest backoff (15 minutes in production),
    # by a task of its own: a worker restarted with the key sends it then.
    wait = (unreadable.next_attempt_at - timezone.now()).total_seconds()
    assert 50 < wait <= 60
    assert sent == [f"deliver_decision {unreadable.pk}"]
    # That task, still without the key: put off again the same way. No attempt counted, nothing
    # presumed sent, no backoff growing towards the form failing.
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        due = unreadable.next_attempt_at.isoformat()
        assert tasks.deliver_decision(unreadable.pk, due) == "skipped"
    unreadable.refresh_from_db()
    assert (unreadable.status, unreadable.attempts, unreadable.maybe_applied) == (
        "queued",
        0,
        False,
    )
    assert 50 < (unreadable.next_attempt_at - timezone.now()).total_seconds() <= 60
    assert sent == [f"deliver_decision {unreadable.pk}"]
    # With the key back, the next one sends it.
    settings.INBOX_ENCRYPTION_KEYS = [newer, *before]
    due = unreadable.next_attempt_at.isoformat()
    assert tasks.deliver_decision(unreadable.pk, due) == "delivered"
    unreadable.refresh_from_db()
    assert unreadable.status == "delivered" and unreadable.attempts == 1
