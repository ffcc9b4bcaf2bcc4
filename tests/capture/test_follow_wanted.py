"""A follow asked for while a follower reads the run: kept for a run still going, dropped once
the run has ended (nothing more to show), so no finished run is left wanting a follow. Unless a
decision of the run was delivered by presumption and is not settled yet: Dify's events may still
say whose answer it took, and the run is read once more for them."""

from __future__ import annotations

from typing import Any

from inbox.follower import release_lease, take_leases
from inbox.models import AuditEntry, DifyApp, Run, request_follow
from tests.delivery.helpers import make_form, presume


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


def _finished(run: Run) -> None:
    run.apply_events(
        [{"event": "workflow_finished", "data": {"status": "succeeded"}}], fetch_definitions=False
    )


def test_a_follow_asked_for_a_presumed_delivery_as_the_run_ended_is_kept_for_its_evidence(
    db: None,
) -> None:
    app = DifyApp.objects.create(name="refunds", base_url="http://dify.invalid/v1", api_key="k")
    form = make_form(app)
    run = form.run
    Run.objects.filter(pk=run.pk).update(status="running", follow_wanted=True)
    (claim,) = take_leases("follower-1", 10, 60)
    # The decision's retry meets "already submitted" while the follower reads the run: it is
    # presumed delivered, and asks for the follow that may show whose answer Dify took...
    decision = presume(form)
    request_follow(run)
    run.refresh_from_db()
    assert run.follow_seq == claim.seq + 1
    # ... then the stream the follower reads shows the run's end.
    _finished(run)
    release_lease("follower-1", claim, "done")
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert run.follow_wanted and run.follow_snapshot and run.lease_owner == ""
    # The run is read once more; that read ends the wish, whatever it showed.
    (again,) = take_leases("follower-1", 10, 60)
    release_lease("follower-1", again, "done")
    run.refresh_from_db()
    assert not run.follow_wanted and run.lease_owner == ""
    assert Run.objects.get(pk=run.pk).awaits_evidence()
    # Asked again, the finished run is read again while the presumption stands...
    assert run.request_follow(snapshot=True)
    (again,) = take_leases("follower-1", 10, 60)
    release_lease("follower-1", again, "done")
    # ... and no more once Dify's events settled it.
    AuditEntry.record("delivery_confirmed", decision, form=form.pk, confirmed_by="node_finished")
    assert not Run.objects.get(pk=run.pk).awaits_evidence()
    assert not run.request_follow(snapshot=True)
    assert not Run.objects.get(pk=run.pk).follow_wanted
    assert take_leases("follower-1", 10, 60) == []


def test_a_finished_run_left_wanting_a_follow_is_not_read_without_a_presumption(
    db: None,
) -> None:
    app = DifyApp.objects.create(name="refunds", base_url="http://dify.invalid/v1", api_key="k")
    form = make_form(app)
    Run.objects.filter(pk=form.run_id).update(status="succeeded", follow_wanted=True)
    assert take_leases("follower-1", 10, 60) == []
