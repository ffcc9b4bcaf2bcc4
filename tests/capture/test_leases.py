"""Followers' leases on runs when the followers' hosts disagree on the time: the database's
clock decides when a lease runs out."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.db.models.functions import Now
from django.test import override_settings
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


def _under_new_key(app: DifyApp, new: str) -> None:
    """The app's API key saved by a process whose first key is `new` (a web process restarted
    for a rotation before the follower was): this process, with only the old key, cannot read it."""
    with override_settings(INBOX_ENCRYPTION_KEYS=[new, *settings.INBOX_ENCRYPTION_KEYS]):
        app.save()


def test_one_app_whose_key_a_follower_cannot_read_does_not_keep_it_from_the_others(
    run: Run,
) -> None:
    from inbox.follower import unfollowed

    other_app = DifyApp.objects.create(
        name="expenses", base_url="http://127.0.0.1:9/v1", api_key="app-key-456"
    )
    other = Run.objects.create(
        app=other_app,
        workflow_run_id="R-lease-2",
        dify_user="inbox-run-2",
        status=Run.Status.RUNNING,
        follow_wanted=True,
    )
    # The unreadable app's run is the oldest: it leads every batch.
    Run.objects.filter(pk=run.pk).update(updated_at=timezone.now() - dt.timedelta(minutes=10))
    new_key = Fernet.generate_key().decode()
    _under_new_key(run.app, new_key)
    taken = take_leases("old-keys", 10, 60)
    # The other app's run is followed; the unreadable one's is let go at once, for a follower
    # that can read it, and its app marked with who cannot.
    assert [claim.pk for claim in taken] == [other.pk]
    assert list(taken.unreadable) == [run.app_id] and taken.unreadable[run.app_id][1] == 1
    run.refresh_from_db()
    assert run.lease_owner == "" and run.lease_expires_at is None and run.follow_wanted
    app = DifyApp.objects.get(pk=run.app_id)
    assert app.key_unreadable_now and app.key_unreadable_by == "old-keys"
    assert app.key_unreadable_since is not None
    assert not DifyApp.objects.get(pk=other_app.pk).key_unreadable_now
    # Waiting for the key, it is not taken for a run no follower takes (one is running).
    assert unfollowed()[0] == 0
    # This follower leaves the app alone for a while...
    skip = {run.app_id: app.updated_at}
    assert take_leases("old-keys", 10, 60, skip) == []
    # ... and a follower restarted with both keys takes the run, and the mark is over.
    with override_settings(INBOX_ENCRYPTION_KEYS=[new_key, *settings.INBOX_ENCRYPTION_KEYS]):
        assert [claim.pk for claim in take_leases("both-keys", 10, 60)] == [run.pk]
    assert not DifyApp.objects.get(pk=run.app_id).key_unreadable_now
    assert DifyApp.objects.get(pk=run.app_id).key_unreadable_since is None


def test_a_key_entered_again_is_read_at_once_by_the_follower_that_could_not(run: Run) -> None:
    _under_new_key(run.app, Fernet.generate_key().decode())
    taken = take_leases("old-keys", 10, 60)
    assert taken == [] and list(taken.unreadable) == [run.app_id]
    skip = {run.app_id: DifyApp.objects.get(pk=run.app_id).updated_at}
    # The key entered again (with this process's key): the app saved, the skip is over.
    app = DifyApp.objects.get(pk=run.app_id)
    app.api_key = "app-key-again"
    app.save()
    app.settings_changed()
    assert not DifyApp.objects.get(pk=run.app_id).key_unreadable_now
    assert [claim.pk for claim in take_leases("old-keys", 10, 60, skip)] == [run.pk]


def test_a_stale_mark_no_longer_hides_runs_no_follower_takes(run: Run) -> None:
    """A follower that marked an app and stopped: after a while its runs count as waiting for
    a follower again."""
    from inbox.follower import unfollowed

    _under_new_key(run.app, Fernet.generate_key().decode())
    take_leases("old-keys", 10, 60)
    Run.objects.filter(pk=run.pk).update(updated_at=timezone.now() - dt.timedelta(minutes=10))
    assert unfollowed()[0] == 0
    DifyApp.objects.filter(pk=run.app_id).update(key_unreadable_at=Now() - dt.timedelta(minutes=3))
    assert unfollowed()[0] == 1


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


def test_the_reconcile_asks_about_the_other_apps_runs_past_an_unreadable_key(
    simulator: Any, sim_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.capture.conftest import start

    stuck_app, other_app = sim_app("refund-approval"), sim_app("content-publish")
    stuck, other = start(simulator, stuck_app), start(simulator, other_app)
    # Both given up on by the follower, the unreadable one first in the reconcile's order.
    Run.objects.filter(pk__in=[stuck.pk, other.pk]).update(
        follow_wanted=False, needs_reconcile=True
    )
    _under_new_key(stuck_app, Fernet.generate_key().decode())
    with caplog.at_level("INFO", logger="inbox.tasks"):
        counts = reconcile_runs()
    assert counts["followed"] == 1 and counts["errors"] == 1
    assert Run.objects.get(pk=other.pk).follow_wanted
    assert not Run.objects.get(pk=stuck.pk).follow_wanted
    # Said naming the app.
    assert any(
        "'refund-approval'" in r.getMessage() and "cannot be decrypted" in r.getMessage()
        for r in caplog.records
    )
