"""Followers' leases on runs when the followers' hosts disagree on the time: the database's
clock decides when a lease runs out."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.utils import timezone

from inbox.follower import renew_leases, take_leases
from inbox.models import DifyApp, Run
from inbox.tasks import reconcile_runs
from tests.clock import SKEW, host_clock

pytestmark = pytest.mark.smoke


@pytest.fixture
def run(db: None) -> Run:
    # Dify is never asked: nothing listens on port 9.
    app = DifyApp.objects.create(
        name="refunds", base_url="http://127.0.0.1:9/v1", api_key="app-key-123"
    )
    return Run.objects.create(
        app=app,
        workflow_run_id="R-lease-1",
        dify_user="inbox-run-1",
        status=Run.Status.RUNNING,
        follow_wanted=True,
    )


def _take(owner: str, seconds: float = 60.0) -> list[int]:
    return [claim.pk for claim in take_leases(owner, 10, seconds)]


def test_a_follower_on_a_fast_host_does_not_take_a_run_another_just_leased(run: Run) -> None:
    assert _take("on-time") == [run.pk]
    with host_clock(SKEW):
        assert _take("fast") == []
    assert Run.objects.get(pk=run.pk).lease_owner == "on-time"


def test_a_lease_taken_and_renewed_on_a_slow_host_is_not_expired_for_the_others(run: Run) -> None:
    with host_clock(-SKEW):
        assert _take("slow") == [run.pk]
    assert _take("on-time") == []
    run.refresh_from_db()
    assert run.lease_expires_at is not None
    assert abs(run.lease_expires_at - (timezone.now() + dt.timedelta(seconds=60))) < dt.timedelta(
        seconds=5
    )
    with host_clock(-SKEW):
        assert renew_leases("slow", [run.pk], 60.0) == {run.pk}
    assert _take("on-time") == []
    assert Run.objects.get(pk=run.pk).lease_owner == "slow"


def test_a_lease_nobody_renews_is_taken_over_once_the_database_says_it_ran_out(run: Run) -> None:
    assert _take("dies", seconds=0.3) == [run.pk]
    assert _take("other") == []
    time.sleep(0.5)
    assert _take("other") == [run.pk]


def test_the_reconcile_on_a_fast_host_leaves_alone_a_run_a_follower_holds(run: Run) -> None:
    with host_clock(-SKEW):
        assert _take("slow") == [run.pk]
    # The reconcile reads only runs nobody follows; this one is held, whatever else it says.
    Run.objects.filter(pk=run.pk).update(follow_wanted=False, needs_reconcile=True)
    with host_clock(SKEW):
        counts = reconcile_runs()
    assert counts["checked"] == 0 and counts["errors"] == 0
