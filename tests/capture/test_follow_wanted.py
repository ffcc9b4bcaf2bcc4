"""A follow asked for while a follower reads the run: kept for a run still going, dropped once
the run has ended (nothing more to show), so no finished run is left wanting a follow."""

from __future__ import annotations

from typing import Any

from inbox.follower import release_lease, take_leases
from inbox.models import DifyApp, Run, request_follow


def _leased(db: Any) -> tuple[Run, Any]:
    app = DifyApp.objects.create(name="refunds", base_url="http://dify.invalid/v1", api_key="k")
    run = Run.objects.create(
        app=app, workflow_run_id="R-wanted", dify_user="u", status="running", follow_wanted=True
    )
    (claim,) = take_leases("follower-1", 10, 60)
    # A second decision of the run is delivered while the follower reads it.
    request_follow(run)
    return run, claim


def test_a_follow_asked_while_the_run_is_read_is_kept_for_a_run_still_going(db: None) -> None:
    run, claim = _leased(db)
    release_lease("follower-1", claim, "done")
    run.refresh_from_db()
    assert run.follow_wanted and run.lease_owner == ""


def test_a_follow_asked_while_the_follower_saw_the_run_end_is_dropped(db: None) -> None:
    run, claim = _leased(db)
    run.apply_events(
        [{"event": "workflow_finished", "data": {"status": "succeeded"}}], fetch_definitions=False
    )
    release_lease("follower-1", claim, "done")
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert not run.follow_wanted and not run.follow_snapshot and run.lease_owner == ""
    # Asked again later, a finished run is not wanted either.
    assert not run.request_follow(snapshot=True)
    assert not Run.objects.get(pk=run.pk).follow_wanted
