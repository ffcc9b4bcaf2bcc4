"""Delivery under faults: the Dify simulator with injected failures, a real Celery worker on
Redis, PostgreSQL. Each decision ends delivered exactly once (the simulator counts what reached
each form) or rejected with a reason; none is lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from inbox.models import AuditEntry, Decision, DifyApp, Form, Run
from tests.conftest import wait_until
from tests.delivery.conftest import Workers
from tests.delivery.helpers import simulated_forms
from tests.delivery.relay import Relay

pytestmark = pytest.mark.worker

APP = "refund-approval"


@pytest.fixture
def reviewer_user(transactional_db: None) -> User:
    return User.objects.create_user("alice", first_name="Alice")


@pytest.fixture
def relay(simulator: Any) -> Iterator[Relay]:
    host, port = simulator.root_url.removeprefix("http://").split(":")
    proxy = Relay(host, int(port))
    yield proxy
    proxy.close()


def _app(simulator: Any, base_url: str | None = None) -> DifyApp:
    return DifyApp.objects.create(
        name=APP, base_url=base_url or simulator.base_url, api_key=simulator.api_key(APP)
    )


def _decide_all(forms: list[Form], reviewer: User) -> list[Decision]:
    return [
        form.decide(
            action_id="approve", inputs={"decision_note": f"ok {form.pk}"}, reviewer=reviewer
        )
        for form in forms
    ]


def _settled(decisions: list[Decision]) -> Callable[[], bool]:
    pks = [d.pk for d in decisions]

    def check() -> bool:
        return not Decision.objects.filter(
            pk__in=pks, status__in=[Decision.Status.QUEUED, Decision.Status.DELIVERING]
        ).exists()

    return check


def _wait_settled(workers: Workers, decisions: list[Decision], timeout: float) -> None:
    try:
        wait_until(_settled(decisions), timeout=timeout, interval=0.1)
    except AssertionError:
        states = list(Decision.objects.values_list("pk", "status", "attempts", "last_error"))
        raise AssertionError(f"not settled: {states}\n{workers.log_tail()}") from None


def _delivered_once_each(simulator: Any, forms: list[Form]) -> None:
    for form in forms:
        decision = Decision.objects.get(form=form)
        assert decision.status == "delivered", (decision.status, decision.last_error)
        assert Form.objects.get(pk=form.pk).status == "submitted"
        assert simulator.submits_applied(form.form_id) == 1


@pytest.mark.slow
def test_decisions_queued_while_dify_is_down_are_all_delivered_once_it_returns(
    simulator: Any, relay: Relay, workers: Workers, reviewer_user: User
) -> None:
    forms = simulated_forms(simulator, _app(simulator, relay.url()), 20)
    relay.down()
    workers.start()
    decisions = _decide_all(forms, reviewer_user)
    # Dify is down: every attempt is refused and retried with backoff, for 5 s from the moment
    # the worker (which takes a few seconds to start) first tried.
    wait_until(lambda: Decision.objects.filter(attempts__gt=0).exists(), timeout=60)
    down_since = time.monotonic()
    wait_until(lambda: Decision.objects.filter(attempts__gt=1).count() == 20, timeout=30)
    time.sleep(max(0.0, 5 - (time.monotonic() - down_since)))
    assert Decision.objects.filter(status="delivered").count() == 0
    relay.up()
    back = time.monotonic()
    _wait_settled(workers, decisions, timeout=60)
    recovered = time.monotonic() - back
    _delivered_once_each(simulator, forms)
    # Refused connections never reached the simulator: one POST per form, the one that landed.
    assert all(simulator.submit_count(form.form_id) == 1 for form in forms)
    # Backoff is capped at 1 s here (INBOX_DELIVERY_RETRY_CAP_SECONDS): all are back within a
    # couple of rounds of it.
    assert recovered < 15, recovered


def test_5xx_and_429_bursts_are_retried_until_delivered_once(
    simulator: Any, workers: Workers, reviewer_user: User
) -> None:
    forms = simulated_forms(simulator, _app(simulator), 10)

    def injected() -> list[int]:
        return [e.status for e in simulator.exchanges("form_submit") if e.fault == "status"]

    workers.start()
    # One burst after another: a request takes every fault that matches it, so bursts added
    # together would overlap.
    simulator.add_fault("status", "form_submit", status=503, times=6)
    decisions = _decide_all(forms, reviewer_user)
    wait_until(lambda: len(injected()) == 6, timeout=60)
    simulator.add_fault("status", "form_submit", status=500, times=3)
    wait_until(lambda: len(injected()) == 9, timeout=30)
    simulator.add_fault("status", "form_submit", status=429, retry_after=1, times=4)
    _wait_settled(workers, decisions, timeout=90)
    _delivered_once_each(simulator, forms)

    failures = injected()
    assert failures.count(503) == 6 and failures.count(500) == 3
    retries = AuditEntry.objects.filter(verb="delivery_retry_scheduled")
    # Every injected failure cost one attempt and one retry, nothing more.
    assert retries.count() == len(failures)
    # Dify's Retry-After (1 s) is honoured: no 429 retry came sooner.
    rate_limited = [e for e in retries if "429" in e.details["error"]]
    assert len(rate_limited) == failures.count(429)
    assert all(e.details["delay"] >= 1.0 for e in rate_limited)


def test_the_http_status_not_the_body_s_code_decides_whether_a_refusal_is_final(
    simulator: Any, workers: Workers, reviewer_user: User
) -> None:
    plain, final, transient = simulated_forms(simulator, _app(simulator), 3)
    # A 422 as Dify sends it, a 422 whose body says "internal_server_error", a 500 whose body
    # says "not_found": the first two are final, the last is retried.
    simulator.add_fault("status", "form_submit", form=plain.form_id, status=422)
    simulator.add_fault(
        "status", "form_submit", form=final.form_id, status=422, code="internal_server_error"
    )
    simulator.add_fault(
        "status", "form_submit", form=transient.form_id, status=500, code="not_found"
    )
    tokens = {form.pk: form.form_token for form in (plain, final, transient)}

    def posts(form: Form) -> int:
        return sum(tokens[form.pk] in e.path for e in simulator.exchanges("form_submit"))

    workers.start()
    decisions = _decide_all([plain, final, transient], reviewer_user)
    _wait_settled(workers, decisions, timeout=60)
    for form in (plain, final):
        decision = Decision.objects.get(form=form)
        assert (decision.status, decision.attempts) == ("failed", 1), decision.last_error
        assert "(422 " in decision.last_error
        assert posts(form) == 1
        assert simulator.submits_applied(form.form_id) == 0
    _delivered_once_each(simulator, [transient])
    assert Decision.objects.get(form=transient).attempts == 2
    assert posts(transient) == 2


def test_responses_slower_than_the_timeout_end_delivered_once(
    simulator: Any, workers: Workers, reviewer_user: User
) -> None:
    # The worker gives up after 1 s (INBOX_DELIVERY_TIMEOUT_SECONDS); Dify answers after 2.5 s
    # and applies the submit anyway. The retry then meets either that submit (412) or arrives
    # first; either way one submission is applied and the decision is delivered.
    forms = simulated_forms(simulator, _app(simulator), 3)
    simulator.add_fault("delay", "form_submit", delay=2.5, times=3)
    workers.start()
    decisions = _decide_all(forms, reviewer_user)
    _wait_settled(workers, decisions, timeout=90)
    _delivered_once_each(simulator, forms)
    assert all(d.attempts >= 2 for d in Decision.objects.all())
    errors = AuditEntry.objects.filter(verb="delivery_retry_scheduled").values_list(
        "details__error", flat=True
    )
    assert any("timed out" in error for error in errors), list(errors)


def test_an_answer_lost_after_the_submit_was_applied_is_delivered_once(
    simulator: Any, workers: Workers, reviewer_user: User
) -> None:
    forms = simulated_forms(simulator, _app(simulator), 5)
    simulator.add_fault("drop_after_submit", "form_submit", times=5)
    workers.start()
    decisions = _decide_all(forms, reviewer_user)
    _wait_settled(workers, decisions, timeout=60)
    _delivered_once_each(simulator, forms)
    # The run's live events, watched during the call, showed our action: no second POST.
    assert all(simulator.submit_count(form.form_id) == 1 for form in forms)
    confirmations = AuditEntry.objects.filter(verb="decision_delivered").values_list(
        "details__confirmed_by", flat=True
    )
    assert list(confirmations) == ["live events"] * 5


def _recovered_once(
    simulator: Any, workers: Workers, decision: Decision, form: Form, *, posts: int
) -> None:
    # Still `delivering`: the dead worker never wrote an outcome.
    assert Decision.objects.get(pk=decision.pk).status == "delivering"
    workers.start(beat=True)  # a new worker, with beat running the delivery sweep
    _wait_settled(workers, [decision], timeout=60)
    decision.refresh_from_db()
    assert (decision.status, decision.attempts) == ("delivered", 2), decision.last_error
    assert Form.objects.get(pk=form.pk).status == "submitted"
    assert simulator.submits_applied(form.form_id) == 1
    assert simulator.submit_count(form.form_id) == posts
    verbs = set(AuditEntry.objects.filter(object_type="decision").values_list("verb", flat=True))
    assert {"delivery_recovered", "decision_delivered"} <= verbs


def test_a_worker_killed_while_dify_holds_the_submit_is_recovered_and_delivered_once(
    simulator: Any, workers: Workers, reviewer_user: User
) -> None:
    (form,) = simulated_forms(simulator, _app(simulator), 1)
    # Dify sits on the request for 3 s, so the kill lands while the worker waits for it.
    simulator.add_fault("delay", "form_submit", delay=3.0, times=1)
    # This worker waits up to 10 s for Dify (so it is still waiting when killed); its stuck
    # threshold must then exceed its longer time limit.
    first = workers.start(
        env={"INBOX_DELIVERY_TIMEOUT_SECONDS": "10", "INBOX_DELIVERY_STUCK_SECONDS": "40"}
    )
    (decision,) = _decide_all([form], reviewer_user)
    wait_until(lambda: simulator.request_count("form_submit") == 1, timeout=30)
    workers.kill(first)
    # The connection died with the worker before Dify read the body: nothing was applied, the
    # sweep's second attempt is the one that lands.
    _recovered_once(simulator, workers, decision, form, posts=1)


def test_a_worker_killed_after_dify_applied_the_submit_is_recovered_and_counted_once(
    simulator: Any, workers: Workers, reviewer_user: User
) -> None:
    (form,) = simulated_forms(simulator, _app(simulator), 1)
    # The answer is lost on the way back and Dify resumes the run only after 5 s, so the worker
    # is still listening for the run's events when it is killed, with the submit applied.
    simulator.add_fault("drop_after_submit", "form_submit", times=1)
    simulator.set_options(resume_delay=5.0)
    first = workers.start(
        env={"INBOX_DELIVERY_WATCH_SECONDS": "10", "INBOX_DELIVERY_STUCK_SECONDS": "40"}
    )
    (decision,) = _decide_all([form], reviewer_user)
    wait_until(lambda: simulator.submits_applied(form.form_id) == 1, timeout=30)
    time.sleep(0.5)
    workers.kill(first)
    # The second attempt meets 412 "already submitted"; nothing in Dify's events names another
    # answer, and our first attempt may have landed: delivered, once.
    _recovered_once(simulator, workers, decision, form, posts=2)
    entry = AuditEntry.objects.get(verb="decision_delivered")
    assert entry.details["confirmed_by"].startswith("presumed")


def test_forms_answered_or_expired_in_dify_are_shown_so_through_the_worker(
    simulator: Any, workers: Workers, reviewer_user: User
) -> None:
    answered, expired = simulated_forms(simulator, _app(simulator), 2)
    assert simulator.submit_elsewhere(answered.form_id, "reject", {"decision_note": "no"})
    assert simulator.expire_form(expired.form_id)
    workers.start()
    decisions = _decide_all([answered, expired], reviewer_user)
    _wait_settled(workers, decisions, timeout=60)
    answered.refresh_from_db()
    expired.refresh_from_db()
    assert answered.status == "answered_elsewhere" and expired.status == "expired"
    first, second = (Decision.objects.get(pk=d.pk) for d in decisions)
    assert (first.status, first.last_error) == (
        "rejected",
        "This form was answered in Dify before this decision arrived.",
    )
    assert (second.status, second.last_error) == (
        "rejected",
        "The form expired in Dify before the decision arrived.",
    )
    assert simulator.submits_applied(answered.form_id) == 1  # the other channel's, not ours


def test_the_worker_survives_its_database_connections_being_ended_between_tasks(
    simulator: Any, workers: Workers, reviewer_user: User
) -> None:
    forms = simulated_forms(simulator, _app(simulator), 4)
    worker = workers.start(pool="threads", concurrency=2)
    first = _decide_all(forms[:2], reviewer_user)
    _wait_settled(workers, first, timeout=60)
    # The task's last write (the run handed back to the follower) is done too.
    wait_until(
        lambda: Run.objects.filter(forms__in=forms[:2], follow_wanted=True).count() == 2,
        timeout=30,
    )
    # The worker keeps its connections between tasks. End them from the server's side, as a
    # PostgreSQL restart, a failover or an idle-session timeout would.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        ended = sum(1 for (done,) in cursor.fetchall() if done)
    assert ended >= 1  # there were kept connections to end
    second = _decide_all(forms[2:], reviewer_user)
    _wait_settled(workers, second, timeout=60)
    assert worker.poll() is None
    _delivered_once_each(simulator, forms)
    # The dead connection was replaced before the task used it: no attempt was lost to it.
    assert [Decision.objects.get(pk=d.pk).attempts for d in second] == [1, 1]


def test_decisions_refused_for_a_revoked_key_wait_and_go_once_an_administrator_fixes_it(
    simulator: Any, workers: Workers, reviewer_user: User
) -> None:
    app = _app(simulator)
    forms = simulated_forms(simulator, app, 5)
    good_key = app.api_key
    # The key was rotated in Dify and not here yet: every submit is refused with a 401.
    DifyApp.objects.filter(pk=app.pk).update(api_key="app-rotated-key-000000")
    workers.start()
    decisions = _decide_all(forms, reviewer_user)
    wait_until(lambda: Decision.objects.filter(held_for_app=True).count() == 5, timeout=60)
    assert not Decision.objects.exclude(status="queued").exists()
    assert all(simulator.submits_applied(form.form_id) == 0 for form in forms)
    app.refresh_from_db()
    assert app.refused_at is not None and app.refusal_status == 401
    # Nothing is sent while it waits, however long: no retries burn the attempts.
    time.sleep(2)
    assert sorted(Decision.objects.values_list("attempts", flat=True)) == [1] * 5

    app.api_key = good_key
    app.save()
    app.settings_changed()
    _wait_settled(workers, decisions, timeout=30)
    _delivered_once_each(simulator, forms)
