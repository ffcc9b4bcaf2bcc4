"""An app whose key Dify refuses: the app is marked, the reconcile asks Dify about it once in a
while instead of handing every run back each minute, and everything flows again once Dify
accepts the key (or an administrator saves a new one)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import F
from django.test import Client, override_settings
from django.utils import timezone

from inbox.dify.errors import Unauthorized
from inbox.models import AuditEntry, Decision, DifyApp, Form, Run
from inbox.runs import StartFailed, start_run
from inbox.tasks import deliver_decision, reconcile_pending_forms, reconcile_runs
from tests.capture.conftest import FollowerThread, no_stream_left, pending, start
from tests.clock import SKEW, host_clock
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

REVOKED = "401 unauthorized: Access token is invalid"


def _dify_calls(simulator: Any) -> int:
    return sum(simulator.stats()["requests"].values())


def _a_minute_later(app: DifyApp) -> None:
    """As if the refusal had been recorded a minute ago: the reconcile may ask Dify again."""
    earlier = timezone.now() - dt.timedelta(minutes=1, seconds=1)
    DifyApp.objects.filter(pk=app.pk).update(refused_at=earlier, refusal_checked_at=earlier)


def _given_up(app: DifyApp, count: int) -> None:
    """Every run of the app is back with the reconcile, and no follower holds one."""
    wait_until(
        lambda: (
            Run.objects.filter(app=app, needs_reconcile=True, follow_wanted=False).count() == count
            and not Run.objects.filter(app=app).exclude(lease_owner="").exists()
        ),
        timeout=30,
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("inbox")
    ]


def _next_form(run: Run, node_id: str) -> Form:
    form: Form = wait_until(
        lambda: run.forms.filter(
            node_id=node_id, status="pending", definition_fetched_at__isnull=False
        ).first(),
        timeout=20,
    )
    return form


def _answer_in_dify(simulator: Any, form: Form) -> None:
    """Answered through another channel (an email link), while no stream of ours is open."""
    form.refresh_from_db()
    assert simulator.submit_elsewhere(form.form_id, form.definition["user_actions"][0]["id"])


def test_a_refused_stream_marks_the_app_and_a_reconcile_pass_asks_dify_once_for_its_twenty_runs(
    simulator: Any, sim_app: Any, follower: FollowerThread, caplog: pytest.LogCaptureFixture
) -> None:
    app = sim_app("refund-approval")
    runs = [start(simulator, app) for _ in range(20)]
    for run in runs:
        pending(run)
        no_stream_left(run)
    # The key is revoked in Dify; each run is asked for again (as a delivered decision would).
    DifyApp.objects.filter(pk=app.pk).update(api_key="app-revoked-key-000000")
    for run in runs:
        run.request_follow(snapshot=True)
    _given_up(app, 20)
    app.refresh_from_db()
    assert app.refused_at is not None
    assert (app.refusal, app.refusal_status) == (REVOKED, 401)
    # Twenty refused streams, one change of state.
    assert AuditEntry.objects.filter(verb="app_refused").count() == 1
    assert "app-revoked-key-000000" not in app.refusal

    caplog.set_level(logging.WARNING, logger="inbox")
    caplog.clear()
    _a_minute_later(app)
    before = _dify_calls(simulator)
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        counts = reconcile_runs()
    # One run asks for all twenty; the others wait without a call or a line of their own.
    assert _dify_calls(simulator) - before == 1
    assert counts["held"] == 19 and counts["followed"] == 0
    (line,) = _warnings(caplog)
    assert "refund-approval" in line and "still refuses" in line and REVOKED in line

    # Right after, the next try is not due: no call at all, still one line.
    caplog.clear()
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        counts = reconcile_runs()
    assert _dify_calls(simulator) - before == 1
    assert counts["held"] == 20
    (line,) = _warnings(caplog)
    assert "20 run(s) wait" in line
    assert not Run.objects.filter(app=app, follow_wanted=True).exists()


def test_once_dify_accepts_the_key_again_the_refusal_clears_and_the_runs_next_forms_arrive(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("content-publish")
    runs = [start(simulator, app) for _ in range(3)]
    firsts = [pending(run)[0] for run in runs]
    for run in runs:
        no_stream_left(run)
    # The app's API access is switched off in Dify...
    simulator.add_fault(
        "status",
        "*",
        app="content-publish",
        times=None,
        status=403,
        code="forbidden",
        message="The app's API service has been disabled.",
    )
    # ... while its forms are answered there through email, and the runs move on.
    for form in firsts:
        _answer_in_dify(simulator, form)
        form.run.request_follow(snapshot=True)
    _given_up(app, 3)
    app.refresh_from_db()
    assert app.refusal == "403 forbidden: The app's API service has been disabled."
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["held"] == 3

    # Switched on again. The next try (a minute on) finds it so, and the runs flow again.
    simulator.clear_faults()
    _a_minute_later(app)
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["followed"] == 1
    app.refresh_from_db()
    assert app.refused_at is None and app.refusal == "" and app.refusal_status is None
    assert AuditEntry.objects.filter(verb="app_accepted").count() == 1
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["followed"] == 2
    for run in runs:
        assert _next_form(run, "legal_check")
        no_stream_left(run)
    assert not Run.objects.filter(app=app, needs_reconcile=True).exists()


def test_saving_a_new_key_in_the_admin_clears_the_refusal_and_follows_the_runs_at_once(
    simulator: Any, sim_app: Any, follower: FollowerThread, admin_user: User
) -> None:
    app = sim_app("content-publish")
    run = start(simulator, app)
    (first,) = pending(run)
    no_stream_left(run)
    good_key = app.api_key
    # The key was rotated in Dify and not here yet.
    DifyApp.objects.filter(pk=app.pk).update(api_key="app-rotated-key-000000")
    _answer_in_dify(simulator, first)
    run.request_follow(snapshot=True)
    _given_up(app, 1)
    admin = Client()
    admin.force_login(admin_user)
    listing = admin.get("/admin/inbox/difyapp/?health=refused").content.decode()
    assert "Refused since" in listing and REVOKED in listing
    response = admin.post(
        f"/admin/inbox/difyapp/{app.pk}/change/",
        {
            "name": app.name,
            "base_url": app.base_url,
            "api_key": good_key,
            "mode": "workflow",
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    app.refresh_from_db()
    assert app.refused_at is None and app.api_key == good_key
    # No reconcile pass needed: the follower reads the run now and finds its next form.
    assert _next_form(run, "legal_check")
    run = no_stream_left(run)
    assert not run.needs_reconcile
    entry = AuditEntry.objects.get(verb="app_accepted")
    assert entry.actor == admin_user and entry.details == {"source": "new settings"}


def test_dify_refusing_one_run_s_inputs_does_not_mark_the_app(simulator: Any, sim_app: Any) -> None:
    app = sim_app("refund-approval")
    with pytest.raises(StartFailed) as refused:
        start_run(app, inputs={}, dify_user="inbox-tests")
    assert (refused.value.status, refused.value.code) == (400, "dify_rejected_inputs")
    assert refused.value.dify_code == "invalid_param"
    app.refresh_from_db()
    assert app.refused_at is None and app.refusal == ""
    assert not AuditEntry.objects.filter(verb="app_refused").exists()


def test_a_start_with_a_refused_key_marks_the_app_and_a_start_dify_accepts_clears_it(
    simulator: Any, sim_app: Any
) -> None:
    app = sim_app("refund-approval")
    good_key = app.api_key
    DifyApp.objects.filter(pk=app.pk).update(api_key="app-revoked-key-000000")
    app.refresh_from_db()
    with pytest.raises(StartFailed) as refused:
        start(simulator, app)
    assert refused.value.status == 502
    app.refresh_from_db()
    assert (app.refusal, app.refusal_status) == (REVOKED, 401)
    assert AuditEntry.objects.get(verb="app_refused").details == {
        "refusal": REVOKED,
        "source": "start",
    }
    DifyApp.objects.filter(pk=app.pk).update(api_key=good_key)
    app.refresh_from_db()
    start(simulator, app)
    app.refresh_from_db()
    assert app.refused_at is None


def _note_revoked_on_a_host(app: DifyApp, offset: dt.timedelta) -> None:
    """A follower on a host whose clock is `offset` off sees Dify refuse the key."""
    with host_clock(offset):
        assert app.note_refused(
            Unauthorized(401, "unauthorized", "Access token is invalid"), "follower"
        )


def _held_run(app: DifyApp) -> Run:
    return Run.objects.create(
        app=app,
        workflow_run_id="R-held",
        dify_user="inbox-tests",
        status=Run.Status.PAUSED,
        follow_wanted=False,
        needs_reconcile=True,
    )


def test_a_refusal_seen_by_a_host_whose_clock_is_behind_waits_its_minute_before_dify_is_asked(
    dify_app: DifyApp,
) -> None:
    _held_run(dify_app)
    _note_revoked_on_a_host(dify_app, -SKEW)
    # Refused a moment ago: the reconcile leaves the run waiting. (Nothing listens at the app's
    # URL: a call to Dify would count as an error.)
    counts = reconcile_runs()
    assert (counts["held"], counts["errors"]) == (1, 0)


def test_a_refusal_seen_by_a_host_whose_clock_is_ahead_is_asked_about_a_minute_later(
    dify_app: DifyApp,
) -> None:
    _held_run(dify_app)
    _note_revoked_on_a_host(dify_app, SKEW)
    a_minute = dt.timedelta(minutes=1, seconds=1)
    DifyApp.objects.filter(pk=dify_app.pk).update(
        refused_at=F("refused_at") - a_minute, refusal_checked_at=F("refusal_checked_at") - a_minute
    )
    # A minute on, the reconcile asks Dify again (and finds it unreachable).
    counts = reconcile_runs()
    assert (counts["held"], counts["errors"]) == (0, 1)


def test_a_new_key_after_another_app_s_key_follows_the_runs_that_key_could_not_see(
    simulator: Any, sim_app: Any, follower: FollowerThread, admin_user: User
) -> None:
    app = sim_app("content-publish")
    run = start(simulator, app)
    (first,) = pending(run)
    no_stream_left(run)
    good_key = app.api_key
    # An administrator pasted the key of another app: Dify accepts it, but knows none of this
    # app's runs (404), so the run's events look unavailable and its detail not found.
    DifyApp.objects.filter(pk=app.pk).update(api_key=simulator.api_key("refund-approval"))
    _answer_in_dify(simulator, first)
    run.request_follow(snapshot=True)
    wait_until(
        lambda: (
            Run.objects.filter(pk=run.pk, events_unavailable=True, follow_wanted=False)
            .filter(lease_owner="")
            .exists()
        ),
        timeout=30,
    )
    Run.objects.filter(pk=run.pk).update(updated_at=timezone.now() - dt.timedelta(hours=1))
    reconcile_runs()
    # Not taken for a run Dify lost: /info names another app, so the app is held as refused.
    assert not AuditEntry.objects.filter(verb="run_not_found", object_id=str(run.pk)).exists()
    app.refresh_from_db()
    assert app.refusal_code == "app_not_found" and "refund-approval" in app.refusal

    admin = Client()
    admin.force_login(admin_user)
    response = admin.post(
        f"/admin/inbox/difyapp/{app.pk}/change/",
        {
            "name": app.name,
            "base_url": app.base_url,
            "api_key": good_key,
            "mode": "workflow",
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    # The right key sees the run again: it is read now, and its next form arrives.
    assert _next_form(run, "legal_check")
    run = no_stream_left(run)
    assert not run.events_unavailable and not run.needs_reconcile


@pytest.mark.parametrize(
    ("name", "set_up_as", "kind", "code"),
    [
        ("support-chat", "workflow", "chatflow", "not_workflow_app"),
        ("refund-approval", "chatflow", "workflow", "not_chat_app"),
    ],
)
def test_an_app_refused_as_of_another_kind_stays_refused_until_dify_s_info_names_its_kind(
    simulator: Any,
    sim_app: Any,
    caplog: pytest.LogCaptureFixture,
    name: str,
    set_up_as: str,
    kind: str,
    code: str,
) -> None:
    app = sim_app(name)
    # Set up here as the other kind: Dify refuses its starts.
    DifyApp.objects.filter(pk=app.pk).update(mode=set_up_as)
    app.refresh_from_db()
    with pytest.raises(StartFailed) as refused:
        start(simulator, app)
    # Dify refuses the app as set up here: not the caller's inputs, the set-up's (502).
    assert (refused.value.status, refused.value.code, refused.value.dify_code) == (
        502,
        "dify_error",
        code,
    )
    app.refresh_from_db()
    refusal = app.refusal
    assert refusal.startswith(f"400 {code}: ") and app.refusal_code == code

    # GET /info answers for an app of any kind; the kind it names is not the one set up here.
    caplog.set_level(logging.WARNING, logger="inbox")
    caplog.clear()
    _a_minute_later(app)
    reconcile_runs()
    assert simulator.request_count("info") == 1
    app.refresh_from_db()
    assert app.refused_at is not None and app.refusal == refusal
    assert not AuditEntry.objects.filter(verb="app_accepted").exists()
    (line,) = _warnings(caplog)
    assert "still refuses" in line and refusal in line
    # Asked and refused: the next try waits longer.
    assert app.next_refusal_probe() > timezone.now()

    # An administrator sets the kind right; the next try finds /info agrees.
    DifyApp.objects.filter(pk=app.pk).update(mode=kind)
    _a_minute_later(app)
    reconcile_runs()
    app.refresh_from_db()
    assert app.refused_at is None and app.refusal == app.refusal_code == ""
    assert AuditEntry.objects.get(verb="app_accepted").details == {"source": "reconcile"}


UNAVAILABLE = "App unavailable, please check your app configurations."


def test_an_app_dify_calls_unavailable_is_asked_about_through_its_parameters_not_its_info(
    simulator: Any, sim_app: Any, reviewer: User, starters: Any
) -> None:
    app = sim_app("refund-approval")
    # Nothing is published in Dify: it refuses the app's parameters, while /info still answers.
    simulator.add_fault(
        "status",
        "parameters",
        app="refund-approval",
        times=None,
        status=400,
        code="app_unavailable",
        message=UNAVAILABLE,
    )
    browser = Client()
    browser.force_login(reviewer)
    assert browser.get(f"/apps/{app.pk}/start/").status_code == 502
    app.refresh_from_db()
    assert (app.refusal, app.refusal_code) == (
        f"400 app_unavailable: {UNAVAILABLE}",
        "app_unavailable",
    )

    # A run's detail does not tell either: the app itself is asked, and its runs are not held
    # (Dify still answers for them; this one it does not know, so it is left be).
    _held_run(app)
    _a_minute_later(app)
    counts = reconcile_runs()
    assert counts["held"] == 0 and counts["errors"] == 1, counts
    assert simulator.request_count("parameters") == 2
    assert simulator.request_count("workflow_run_detail") == 1
    # The run's 404 asks /info whether the key still sees the app (it does: the run alone is
    # unknown); /info says nothing of what is published, so the refusal stays.
    assert simulator.request_count("info") == 1
    app.refresh_from_db()
    assert app.refused_at is not None and app.refusal_code == "app_unavailable"
    assert app.next_refusal_probe() > timezone.now()

    # Published: the next try finds its parameters.
    simulator.clear_faults()
    _a_minute_later(app)
    reconcile_runs()
    app.refresh_from_db()
    assert app.refused_at is None
    assert simulator.request_count("info") == 1


def test_a_run_whose_detail_keeps_failing_does_not_hold_the_other_runs_of_its_app(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("content-publish")
    runs = [start(simulator, app) for _ in range(3)]
    firsts = [pending(run)[0] for run in runs]
    for run in runs:
        no_stream_left(run)
    simulator.add_fault(
        "status",
        "*",
        app="content-publish",
        times=None,
        status=403,
        code="forbidden",
        message="The app's API service has been disabled.",
    )
    for form in firsts:
        _answer_in_dify(simulator, form)
        form.run.request_follow(snapshot=True)
    _given_up(app, 3)
    # Switched on again; but Dify fails on the detail of the run that asks for the app.
    simulator.clear_faults()
    broken, *others = runs
    simulator.add_fault(
        "status",
        "workflow_run_detail",
        app="content-publish",
        run=broken.workflow_run_id,
        times=None,
        status=500,
    )
    _a_minute_later(app)
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        counts = reconcile_runs()
    # The run's failure says nothing of the app: Dify is asked about the app itself.
    assert (counts["errors"], counts["held"]) == (1, 2)
    assert simulator.request_count("info") == 1
    app.refresh_from_db()
    assert app.refused_at is None

    # The next pass asks about the other runs first; they flow again.
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        counts = reconcile_runs()
    assert (counts["followed"], counts["errors"]) == (2, 1)
    for run in others:
        assert _next_form(run, "legal_check")
        no_stream_left(run)
    broken.refresh_from_db()
    assert broken.needs_reconcile and broken.status == "paused"


def test_a_run_dify_keeps_failing_on_does_not_stand_in_front_of_the_other_runs_of_its_app(
    simulator: Any, sim_app: Any
) -> None:
    app = sim_app("refund-approval")
    runs = [start(simulator, app) for _ in range(3)]
    # Handed to the reconcile (the follower gave up on their streams).
    Run.objects.filter(app=app).update(follow_wanted=False, needs_reconcile=True)
    broken = runs[0]
    simulator.add_fault(
        "status", "workflow_run_detail", run=broken.workflow_run_id, times=None, status=500
    )
    # Asked first, it fails: Dify may be down for the app, its other runs wait for the next pass.
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        counts = reconcile_runs()
    assert (counts["errors"], counts["followed"]) == (1, 0)
    # The next pass asks about the others first.
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        counts = reconcile_runs()
    assert (counts["followed"], counts["errors"]) == (2, 1)
    assert list(Run.objects.filter(app=app, needs_reconcile=True)) == [broken]


def test_a_form_dify_keeps_failing_on_does_not_stand_in_front_of_the_other_forms_of_its_app(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("refund-approval")
    runs = [start(simulator, app) for _ in range(3)]
    forms = [pending(run)[0] for run in runs]
    for run in runs:
        no_stream_left(run)
    # Due for the reconcile in the order they came in.
    for minutes, form in zip((3, 2, 1), forms, strict=True):
        Form.objects.filter(pk=form.pk).update(
            created_at=timezone.now() - dt.timedelta(minutes=minutes)
        )
    broken, *others = forms
    simulator.add_fault("status", "form_get", form=broken.form_id, times=None, status=500)
    # Answered in Dify through email, which only GET form tells.
    for form in others:
        _answer_in_dify(simulator, form)
    # Asked first, it fails: Dify may be down for the app, its other forms wait for the next pass.
    with override_settings(INBOX_RECONCILE_AFTER_SECONDS=30):
        counts = reconcile_pending_forms()
    assert counts == {"checked": 0, "answered_elsewhere": 0, "expired": 0, "errors": 1}
    # The next pass asks about the others first.
    with override_settings(INBOX_RECONCILE_AFTER_SECONDS=30):
        counts = reconcile_pending_forms()
    assert counts == {"checked": 2, "answered_elsewhere": 2, "expired": 0, "errors": 0}
    assert list(Form.objects.filter(run__app=app, status="pending")) == [broken]


def test_a_run_dify_does_not_know_hands_the_question_to_the_app(
    simulator: Any, sim_app: Any
) -> None:
    app = sim_app("refund-approval")
    _held_run(app)
    assert app.note_refused(
        Unauthorized(401, "unauthorized", "Access token is invalid"), "follower"
    )
    _a_minute_later(app)
    counts = reconcile_runs()
    # Deleted in Dify, say: that says nothing of the key, /info does.
    assert (counts["errors"], counts["held"]) == (1, 0)
    assert AuditEntry.objects.filter(verb="run_not_found").count() == 1
    assert simulator.request_count("info") == 1
    app.refresh_from_db()
    assert app.refused_at is None


def _decide(form: Form, reviewer: User) -> Decision:
    return form.decide(action_id="approve", inputs={"decision_note": "Fine."}, reviewer=reviewer)


def test_an_app_refused_as_of_another_kind_stays_refused_while_dify_takes_its_streams_and_decisions(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    app = sim_app("refund-approval")
    runs = [start(simulator, app) for _ in range(2)]
    held_form, form = (pending(run)[0] for run in runs)
    for run in runs:
        no_stream_left(run)
    good_key = app.api_key
    # The key is revoked in Dify: a decision is held for the app.
    DifyApp.objects.filter(pk=app.pk).update(api_key="app-revoked-key-000000")
    held = _decide(held_form, reviewer)
    assert deliver_decision(held.pk) == "held"
    # The key is good again, but the app is set up here as a chatflow: Dify refuses its starts.
    DifyApp.objects.filter(pk=app.pk).update(api_key=good_key, mode="chatflow")
    app.refresh_from_db()
    with pytest.raises(StartFailed) as refused:
        start(simulator, app)
    assert refused.value.dify_code == "not_chat_app"
    app.refresh_from_db()
    refusal = app.refusal
    assert refusal.startswith("400 not_chat_app: ")

    # A run's events come whatever the app's kind: the follower reads them, the refusal stays.
    streams = simulator.request_count("workflow_events")
    runs[1].request_follow(snapshot=True)
    no_stream_left(runs[1])
    assert simulator.request_count("workflow_events") > streams
    app.refresh_from_db()
    assert app.refusal == refusal
    # So does a submit: delivered, and the decision held for the app is due again with it.
    assert deliver_decision(_decide(form, reviewer).pk) == "delivered"
    app.refresh_from_db()
    assert app.refusal == refusal
    held.refresh_from_db()
    assert not held.held_for_app and held.next_attempt_at is not None
    assert deliver_decision(held.pk) == "delivered"
    app.refresh_from_db()
    assert app.refusal == refusal
    assert not AuditEntry.objects.filter(verb="app_accepted").exists()

    # Set up as a workflow again: the next start proves it, and clears the refusal.
    DifyApp.objects.filter(pk=app.pk).update(mode="workflow")
    app.refresh_from_db()
    start(simulator, app)
    app.refresh_from_db()
    assert app.refused_at is None
    assert AuditEntry.objects.get(verb="app_accepted").details == {"source": "start"}


def test_an_app_with_nothing_published_stays_refused_until_a_call_that_needs_it_is_accepted(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User, admin_user: User
) -> None:
    app = sim_app("refund-approval")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    # Unpublished in Dify: the administrator's connection test meets the refusal.
    simulator.add_fault(
        "status",
        "parameters",
        app="refund-approval",
        times=None,
        status=400,
        code="app_unavailable",
        message=UNAVAILABLE,
    )
    admin = Client()
    admin.force_login(admin_user)

    def test_connection() -> None:
        admin.post(
            "/admin/inbox/difyapp/",
            {"action": "test_connection", "_selected_action": [str(app.pk)]},
        )

    test_connection()
    app.refresh_from_db()
    assert app.refusal_code == "app_unavailable"

    # The run's events and a submit go through: they need nothing published.
    streams = simulator.request_count("workflow_events")
    run.request_follow(snapshot=True)
    no_stream_left(run)
    assert deliver_decision(_decide(form, reviewer).pk) == "delivered"
    assert simulator.request_count("workflow_events") > streams
    app.refresh_from_db()
    assert app.refusal == f"400 app_unavailable: {UNAVAILABLE}"

    # Published: the connection test's /parameters says so.
    simulator.clear_faults()
    test_connection()
    app.refresh_from_db()
    assert app.refused_at is None
    assert AuditEntry.objects.get(verb="app_accepted").details == {"source": "connection test"}


def test_the_runs_and_forms_of_an_app_refused_as_of_another_kind_are_still_reconciled(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("content-publish")
    run = start(simulator, app)
    (first,) = pending(run)
    no_stream_left(run)
    # Set up here as a chatflow now: Dify refuses its starts, but still answers for the run it
    # has, its events and its forms.
    DifyApp.objects.filter(pk=app.pk).update(mode="chatflow")
    app.refresh_from_db()
    with pytest.raises(StartFailed):
        start(simulator, app)
    app.refresh_from_db()
    assert app.refusal_code == "not_chat_app"
    # The first form is answered in Dify while nothing of ours reads the run, which the
    # follower had given up on.
    _answer_in_dify(simulator, first)
    Run.objects.filter(pk=run.pk).update(needs_reconcile=True)
    counts = reconcile_runs()
    assert counts["held"] == 0 and counts["checked"] == 1, counts
    # The run is read again, and its next form arrives; the app stays refused.
    second = _next_form(run, "legal_check")
    no_stream_left(run)
    app.refresh_from_db()
    assert app.refused_at is not None and app.refusal_code == "not_chat_app"
    # Its forms are asked about too: one answered in Dify is found so.
    _answer_in_dify(simulator, second)
    Form.objects.filter(pk=second.pk).update(checked_at=timezone.now() - dt.timedelta(hours=1))
    assert reconcile_pending_forms()["answered_elsewhere"] == 1


def test_the_start_page_finding_an_app_published_again_clears_its_refusal(
    simulator: Any, sim_app: Any, reviewer: User, starters: Any
) -> None:
    app = sim_app("refund-approval")
    simulator.add_fault(
        "status",
        "parameters",
        app="refund-approval",
        times=None,
        status=400,
        code="app_unavailable",
        message=UNAVAILABLE,
    )
    browser = Client()
    browser.force_login(reviewer)
    assert browser.get(f"/apps/{app.pk}/start/").status_code == 502
    app.refresh_from_db()
    assert app.refusal_code == "app_unavailable"
    # Published in Dify: the next visit of the start page finds the app's inputs.
    simulator.clear_faults()
    assert browser.get(f"/apps/{app.pk}/start/").status_code == 200
    app.refresh_from_db()
    assert app.refused_at is None and app.refusal_code == ""
    assert AuditEntry.objects.get(verb="app_accepted").details == {
        "source": "start",
        "via": "page",
    }
