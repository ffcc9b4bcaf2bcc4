"""404s for a whole app (another app's key pasted in the admin, a proxy answering 404) hold the
app's runs and decisions as a refused key does; only a run Dify no longer knows while it still
answers for the app is taken for gone (CONTRACT 1: a run or token of another app is a 404)."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.utils import timezone

from inbox.models import ApiToken, AuditEntry, Decision, DifyApp, Form, Run
from inbox.tasks import deliver_decision, reconcile_runs
from tests.capture.conftest import FollowerThread, no_stream_left, pending, start
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _ago(seconds: float) -> dt.datetime:
    return timezone.now() - dt.timedelta(seconds=seconds)


def _due(app: DifyApp) -> None:
    """Every open run of the app is due for the reconcile, as if left for an hour."""
    Run.objects.filter(app=app).update(checked_at=_ago(3600), updated_at=_ago(3600))


def _later(app: DifyApp) -> None:
    """Eleven minutes on: a second 404 would take a run for gone, and the reconcile may ask
    Dify again about a refused app."""
    AuditEntry.objects.filter(verb="run_not_found").update(created_at=_ago(11 * 60))
    DifyApp.objects.filter(pk=app.pk, refused_at__isnull=False).update(
        refused_at=_ago(11 * 60), refusal_checked_at=_ago(11 * 60)
    )
    _due(app)


def _decide(form: Form, reviewer: User) -> Decision:
    return form.decide(action_id="approve", inputs={"edits": "Fine."}, reviewer=reviewer)


def _change_key(admin: Client, app: DifyApp, key: str) -> Any:
    return admin.post(
        f"/admin/inbox/difyapp/{app.pk}/change/",
        {
            "name": app.name,
            "base_url": app.base_url,
            "api_key": key,
            "mode": "workflow",
            "is_active": "on",
        },
        follow=True,
    )


def test_another_app_s_key_holds_the_runs_and_forms_and_the_right_key_lets_them_go_on(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User, admin_user: User
) -> None:
    app = sim_app("content-publish")
    runs = [start(simulator, app) for _ in range(2)]
    firsts = [pending(run)[0] for run in runs]
    for run in runs:
        no_stream_left(run)
    good_key = app.api_key
    admin = Client()
    admin.force_login(admin_user)
    # An administrator pastes the key of another app: Dify takes it, and the save says whose
    # app it is.
    saved = _change_key(admin, app, simulator.api_key("refund-approval"))
    assert "Dify calls the app “refund-approval”, not “content-publish”" in (saved.content.decode())
    app.refresh_from_db()
    DifyApp.objects.filter(pk=app.pk).update(updated_at=_ago(7200))
    for _ in range(2):
        _due(app)
        wait_until(lambda: not Run.objects.filter(app=app, follow_wanted=True).exists())
        _later(app)
        reconcile_runs()
    # Two passes, an hour of 404s: the app is refused, nothing of its runs is lost.
    app.refresh_from_db()
    assert app.refused_at is not None and app.refusal_code == "app_not_found"
    assert app.refusal_status == 404
    assert "refund-approval" in app.refusal
    assert not AuditEntry.objects.filter(verb__in=["run_gone", "form_gone"]).exists()
    for run, form in zip(runs, firsts, strict=True):
        run.refresh_from_db()
        form.refresh_from_db()
        assert run.status == Run.Status.PAUSED and not run.error
        assert form.status == Form.Status.PENDING and form.form_token
    assert not [m for m in mail.outbox if "no longer takes a decision" in m.body]
    # The admin and the run page say so.
    listing = admin.get("/admin/inbox/difyapp/").content.decode()
    assert "Dify answers 404 for the app as a whole" in listing
    page = admin.get(runs[0].get_absolute_url()).content.decode()
    assert "Dify is refusing this app's API key" in page

    # A decision made meanwhile is held, not failed.
    held = _decide(firsts[0], reviewer)
    assert deliver_decision(held.pk) == "held"
    held.refresh_from_db()
    assert held.status == Decision.Status.QUEUED and held.held_for_app

    # The right key again: the held decision goes, once; the other form is decided and goes.
    _change_key(admin, app, good_key)
    app.refresh_from_db()
    assert app.refused_at is None
    held.refresh_from_db()
    assert not held.held_for_app
    assert deliver_decision(held.pk) == "delivered"
    assert deliver_decision(_decide(firsts[1], reviewer).pk) == "delivered"
    for form in firsts:
        form.refresh_from_db()
        assert form.status == Form.Status.SUBMITTED
        assert simulator.submits_applied(form.form_id) == 1
    for run in runs:
        assert wait_until(
            lambda run=run: run.forms.filter(node_id="legal_check", status="pending").first(),
            timeout=20,
        )


def test_a_404_for_the_whole_app_on_a_submit_holds_the_decision_until_dify_answers_again(
    simulator: Any, sim_app: Any, follower: FollowerThread, reviewer: User
) -> None:
    app = sim_app("content-publish")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    # A proxy in front of Dify answers 404 for everything of the app.
    simulator.add_fault("status", "*", app="content-publish", status=404, times=None)
    decision = _decide(form, reviewer)
    assert deliver_decision(decision.pk) == "held"
    decision.refresh_from_db()
    assert decision.status == Decision.Status.QUEUED and decision.held_for_app
    assert "404 for this app as a whole" in decision.last_error
    form.refresh_from_db()
    assert form.status != Form.Status.FAILED and form.form_token
    app.refresh_from_db()
    assert app.refusal_code == "app_not_found"
    assert not AuditEntry.objects.filter(verb="decision_failed").exists()
    # Another decision meanwhile asks Dify nothing more of the app: held at once.
    assert simulator.submits_applied(form.form_id) == 0

    # The proxy is fixed; the reconcile's next try finds the app's run answering.
    simulator.clear_faults()
    DifyApp.objects.filter(pk=app.pk).update(
        refused_at=_ago(120), refusal_checked_at=_ago(120), updated_at=_ago(7200)
    )
    reconcile_runs()
    app.refresh_from_db()
    assert app.refused_at is None
    decision.refresh_from_db()
    assert not decision.held_for_app
    assert deliver_decision(decision.pk) == "delivered"
    assert simulator.submits_applied(form.form_id) == 1
    assert Decision.objects.get(pk=decision.pk).status == Decision.Status.DELIVERED


def test_a_run_deleted_in_dify_while_the_app_answers_is_still_taken_for_gone(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("content-publish")
    alive = start(simulator, app)
    pending(alive)
    no_stream_left(alive)
    # A run Dify no longer has (deleted there): its detail is a 404, the app's other run is
    # answered.
    deleted = Run.objects.create(
        app=app,
        workflow_run_id="00000000-dead-4000-8000-000000000000",
        dify_user="inbox-tests",
        status=Run.Status.PAUSED,
        follow_wanted=False,
    )
    form = Form.objects.create(
        run=deleted, form_id="F-deleted", form_token="tok-deleted-123456", node_id="n"
    )
    DifyApp.objects.filter(pk=app.pk).update(updated_at=_ago(7200))
    _due(app)
    reconcile_runs()
    app.refresh_from_db()
    assert app.refused_at is None
    assert AuditEntry.objects.filter(verb="run_not_found", object_id=str(deleted.pk)).exists()
    _later(app)
    reconcile_runs()
    deleted.refresh_from_db()
    form.refresh_from_db()
    assert deleted.status == Run.Status.FAILED and "no longer knows this run" in deleted.error
    assert form.status == Form.Status.GONE and not form.form_token
    alive.refresh_from_db()
    assert alive.status == Run.Status.PAUSED
    app.refresh_from_db()
    assert app.refused_at is None and app.dify_name == "content-publish"


def test_an_ingest_of_a_run_taken_for_gone_that_dify_still_has_brings_it_back(
    simulator: Any, sim_app: Any, follower: FollowerThread, admin_user: User
) -> None:
    app = sim_app("content-publish")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    # Taken for gone before this release told a wrong key from a deleted run: the run failed,
    # its form closed and its token was let go, while Dify still waits at it.
    run.gone_from_dify(source="reconcile")
    form.refresh_from_db()
    assert form.status == Form.Status.GONE and not form.form_token
    _token, raw = ApiToken.issue(admin_user)
    response = Client().post(
        "/api/v1/ingest",
        json.dumps(
            {"app": app.name, "workflow_run_id": run.workflow_run_id, "user": run.dify_user}
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 200
    assert response.json()["status"] in ("running", "paused")
    # Followed again with a snapshot: the same form waits again, with a fresh token.
    back = wait_until(
        lambda: (
            Form.objects.filter(pk=form.pk, status=Form.Status.PENDING)
            .exclude(form_token="")
            .first()
        ),
        timeout=20,
    )
    assert back.form_id == form.form_id
    run.refresh_from_db()
    assert run.status == Run.Status.PAUSED and not run.error and run.finished_at is None
    assert AuditEntry.objects.filter(verb="run_back", object_id=str(run.pk)).exists()
    assert Form.objects.filter(run=run).count() == 1


def _ingest_again(run: Run, caller: User) -> Any:
    _token, raw = ApiToken.issue(caller)
    return Client().post(
        "/api/v1/ingest",
        json.dumps(
            {"app": run.app.name, "workflow_run_id": run.workflow_run_id, "user": run.dify_user}
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )


def _taken_for_gone(simulator: Any, sim_app: Any, follower: FollowerThread) -> tuple[Run, Form]:
    """A run paused at its form, taken for gone while Dify still waits at it; no follower runs
    any more, so whatever the ingest answers is its own doing."""
    app = sim_app("content-publish")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    follower.stop()
    run.gone_from_dify(source="reconcile")
    return run, form


def test_an_ingest_that_brings_a_run_back_answers_with_its_forms_waiting_again(
    simulator: Any, sim_app: Any, follower: FollowerThread, admin_user: User
) -> None:
    run, form = _taken_for_gone(simulator, sim_app, follower)
    response = _ingest_again(run, admin_user)
    assert response.status_code == 200
    body = response.json()
    # Its snapshot read before the answer: the form waits again, answerable, with a fresh token
    # (which the answer does not carry).
    assert body["status"] == "paused"
    (listed,) = body["forms"]
    assert listed["id"] == str(form.public_id)
    assert listed["status"] == "pending" and listed["answerable"] is True
    form.refresh_from_db()
    assert form.status == Form.Status.PENDING and form.form_token
    assert form.form_token not in response.content.decode()
    assert simulator.exchanges("workflow_events")[-1].status == 200
    # Still handed to the follower, as every ingest is.
    run.refresh_from_db()
    assert run.follow_wanted and run.status == Run.Status.PAUSED and not run.error
    assert Form.objects.filter(run=run).count() == 1


def test_an_ingest_whose_snapshot_does_not_come_in_time_answers_within_its_budget(
    simulator: Any,
    sim_app: Any,
    follower: FollowerThread,
    admin_user: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from inbox import runs

    monkeypatch.setattr(runs, "SNAPSHOT_SECONDS", 1.0)
    monkeypatch.setattr(runs, "SNAPSHOT_QUIET_SECONDS", 0.5)
    run, form = _taken_for_gone(simulator, sim_app, follower)
    # Every opening of its events held past the budget, retries included.
    simulator.add_fault("delay", "workflow_events", times=None, delay=10.0)
    began = time.monotonic()
    response = _ingest_again(run, admin_user)
    assert time.monotonic() - began < 6.0
    simulator.clear_faults()
    # Back and followed all the same; its form waits for the follower's snapshot.
    assert response.status_code == 200
    (listed,) = response.json()["forms"]
    assert listed["status"] == "not_answerable" and listed["answerable"] is False
    run.refresh_from_db()
    assert run.follow_wanted and not run.error
    with_follower = FollowerThread("after").start()
    try:
        wait_until(
            lambda: (
                Form.objects.filter(pk=form.pk, status=Form.Status.PENDING)
                .exclude(form_token="")
                .exists()
            ),
            timeout=20,
        )
    finally:
        with_follower.stop()


def test_the_admin_warns_in_both_languages_when_dify_names_another_app(
    simulator: Any, sim_app: Any, follower: FollowerThread, admin_user: User
) -> None:
    app = sim_app("content-publish")
    admin = Client()
    admin.force_login(admin_user)

    def test_connection(**headers: str) -> str:
        page: str = admin.post(
            "/admin/inbox/difyapp/",
            {"action": "test_connection", "_selected_action": [str(app.pk)]},
            follow=True,
            **headers,
        ).content.decode()
        return page

    # Tested with its own key: what Dify calls the app is kept, with no warning.
    assert "another app" not in test_connection()
    app.refresh_from_db()
    assert app.dify_name == "content-publish"
    run = start(simulator, app)
    pending(run)
    no_stream_left(run)

    # Another app's key, saved by an administrator reading Chinese: the save says whose app
    # Dify now names.
    zh = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}
    saved = admin.post(
        f"/admin/inbox/difyapp/{app.pk}/change/",
        {
            "name": app.name,
            "base_url": app.base_url,
            "api_key": simulator.api_key("refund-approval"),
            "mode": "workflow",
            "is_active": "on",
        },
        follow=True,
        **zh,
    ).content.decode()
    assert "Dify \u73b0\u5728\u79f0\u6b64\u5e94\u7528\u4e3a\u201crefund-approval\u201d" in saved
    # Its connection test, in English: connected, but Dify knows none of the app's runs.
    page = test_connection()
    assert "Dify now calls the app “refund-approval”; it called it “content-publish” before" in (
        page
    )
    assert "Dify knows none of this app&#x27;s runs with this key" in page
    app.refresh_from_db()
    assert app.refusal_code == "app_not_found" and app.dify_name == "content-publish"
    zh_page = test_connection(**zh)
    assert "\u4f7f\u7528\u6b64\u5bc6\u94a5\u65f6\uff0cDify \u4e0d\u8ba4\u8bc6" in zh_page


def test_an_inbox_name_with_a_qualifier_around_dify_s_name_is_the_same_app(
    simulator: Any, sim_app: Any, admin_user: User
) -> None:
    # One inbox for two Dify servers: the second server's "refund-approval" needs another
    # name here, Dify's name with a qualifier.
    admin = Client()
    admin.force_login(admin_user)
    names = ["refund-approval (staging)", "refund-approval-stg", "staging refund-approval"]
    apps = []
    for name in names:
        app = sim_app("refund-approval")
        DifyApp.objects.filter(pk=app.pk).update(name=name)
        apps.append(DifyApp.objects.get(pk=app.pk))
    page = admin.post(
        "/admin/inbox/difyapp/",
        {"action": "test_connection", "_selected_action": [str(a.pk) for a in apps]},
        follow=True,
    ).content.decode()
    # Its right key: connected, with no word of another app's key.
    assert page.count("connected") >= 3
    assert "Dify calls the app" not in page and "another app" not in page
    for app in apps:
        app.refresh_from_db()
        assert app.dify_name == "refund-approval" and app.refused_at is None
    # The key of another app, pasted in an app never tested: still warned of, qualifier or
    # not.
    other = sim_app("refund-approval")
    DifyApp.objects.filter(pk=other.pk).update(name="refund-approval (prod)")
    other.refresh_from_db()
    saved = _change_key(admin, other, simulator.api_key("contract-review"))
    assert (
        "Dify calls the app “contract-review”, not “refund-approval (prod)” as it is named"
        in saved.content.decode()
    )


def test_a_name_here_is_dify_s_only_with_all_of_dify_s_name_on_word_boundaries() -> None:
    from inbox.app_check import same_name

    assert same_name("refund-approval", "Refund Approval")
    assert same_name("refund-approval", "refund-approval (staging)")
    assert same_name("refund-approval", "refund-approval-stg")
    assert same_name("refund-approval", "staging refund-approval")
    assert same_name("Refund approval", "RefundApproval_stg")
    assert same_name("\u9000\u6b3e\u5ba1\u6279", "\u9000\u6b3e\u5ba1\u6279\uff08staging\uff09")
    # Another app: a name here shorter than Dify's, a word that only starts alike, none alike.
    assert not same_name("refund-approval", "refund")
    assert not same_name("refund", "refunds-stg")
    assert not same_name("contract-review", "refund-approval (staging)")
    assert not same_name("", "refund-approval")
    # Where a 404 would close a run or a form for good, only names alike but for case and
    # punctuation stand in for a key proven by the app's runs.
    assert same_name("refund-approval", "Refund_Approval", qualified=False)
    assert not same_name("refund-approval", "refund-approval-stg", qualified=False)


def test_a_404_is_not_taken_for_the_run_s_own_on_a_qualified_name_alone(
    simulator: Any, sim_app: Any
) -> None:
    from inbox.app_check import check_app

    # Never tested, no other run to ask about: /info naming Dify's name within the name here
    # proves no key, so the 404 is held as the whole app's rather than closing anything.
    app = sim_app("refund-approval")
    DifyApp.objects.filter(pk=app.pk).update(name="refund-approval-stg")
    app.refresh_from_db()
    assert check_app(app, source="reconcile").refused
    app.refresh_from_db()
    assert app.refusal_code == "app_not_found"


def _ingest(caller: User, app: DifyApp, **body: Any) -> Any:
    _token, raw = ApiToken.issue(caller)
    return Client().post(
        "/api/v1/ingest",
        json.dumps({"app": app.name, **body}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )


def test_an_ingest_while_dify_answers_404_for_the_whole_app_is_a_502_and_refuses_the_app(
    simulator: Any, sim_app: Any, admin_user: User
) -> None:
    from inbox.models import APP_NOT_FOUND_REFUSAL

    app = sim_app("refund-approval")
    started = simulator.start_run("refund-approval", user="ext-k")
    token = started.form("manager_approval")["form_token"]
    # A wrong URL or a proxy: /info, /parameters and every run are 404s.
    simulator.add_fault("status", "*", app="refund-approval", status=404, times=None)
    for extra in ({}, {"form_token": token}):
        response = _ingest(
            admin_user, app, workflow_run_id=started.workflow_run_id, user="ext-k", **extra
        )
        assert response.status_code == 502, response.content
        error = response.json()["error"]
        assert error["code"] == "dify_error"
        assert error["details"]["dify_status"] == 404
        assert "404 for the app refund-approval as a whole" in error["message"]
        assert token not in response.content.decode()
    assert not Run.objects.exists()
    # Recorded on the app, as delivery and the reconcile record it.
    app.refresh_from_db()
    assert app.refused_at is not None and app.refusal_code == APP_NOT_FOUND_REFUSAL
    # Dify answers for the app again: the same ingest records the run, and the app is accepted.
    simulator.clear_faults()
    response = _ingest(admin_user, app, workflow_run_id=started.workflow_run_id, user="ext-k")
    assert response.status_code == 201, response.content
    app.refresh_from_db()
    assert app.refused_at is None
    # A run Dify does not have while it answers for the app is the caller's mistake.
    response = _ingest(admin_user, app, workflow_run_id="no-such-run", user="ext-k")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "run_not_found"
    app.refresh_from_db()
    assert app.refused_at is None


def test_an_ingest_while_only_the_events_are_404_for_the_app_is_no_user_mismatch(
    simulator: Any, sim_app: Any, admin_user: User
) -> None:
    app = sim_app("refund-approval")
    # A run started here: Dify showed its events to its user.
    mine = start(simulator, app)
    assert mine.workflow_run_id
    started = simulator.start_run("refund-approval", user="ext-k")
    # A proxy that does not pass /workflow/.../events.
    simulator.add_fault("status", "workflow_events", app="refund-approval", status=404, times=None)
    response = _ingest(admin_user, app, workflow_run_id=started.workflow_run_id, user="ext-k")
    assert response.status_code == 502, response.content
    error = response.json()["error"]
    assert (error["code"], error["details"]["dify_status"]) == ("dify_error", 404)
    assert "events" in error["message"]
    assert not Run.objects.filter(workflow_run_id=started.workflow_run_id).exists()
    simulator.clear_faults()
    # Dify shows the events again: a wrong user is told so.
    response = _ingest(admin_user, app, workflow_run_id=started.workflow_run_id, user="ext-x")
    assert response.json()["error"]["code"] == "user_mismatch"


def test_an_ingest_that_finds_dify_down_records_it_and_the_next_one_clears_it(
    simulator: Any, sim_app: Any, admin_user: User
) -> None:
    app = sim_app("refund-approval")
    started = simulator.start_run("refund-approval", user="ext-k")
    simulator.add_fault("status", "*", app="refund-approval", status=503, times=None)
    response = _ingest(admin_user, app, workflow_run_id=started.workflow_run_id, user="ext-k")
    assert response.status_code == 502, response.content
    # Shown with the app (admin, dashboard, /healthz), as the follower and deliveries record it.
    app.refresh_from_db()
    assert app.contact_failed_at is not None and app.contact_failure_source == "ingest"
    simulator.clear_faults()
    response = _ingest(admin_user, app, workflow_run_id=started.workflow_run_id, user="ext-k")
    assert response.status_code == 201, response.content
    app.refresh_from_db()
    assert app.contact_failed_at is None
