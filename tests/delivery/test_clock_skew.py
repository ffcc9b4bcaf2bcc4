"""Deliveries coordinated by processes on hosts whose clocks disagree: when a decision is due
and since when a delivery is in flight are both kept by the database's clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import F

from inbox import tasks
from inbox.models import Decision, DeliveryPump, DifyApp, database_now
from inbox.tasks import sweep_deliveries
from tests.clock import SKEW, host_clock
from tests.delivery.helpers import make_form

pytestmark = pytest.mark.smoke


@pytest.fixture
def app(db: None, settings: Any) -> DifyApp:
    settings.INBOX_DELIVERY_STUCK_SECONDS = 60
    settings.INBOX_DELIVERY_REQUEUE_AFTER_SECONDS = 60
    # Dify is never asked: nothing listens on port 9.
    return DifyApp.objects.create(
        name="refunds", base_url="http://127.0.0.1:9/v1", api_key="app-key-123"
    )


@pytest.fixture
def decide(
    app: DifyApp, reviewer: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> Callable[[], Decision]:
    def decide() -> Decision:
        with django_capture_on_commit_callbacks(execute=False):
            return make_form(app).decide(action_id="approve", inputs={}, reviewer=reviewer)

    return decide


def _claim_one(pk: int) -> Decision | None:
    return Decision.start_delivery(pk)


def _claim_due(pk: int) -> Decision | None:
    claimed, _closed, _drained = Decision.claim_due(10)
    return next((d for d in claimed if d.pk == pk), None)


def _ago(seconds: float) -> dt.datetime:
    return database_now() - dt.timedelta(seconds=seconds)


def _sweep(django_capture_on_commit_callbacks: Callable[..., Any]) -> dict[str, int]:
    with django_capture_on_commit_callbacks(execute=False):
        return sweep_deliveries()


@pytest.mark.parametrize("claim", [_claim_one, _claim_due], ids=["task", "pump"])
def test_a_delivery_started_seconds_ago_by_a_worker_whose_clock_is_behind_is_not_recovered(
    decide: Callable[[], Decision],
    claim: Callable[[int], Decision | None],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    decision = decide()
    with host_clock(-SKEW):
        assert claim(decision.pk) is not None
    # Still waiting for Dify's answer: re-sending it now could apply it twice.
    assert _sweep(django_capture_on_commit_callbacks) == {"stuck": 0, "resent": 0, "released": 0}
    with host_clock(SKEW):
        assert _sweep(django_capture_on_commit_callbacks) == {
            "stuck": 0,
            "resent": 0,
            "released": 0,
        }
    decision.refresh_from_db()
    assert decision.status == "delivering" and not decision.maybe_applied


def test_a_decision_made_on_a_web_host_whose_clock_is_ahead_is_due_at_once(
    decide: Callable[[], Decision],
) -> None:
    with host_clock(SKEW):
        decision = decide()
    assert _claim_due(decision.pk) is not None


def test_a_retry_scheduled_by_a_worker_whose_clock_is_behind_waits_out_its_backoff(
    decide: Callable[[], Decision], django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    decision = decide()
    assert Decision.start_delivery(decision.pk) is not None
    with host_clock(-SKEW), django_capture_on_commit_callbacks(execute=False):
        assert Decision.schedule_retry(decision.pk, error="503", delay=60, ambiguous=True)
    assert _claim_due(decision.pk) is None
    assert Decision.start_delivery(decision.pk) is None
    assert _sweep(django_capture_on_commit_callbacks) == {"stuck": 0, "resent": 0, "released": 0}
    with host_clock(SKEW):
        assert _claim_due(decision.pk) is None
        assert Decision.start_delivery(decision.pk) is None
        assert _sweep(django_capture_on_commit_callbacks) == {
            "stuck": 0,
            "resent": 0,
            "released": 0,
        }
    decision.refresh_from_db()
    assert decision.status == "queued" and decision.attempts == 1


def test_decisions_the_sweep_of_a_host_whose_clock_is_ahead_sends_again_are_due_at_once(
    decide: Callable[[], Decision], django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    stuck, lost = decide(), decide()
    Decision.objects.filter(pk=stuck.pk).update(
        status=Decision.Status.DELIVERING, attempts=1, delivery_started_at=_ago(120)
    )
    Decision.objects.filter(pk=lost.pk).update(next_attempt_at=_ago(300))
    with host_clock(SKEW):
        assert _sweep(django_capture_on_commit_callbacks) == {
            "stuck": 1,
            "resent": 1,
            "released": 0,
        }
    claimed, _closed, _drained = Decision.claim_due(10)
    assert sorted(d.pk for d in claimed) == sorted([stuck.pk, lost.pk])


def test_a_task_on_a_worker_whose_clock_is_behind_sends_a_decision_that_is_due(
    decide: Callable[[], Decision],
) -> None:
    decision = decide()
    with host_clock(-SKEW):
        started = Decision.start_delivery(decision.pk)
    assert started is not None and started.attempts == 1


def test_decisions_waiting_for_dify_are_released_by_a_host_whose_clock_is_ahead(
    app: DifyApp,
    decide: Callable[[], Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The pump's wake-up would go to the broker: the test claims itself.
    monkeypatch.setattr(tasks.deliver_queued, "apply_async", lambda *args, **kwargs: None)
    decision = decide()
    assert Decision.start_delivery(decision.pk) is not None
    with django_capture_on_commit_callbacks(execute=False):
        Decision.schedule_retry(
            decision.pk, error="connection refused", delay=60, ambiguous=False, unreachable=True
        )
    with host_clock(SKEW), django_capture_on_commit_callbacks(execute=False):
        assert Decision.release_unreachable([app.pk]) == 1
    assert _claim_due(decision.pk) is not None


def test_a_retry_s_task_carries_the_due_time_it_waits_for(
    decide: Callable[[], Decision],
    django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: Any,
) -> None:
    sent: list[tuple[Any, Any, Any]] = []
    monkeypatch.setattr(
        tasks.deliver_decision,
        "apply_async",
        lambda args, kwargs, countdown: sent.append((args, kwargs, countdown)),
    )
    decision = decide()
    assert Decision.start_delivery(decision.pk) is not None
    with django_capture_on_commit_callbacks(execute=True):
        assert Decision.schedule_retry(decision.pk, error="503", delay=60, ambiguous=True)
    decision.refresh_from_db()
    assert decision.next_attempt_at is not None
    [(args, kwargs, countdown)] = sent
    assert args == (decision.pk,) and countdown == 60
    assert dt.datetime.fromisoformat(kwargs["due"]) == decision.next_attempt_at


def test_a_retry_s_own_task_sends_even_on_a_worker_whose_clock_runs_ahead(
    decide: Callable[[], Decision], django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    decision = decide()
    assert Decision.start_delivery(decision.pk) is not None
    with django_capture_on_commit_callbacks(execute=False):
        assert Decision.schedule_retry(decision.pk, error="503", delay=60, ambiguous=True)
    decision.refresh_from_db()
    due = decision.next_attempt_at
    assert due is not None
    # Its countdown ended by a clock a minute ahead of the database's: it is still its turn
    # (without the due time, the clocks would say no and the decision would wait for a sweep).
    assert Decision.start_delivery(decision.pk) is None
    started = Decision.start_delivery(decision.pk, due=due)
    assert started is not None and started.attempts == 2


def test_an_older_retry_s_task_sends_nothing_whatever_the_clocks_say(
    decide: Callable[[], Decision], django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    decision = decide()
    assert Decision.start_delivery(decision.pk) is not None
    with django_capture_on_commit_callbacks(execute=False):
        assert Decision.schedule_retry(decision.pk, error="503", delay=1, ambiguous=True)
    first_due = Decision.objects.get(pk=decision.pk).next_attempt_at
    assert first_due is not None
    # Sent by the pump meanwhile, failed again, a longer backoff: the first task is stale.
    Decision.objects.filter(pk=decision.pk).update(next_attempt_at=first_due)
    assert Decision.start_delivery(decision.pk, due=first_due) is not None
    with django_capture_on_commit_callbacks(execute=False):
        assert Decision.schedule_retry(decision.pk, error="503", delay=600, ambiguous=True)
    for offset in (-SKEW, SKEW * 100):
        with host_clock(offset):
            assert Decision.start_delivery(decision.pk, due=first_due) is None
    decision.refresh_from_db()
    assert decision.status == "queued" and decision.attempts == 2


def test_a_lost_wake_up_from_a_host_whose_clock_is_ahead_holds_the_pump_back_only_seconds(
    app: DifyApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(tasks.deliver_queued, "apply_async", lambda: sent.append("pump"))
    with host_clock(SKEW):
        assert DeliveryPump.wake()
    # Its message was lost with a killed worker, and the pump never started. STALE_SECONDS on,
    # a decision made on another host wakes it again.
    stale = dt.timedelta(seconds=DeliveryPump.STALE_SECONDS + 1)
    DeliveryPump.objects.filter(pk=1).update(requested_at=F("requested_at") - stale)
    assert DeliveryPump.wake()
    assert sent == ["pump", "pump"]
