"""Followers' leases on runs when the followers' hosts disagree on the time: the database's
clock decides when a lease runs out."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.db.models.functions import Now
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
    assert _take("dies") == [run.pk]
    assert _take("other") == []
    # Nobody renews it: its last 0.3 s by the database's clock. (Taken for 0.3 s at once, it
    # could run out before the take above on a loaded machine, which would then succeed.)
    Run.objects.filter(pk=run.pk).update(lease_expires_at=Now() + dt.timedelta(seconds=0.3))
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


def test_runs_a_follower_cannot_read_are_given_back_at_once(run: Run) -> None:
    from cryptography.fernet import Fernet
    from django.test import override_settings

    from inbox.crypto import DecryptionError

    # A follower started with another key than the one the app's API key is under.
    with override_settings(INBOX_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]):
        with pytest.raises(DecryptionError):
            take_leases("wrong-key", 10, 60)
    run.refresh_from_db()
    assert run.lease_expires_at is None
    # Another follower takes it straight away, not a lease's time later.
    assert [claim.pk for claim in take_leases("right-key", 10, 60)] == [run.pk]


def test_a_database_that_stays_down_is_tried_less_and_less_often_and_logged_briefly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from inbox.follower import Follower

    follower = Follower("down", poll_seconds=0.25)
    with caplog.at_level("WARNING", logger="inbox.follower"):
        for _ in range(8):
            try:
                raise ConnectionError("connection refused\nsecond line")
            except ConnectionError as exc:
                follower._lease_failed(exc)
    pause = follower._lease_retry_at - time.monotonic()
    assert 25 < pause <= Follower.LEASE_BACKOFF_MAX
    # One traceback, then one short line per try.
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1 and len(caplog.records) == 8
    assert caplog.records[-1].getMessage().endswith("ConnectionError: connection refused")
