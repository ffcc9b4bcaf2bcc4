"""A Dify that does not answer for an app (no connection, its event endpoint failing): the app
says so everywhere an operator or a reader looks, the follower warns once per app, and the runs
given up on meanwhile are handed back as soon as there is news, not after their backoff."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.utils import timezone

from inbox.models import DifyApp, Form, Run
from inbox.tasks import deliver_decision, reconcile_runs
from tests.capture.conftest import FollowerThread, no_stream_left, pending, start
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _closed_port_url() -> str:
    """A base URL where nothing listens: every call is refused at once, as in an outage."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _given_up(run: Run, times: int) -> Run:
    def ready() -> Run | None:
        found = Run.objects.get(pk=run.pk)
        done = found.needs_reconcile and not found.follow_wanted and found.give_ups == times
        return found if done and not found.lease_owner else None

    result: Run = wait_until(ready, timeout=20)
    return result


def _later(run: Run, give_ups: int, minutes: int) -> None:
    """As if the follower had given up on the run `give_ups` times: its next stream is
    `minutes` away."""
    Run.objects.filter(pk=run.pk).update(
        needs_reconcile=True,
        follow_wanted=False,
        give_ups=give_ups,
        refollow_after=timezone.now() + dt.timedelta(minutes=minutes),
    )


def test_a_run_dify_paused_while_its_events_failed_gets_its_form_at_the_next_pass_after_recovery(
    simulator: Any, sim_app: Any, follower: FollowerThread, admin_user: User
) -> None:
    app = sim_app("refund-approval")
    # Dify's event endpoint fails (its pub/sub down), while its run detail answers.
    simulator.add_fault("status", "workflow_events", app="refund-approval", status=503, times=None)
    run = start(simulator, app)
    run = _given_up(run, 1)
    assert run.forms.count() == 0
    app.refresh_from_db()
    assert app.contact_failed_at is not None and app.streams_failing
    assert app.contact_failure.startswith("503")
    # The first give-up is handed back at the next pass; the detail shows Dify paused it.
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["followed"] == 1
    run = _given_up(run, 2)
    assert run.status == "paused" and run.refollow_after is not None
    assert run.refollow_after > timezone.now() + dt.timedelta(minutes=1)
    # Paused, with no form here that anyone could decide: asked about every minute, and handed
    # back at each pass, not after its wait...
    with override_settings(
        INBOX_RUN_RECONCILE_AFTER_SECONDS=3600, INBOX_RUN_RECONCILE_OUTSIDE_SECONDS=0
    ):
        assert reconcile_runs()["followed"] == 1
    run = _given_up(run, 3)
    # ... and the detail answering does not clear the app's mark: its streams still fail.
    app.refresh_from_db()
    assert app.streams_failing

    # Everyone who looks is told: /healthz (still 200), the admin, the dashboard, the run page.
    admin = Client()
    admin.force_login(admin_user)
    health = admin.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "degraded", "problems": ["dify: 1 app(s) not reachable"]}
    listing = admin.get("/admin/inbox/difyapp/?health=unreachable").content.decode()
    assert "Run event streams failing since" in listing and "503" in listing
    assert "refund-approval" not in admin.get("/admin/inbox/difyapp/?health=ok").content.decode()
    dashboard = admin.get("/dashboard/").content.decode()
    assert "Dify has failed the event streams of refund-approval since" in dashboard
    page = admin.get(f"/runs/{run.public_id}/").content.decode()
    assert "event streams at the moment: new forms of this run arrive" in page

    # The endpoint recovers: the next pass hands the run back, and its form comes in.
    simulator.clear_faults()
    with override_settings(
        INBOX_RUN_RECONCILE_AFTER_SECONDS=3600, INBOX_RUN_RECONCILE_OUTSIDE_SECONDS=0
    ):
        assert reconcile_runs()["followed"] == 1
    (form,) = pending(run)
    run = no_stream_left(run)
    assert not run.needs_reconcile and run.give_ups == 0
    app.refresh_from_db()
    assert app.contact_failed_at is None and app.contact_failure == ""
    assert admin.get("/healthz").json() == {"status": "ok"}
    assert "event streams" not in admin.get(f"/runs/{run.public_id}/").content.decode()
    assert form.status == "pending"


def test_a_run_dify_moved_on_is_handed_back_before_its_wait_ends(
    simulator: Any, sim_app: Any
) -> None:
    # No follower: the run is read by nobody, as one the follower gave up on four times.
    app = sim_app("refund-approval")
    run = start(simulator, app)
    simulator.wait_for_status(run.workflow_run_id, "paused")
    assert Run.objects.get(pk=run.pk).status in ("starting", "running")
    _later(run, 4, 8)
    # Dify paused it meanwhile: news its stream would bring. Having no form here anyone could
    # answer, it is asked about every minute, not every five.
    with override_settings(
        INBOX_RUN_RECONCILE_AFTER_SECONDS=3600, INBOX_RUN_RECONCILE_OUTSIDE_SECONDS=0
    ):
        counts = reconcile_runs()
    assert (counts["followed"], counts["waiting"]) == (1, 0)
    run = Run.objects.get(pk=run.pk)
    assert run.follow_wanted and run.follow_snapshot and run.status == "paused"
    # Given up on again: still paused, still no form here that anyone could decide.
    _later(run, 5, 16)
    with override_settings(
        INBOX_RUN_RECONCILE_AFTER_SECONDS=3600, INBOX_RUN_RECONCILE_OUTSIDE_SECONDS=0
    ):
        counts = reconcile_runs()
    assert (counts["followed"], counts["waiting"]) == (1, 0)


def test_a_stream_of_the_app_opening_hands_back_the_runs_given_up_on_while_dify_failed_them(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("refund-approval")
    first = start(simulator, app)
    pending(first)
    no_stream_left(first)
    simulator.add_fault("status", "workflow_events", app="refund-approval", status=503, times=None)
    first.request_follow(snapshot=True)
    _given_up(first, 1)
    # Given up on again and again since: its next stream is minutes away, and nothing in its
    # detail changed (paused at the form it has here).
    _later(first, 3, 4)
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=0):
        assert reconcile_runs()["waiting"] == 1
    # Dify's events come back, and another run of the app is read: the first one is handed
    # back with it, not four minutes later.
    simulator.clear_faults()
    second = start(simulator, app)
    pending(second)

    def read_again() -> Run | None:
        found = Run.objects.get(pk=first.pk)
        return found if found.give_ups == 0 and not found.needs_reconcile else None

    first = wait_until(read_again, timeout=20)
    first = no_stream_left(first)
    assert first.refollow_after is None
    assert DifyApp.objects.get(pk=app.pk).contact_failed_at is None


def test_a_full_outage_marks_the_app_for_operators_and_readers_until_dify_answers(
    simulator: Any, sim_app: Any, admin_user: User, reviewer: User
) -> None:
    app = sim_app("refund-approval")
    good_url = app.base_url
    run = start(simulator, app)
    simulator.wait_for_status(run.workflow_run_id, "paused")
    Run.objects.filter(pk=run.pk).update(follow_wanted=False, needs_reconcile=True)
    # Dify is away: every connection refused.
    DifyApp.objects.filter(pk=app.pk).update(base_url=_closed_port_url())
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["errors"] == 1
    app.refresh_from_db()
    assert app.contact_failed_at is not None and not app.streams_failing
    assert app.contact_failure_source == "reconcile" and app.contact_failure_status is None

    admin = Client()
    admin.force_login(admin_user)
    assert admin.get("/healthz").json() == {
        "status": "degraded",
        "problems": ["dify: 1 app(s) not reachable"],
    }
    listing = admin.get("/admin/inbox/difyapp/?health=unreachable").content.decode()
    assert "Not reachable since" in listing
    dashboard = " ".join(admin.get("/dashboard/").content.decode().split())
    assert "has not been reachable since" in dashboard
    assert "for refund-approval: new forms of its runs cannot arrive" in dashboard
    page = admin.get(f"/runs/{run.public_id}/").content.decode()
    assert "The inbox cannot reach Dify for this app at the moment" in page
    # A reviewer sees the notice, not the error's text (an administrator's).
    viewer = Client()
    viewer.force_login(reviewer)
    Run.objects.filter(pk=run.pk).update(started_by=reviewer)
    page = viewer.get(f"/runs/{run.public_id}/").content.decode()
    assert "The inbox cannot reach Dify for this app at the moment" in page
    assert app.contact_failure not in page

    # Dify is back: the next call it answers clears the mark.
    DifyApp.objects.filter(pk=app.pk).update(base_url=good_url)
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=0):
        assert reconcile_runs()["checked"] == 1
    app.refresh_from_db()
    assert app.contact_failed_at is None
    assert admin.get("/healthz").json() == {"status": "ok"}
    assert "cannot reach Dify" not in admin.get(f"/runs/{run.public_id}/").content.decode()


def test_a_delivery_that_cannot_reach_dify_marks_the_app_and_one_that_gets_through_clears_it(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    app = sim_app("refund-approval")
    good_url = app.base_url
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    DifyApp.objects.filter(pk=app.pk).update(base_url=_closed_port_url())
    decision = form.decide(
        action_id="approve", inputs={"decision_note": "Fine."}, reviewer=reviewer
    )
    assert deliver_decision(decision.pk) == "retry"
    app.refresh_from_db()
    assert app.contact_failure_source == "delivery" and app.contact_failed_since is not None
    DifyApp.objects.filter(pk=app.pk).update(base_url=good_url)
    assert deliver_decision(decision.pk) == "delivered"
    assert DifyApp.objects.get(pk=app.pk).contact_failed_at is None


def test_the_follower_warns_once_per_app_not_per_run_when_its_streams_fail(
    simulator: Any, sim_app: Any, follower: FollowerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inbox")
    app = sim_app("refund-approval")
    simulator.add_fault("status", "workflow_events", app="refund-approval", status=503, times=None)
    runs = [start(simulator, app) for _ in range(4)]
    for run in runs:
        _given_up(run, 1)
    # Handed back all at once; all given up on again.
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["followed"] == 4
    for run in runs:
        _given_up(run, 2)
    follower.stop()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "inbox.follower" and r.levelno >= logging.WARNING
    ]
    # Eight give-ups: a warning for the first, one for all the others (the interval's, or at
    # shutdown); each run at INFO only.
    assert len(lines) == 2, lines
    assert all("app refund-approval:" in line and "run stream(s) failing" in line for line in lines)
    assert "1 run stream(s) failing: 503" in lines[0]
    assert "4 run stream(s) failing: 503" in lines[1]
    per_run = [
        r
        for r in caplog.records
        if r.name == "inbox.follower" and "giving up after" in r.getMessage()
    ]
    assert len(per_run) == 8 and all(r.levelno == logging.INFO for r in per_run)
    # The model's line saying the app cannot be reached: once, for the spell.
    reached = [r for r in caplog.records if "Dify cannot be reached for the app" in r.getMessage()]
    assert len(reached) == 1


def test_the_form_page_says_before_deciding_that_dify_refuses_or_cannot_be_reached(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    app = sim_app("refund-approval")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    viewer = Client()
    viewer.force_login(reviewer)
    url = f"/forms/{form.public_id}/"
    page = viewer.get(url).content.decode()
    assert "at the moment" not in page
    # Refused: the decision is kept and sent once an administrator fixes it.
    DifyApp.objects.filter(pk=app.pk).update(
        refused_at=timezone.now(),
        refusal="401 unauthorized: Access token is invalid",
        refusal_status=401,
        refusal_code="unauthorized",
    )
    page = viewer.get(url).content.decode()
    assert "API key at the moment. You can still decide: your decision is stored" in page
    # Not reachable: sent as soon as Dify answers.
    DifyApp.objects.filter(pk=app.pk).update(
        refused_at=None,
        contact_failed_at=timezone.now(),
        contact_failed_since=timezone.now(),
        contact_failure="ConnectError",
        contact_failure_source="reconcile",
    )
    page = viewer.get(url).content.decode()
    assert "The inbox cannot reach Dify for this app at the moment. You can still decide" in page
    # Its streams alone failing: a decision goes through as ever, nothing to say here.
    DifyApp.objects.filter(pk=app.pk).update(
        contact_failure_source="follower", contact_failure_status=503
    )
    assert "at the moment" not in viewer.get(url).content.decode()
    assert Form.objects.get(pk=form.pk).status == "pending"


def test_the_form_page_s_poll_redraws_the_app_notice_and_leaves_the_body(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    app = sim_app("refund-approval")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    viewer = Client()
    viewer.force_login(reviewer)
    page = viewer.get(f"/forms/{form.public_id}/").content.decode()
    assert '<div id="app-notice">' in page and '&amp;app="' in page
    live = f"/forms/{form.public_id}/live?state=open&run=&seen=&app="
    assert 'id="app-notice"' not in viewer.get(live).content.decode()
    # Dify stops answering while the page is open: the next poll says so above the form.
    DifyApp.objects.filter(pk=app.pk).update(
        contact_failed_at=timezone.now(),
        contact_failed_since=timezone.now(),
        contact_failure="ConnectError",
        contact_failure_source="reconcile",
    )
    polled = viewer.get(live).content.decode()
    assert '<div id="app-notice" hx-swap-oob="true">' in polled
    assert "The inbox cannot reach Dify for this app at the moment" in polled
    assert 'id="form-body"' not in polled  # what the reviewer typed stays
    assert "&amp;app=unreachable" in polled  # the next poll says what the page shows
    assert 'id="app-notice"' not in viewer.get(live + "unreachable").content.decode()
    # Dify answers again: the notice goes.
    DifyApp.objects.filter(pk=app.pk).update(contact_failed_at=None, contact_failed_since=None)
    cleared = viewer.get(live + "unreachable").content.decode()
    assert '<div id="app-notice" hx-swap-oob="true"></div>' in cleared


def test_a_page_view_s_check_that_finds_the_server_away_marks_its_apps_and_names_the_server(
    simulator: Any, sim_app: Any, follower: FollowerThread, admin_user: User
) -> None:
    from inbox.tasks import check_form, check_server

    app = sim_app("refund-approval")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    follower.stop()
    good_url = app.base_url
    # The staging server: three apps, two of them with no open run; production elsewhere.
    others = [sim_app("contract-review"), sim_app("content-publish")]
    prod = DifyApp.objects.create(
        name="refund-approval (production)",
        base_url=good_url,
        api_key=simulator.api_key("refund-approval"),
    )
    down = _closed_port_url()
    DifyApp.objects.filter(pk__in=[app.pk, *(o.pk for o in others)]).update(base_url=down)
    # The staging server stops; a reviewer opens the form's page, which asks Dify about it.
    with override_settings(INBOX_CHECK_ON_VIEW_SECONDS=0):
        assert check_form(form.pk) == "unreachable"
    app.refresh_from_db()
    assert app.contact_failed_since is not None and app.contact_failure_source == "check on view"
    # The app's server is asked about its other apps at once: each marked on its own answer.
    assert check_server(app.pk, True) == {"reachable": 0, "unreachable": 2}
    for other in others:
        other.refresh_from_db()
        assert other.contact_failed_at is not None and other.contact_failure_source == (
            "server check"
        )
    assert DifyApp.objects.get(pk=prod.pk).contact_failed_at is None
    admin = Client()
    admin.force_login(admin_user)
    assert admin.get("/healthz").json() == {
        "status": "degraded",
        "problems": ["dify: 3 app(s) not reachable"],
    }
    server = down.removesuffix("/v1")
    dashboard = " ".join(admin.get("/dashboard/").content.decode().split())
    assert f"Dify at {server} has not been reachable since" in dashboard
    assert "for 3 apps (content-publish, contract-review, refund-approval)" in dashboard
    assert "refund-approval (production)" not in dashboard

    # The server is back: the next page view's check clears its app, and its server's others.
    DifyApp.objects.filter(base_url=down).update(base_url=good_url)
    with override_settings(INBOX_CHECK_ON_VIEW_SECONDS=0):
        assert check_form(form.pk) == "open"
    assert DifyApp.objects.get(pk=app.pk).contact_failed_at is None
    assert check_server(app.pk, False) == {"reachable": 2, "unreachable": 0}
    assert not DifyApp.objects.filter(contact_failed_at__isnull=False).exists()
    assert admin.get("/healthz").json() == {"status": "ok"}


def test_a_404_of_the_form_check_is_no_contact_failure(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    from inbox.tasks import check_form

    app = sim_app("refund-approval")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    Form.objects.filter(pk=form.pk).update(form_token="not-a-token-dify-knows")
    with override_settings(INBOX_CHECK_ON_VIEW_SECONDS=0):
        assert check_form(form.pk) == "error"
    assert DifyApp.objects.get(pk=app.pk).contact_failed_at is None


def test_an_inactive_app_s_retired_server_neither_degrades_health_nor_is_asked_at_every_pass(
    simulator: Any, sim_app: Any, admin_user: User, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inbox")
    app = sim_app("refund-approval")
    run = start(simulator, app)
    simulator.wait_for_status(run.workflow_run_id, "paused")
    earlier = timezone.now() - dt.timedelta(hours=2)
    Run.objects.filter(pk=run.pk).update(
        follow_wanted=False, needs_reconcile=False, checked_at=earlier, updated_at=earlier
    )
    refused = sim_app("contract-review")
    # Both switched off, then the server retired.
    DifyApp.objects.filter(pk__in=[app.pk, refused.pk]).update(
        is_active=False, base_url=_closed_port_url()
    )
    DifyApp.objects.filter(pk=refused.pk).update(
        refused_at=timezone.now(), refusal="401 unauthorized", refusal_status=401
    )
    assert reconcile_runs()["errors"] == 1
    app.refresh_from_db()
    assert app.contact_failed_at is not None
    # Said at INFO: the spell's one line aside, no warning for an inactive app.
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and "Dify cannot be reached for the app" not in r.getMessage()
    ]
    assert warnings == []
    assert any(
        f"reconcile_runs: run {run.pk}:" in r.getMessage() and r.levelno == logging.INFO
        for r in caplog.records
    )
    # Asked about again in an hour, not at every pass.
    Run.objects.filter(pk=run.pk).update(updated_at=earlier)
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=0):
        assert reconcile_runs()["errors"] == 0
    Run.objects.filter(pk=run.pk).update(checked_at=earlier)
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=0):
        assert reconcile_runs()["errors"] == 1
    # Monitoring and the dashboard: no fault, no banner; the apps named apart, quietly.
    admin = Client()
    admin.force_login(admin_user)
    assert admin.get("/healthz").json() == {"status": "ok"}
    dashboard = " ".join(admin.get("/dashboard/").content.decode().split())
    assert "banner" not in dashboard
    assert (
        "Inactive, and Dify does not answer for them or refuses them: contract-review, "
        "refund-approval." in dashboard
    )


def test_a_server_error_for_one_app_names_the_app_not_its_server(
    simulator: Any, sim_app: Any, admin_user: User
) -> None:
    app = sim_app("refund-approval")
    other = sim_app("contract-review")
    now = timezone.now()
    # A 503 for this app's calls: the server answers, for the other app too.
    DifyApp.objects.filter(pk=app.pk).update(
        contact_failed_at=now,
        contact_failed_since=now,
        contact_failure="503 service_unavailable",
        contact_failure_source="delivery",
        contact_failure_status=503,
    )
    admin = Client()
    admin.force_login(admin_user)
    dashboard = " ".join(admin.get("/dashboard/").content.decode().split())
    assert "has not been reachable" not in dashboard
    assert "Dify has answered the calls for refund-approval with server errors since" in dashboard
    # No connection at all: the server is named, with its app.
    DifyApp.objects.filter(pk=other.pk).update(
        contact_failed_at=now,
        contact_failed_since=now,
        contact_failure="ConnectError",
        contact_failure_source="reconcile",
    )
    dashboard = " ".join(admin.get("/dashboard/").content.decode().split())
    assert f"Dify at {other.server} has not been reachable since" in dashboard
    assert "for contract-review: new forms" in dashboard
