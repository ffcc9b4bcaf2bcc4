"""Streams that drop, followers that die or run side by side, streams that cannot be read."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection, connections
from django.db.models.functions import Now
from django.test import override_settings
from django.utils import timezone

from inbox import capture
from inbox.dify.client import DifyClient
from inbox.models import AuditEntry, DifyApp, Form, Route, Run, RunEvent
from inbox.simulator.testing import running_simulator
from inbox.tasks import reconcile_pending_forms, reconcile_runs
from tests.capture.conftest import (
    FOLLOWER_TEST_SETTINGS,
    FollowerThread,
    needs_shared_database,
    no_stream_left,
    pending,
    run_status,
    start,
    submit,
)
from tests.conftest import ROOT, SIMULATOR_TEST_OPTIONS, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PAUSES = 3


def _three_pauses(sim: Any, app: DifyApp, drop_at: tuple[int, int] | None) -> Run:
    """A content-publish run answered at each of its three pauses. `drop_at` = (stream, n):
    the n-th events stream of the run (1 = the one opened after the start, 2 = after the first
    answer, ...) is cut by Dify after n events."""

    def arm(stream: int) -> None:
        sim.clear_faults()
        if drop_at is not None and drop_at[0] == stream:
            sim.add_fault("drop_stream", "workflow_events", times=1, after_events=drop_at[1])

    arm(1)
    run = start(sim, app, scenario="content-publish")
    for pause in range(1, PAUSES + 1):

        def captured(n: int = pause) -> Form | None:
            forms = list(run.forms.order_by("created_at", "id"))
            newest = forms[-1] if len(forms) == n else None
            ready = newest and newest.status == "pending" and newest.definition_fetched_at
            return newest if ready else None

        form = wait_until(captured, timeout=30)
        # Answered once the follower has let go of the run, so each answer opens a stream of
        # its own, whatever the timing: a follower that opened its snapshot after Dify resumed
        # missed the fill, finds the answered form unlisted at the next pause and reads on for
        # the settle window, and an answer given within it would go on in the same stream.
        no_stream_left(run, timeout=30)
        arm(pause + 1)
        submit(form)
        wait_until(
            lambda f=form: Form.objects.get(pk=f.pk).status == "answered_elsewhere", timeout=30
        )
    return run_status(run, "succeeded", timeout=30)


def _segment_lengths(sim: Any) -> list[int]:
    """How many events each of a run's event streams carried, in order."""
    return [len(e.events or []) for e in sim.exchanges("workflow_events") if e.status == 200]


@pytest.fixture
def simulators(transactional_db: None) -> Iterator[list[Any]]:
    """A few more simulators: a fault is set per simulator app, so each one runs its own cases
    while the others run theirs."""
    with contextlib.ExitStack() as stack:
        sims = [
            stack.enter_context(
                running_simulator(**{**SIMULATOR_TEST_OPTIONS, "resume_delay": 0.1})
            )
            for _ in range(4)
        ]
        yield sims


def _app_for(sim: Any, name: str) -> DifyApp:
    spec = sim.apps["content-publish"]
    app = DifyApp.objects.create(
        name=name, base_url=sim.base_url, api_key=sim.api_key("content-publish"), mode="workflow"
    )
    Route.objects.create(app=app, name="default", reminders="")
    assert spec.mode == "workflow"
    return app


def test_a_three_pause_run_survives_its_stream_dropping_after_every_event(
    simulators: list[Any], follower: FollowerThread
) -> None:
    apps = [_app_for(sim, f"publish-{i}") for i, sim in enumerate(simulators)]
    # A clean run first: how many events each of its streams carries.
    clean = _three_pauses(simulators[0], apps[0], None)
    lengths = _segment_lengths(simulators[0])
    assert len(lengths) >= PAUSES + 1 and sum(lengths) > 20, lengths
    cases = [(stream, n) for stream, length in enumerate(lengths, 1) for n in range(1, length + 1)]
    dropped: list[tuple[int, int]] = []
    # The last event each cut stream sent before the cut.
    cut_after: list[str] = []
    runs: list[Run] = [clean]

    def work(index: int) -> None:
        sim, app = simulators[index], apps[index]
        try:
            for case in cases[index :: len(simulators)]:
                sim.clear_records()
                runs.append(_three_pauses(sim, app, case))
                cut = [e for e in sim.exchanges("workflow_events") if e.fault == "drop_stream"]
                if cut:
                    dropped.append(case)
                    sent = cut[0].events or []
                    cut_after.append(sent[-1]["event"] if sent else "")
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(simulators)) as pool:
        for future in [pool.submit(work, i) for i in range(len(simulators))]:
            future.result()
    assert len(runs) == len(cases) + 1
    # Most cases cut a stream; a stream may carry fewer events than the clean run's did (a
    # follower that opened it a moment later gets a shorter replay), and then that cut is moot.
    assert len(dropped) >= len(cases) // 2, (dropped, lengths)
    for run in runs:
        assert run.status == "succeeded"
        forms = list(run.forms.values_list("node_id", flat=True).order_by("created_at"))
        assert forms == ["editor_review", "legal_check", "publisher_signoff"], run.pk
    captured = AuditEntry.objects.filter(verb="form_captured").count()
    assert captured == PAUSES * len(runs)
    # A cut after a stream's last event (the pause, the end) leaves nothing to reopen for; which
    # cut that is depends on how long that stream was, not on the clean run's.
    mid_stream = [e for e in cut_after if e not in ("workflow_paused", "workflow_finished")]
    assert follower.follower.stats["reconnects"] >= len(mid_stream) > 0


def test_a_stream_that_keeps_failing_goes_to_the_reconcile_then_resumes(
    simulator: Any, sim_app: Any, follower: FollowerThread, client: Any, admin_user: Any
) -> None:
    app = sim_app("refund-approval")
    # Every events stream is cut before its first event.
    simulator.add_fault("drop_stream", "workflow_events", times=None, after_events=0)
    run = start(simulator, app)

    def given_up() -> Run | None:
        run.refresh_from_db()
        return run if run.needs_reconcile and not run.follow_wanted else None

    run = wait_until(given_up, timeout=30)
    attempts = simulator.request_count("workflow_events")
    assert attempts == FOLLOWER_TEST_SETTINGS["max_attempts"] + 1
    assert run.forms.count() == 0 and not run.lease_owner
    # Whoever looks at the run is told the inbox has lost touch with it, not shown a run
    # that seems to do nothing.
    client.force_login(admin_user)
    out_of_touch = "The inbox cannot follow this run in Dify at the moment"
    assert out_of_touch in client.get(f"/runs/{run.public_id}/").content.decode()
    simulator.clear_faults()
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["followed"] == 1
    assert len(pending(run)) == 1
    run = no_stream_left(run)
    assert not run.needs_reconcile and run.status == "paused"
    assert out_of_touch not in client.get(f"/runs/{run.public_id}/").content.decode()


def test_a_run_whose_stream_keeps_being_refused_is_handed_back_less_and_less_often(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("refund-approval")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    # Dify refuses this one run's events with a 400 about the request, not the app: the app's
    # other runs are fine, and nothing here says when this one will be read again.
    simulator.add_fault(
        "status", "workflow_events", times=None, status=400, code="invalid_param", message="No."
    )

    def given_up(times: int) -> Run | None:
        found = Run.objects.get(pk=run.pk)
        ready = found.needs_reconcile and not found.follow_wanted and found.give_ups == times
        return found if ready and not found.lease_owner else None

    def streams() -> int:
        return simulator.request_count("workflow_events")

    run.request_follow(snapshot=True)
    first = wait_until(lambda: given_up(1), timeout=15)
    assert first.refollow_after is not None and first.refollow_after <= timezone.now()
    assert DifyApp.objects.get(pk=app.pk).refused_at is None
    # The first give-up is handed back at the next pass, as before...
    opened = streams()
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["followed"] == 1
    second = wait_until(lambda: given_up(2), timeout=15)
    assert streams() == opened + 1
    # ... the second one two minutes later, however often the reconcile passes meanwhile. Its
    # run detail is still asked about as any run's (here: every pass), and it keeps its mark.
    assert second.refollow_after is not None
    wait = (second.refollow_after - timezone.now()).total_seconds()
    assert 100 < wait <= 120
    details = simulator.request_count("workflow_run_detail")
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=0):
        for _ in range(3):
            assert reconcile_runs()["waiting"] == 1
    assert simulator.request_count("workflow_run_detail") == details + 3
    run = Run.objects.get(pk=run.pk)
    assert run.needs_reconcile and not run.follow_wanted and streams() == opened + 1
    # Not asked about before its turn when the reconcile's cadence leaves it alone.
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["checked"] == 0
    # Its turn comes; Dify shows the run again: it is read to its pause and the count goes.
    Run.objects.filter(pk=run.pk).update(refollow_after=timezone.now() - dt.timedelta(seconds=1))
    simulator.clear_faults()
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["followed"] == 1
    run = no_stream_left(run)
    assert run.give_ups == 0 and not run.needs_reconcile and run.refollow_after is None
    assert run.status == "paused" and Form.objects.get(pk=form.pk).status == "pending"


def test_a_run_left_to_wait_for_its_stream_is_still_closed_when_it_ends(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("refund-approval")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    # Given up on four times in a row: the next stream is eight minutes away.
    Run.objects.filter(pk=run.pk).update(
        needs_reconcile=True, give_ups=4, refollow_after=timezone.now() + dt.timedelta(minutes=8)
    )
    assert simulator.submit_elsewhere(form.form_id, "approve")
    simulator.wait_for_status(run.workflow_run_id, "succeeded")
    opened = simulator.request_count("workflow_events")
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=0):
        counts = reconcile_runs()
    assert (counts["finished"], counts["waiting"]) == (1, 0)
    run.refresh_from_db()
    assert run.status == "succeeded" and not run.needs_reconcile
    assert simulator.request_count("workflow_events") == opened


def test_a_dead_followers_lease_is_taken_over_when_it_expires(
    simulator: Any, sim_app: Any, follower: FollowerThread, monkeypatch: Any
) -> None:
    from inbox import follower as follower_module

    app = sim_app("refund-approval")
    follower.stop()
    run = start(simulator, app)
    # A follower that took the run and died: nobody renews its lease.
    Run.objects.filter(pk=run.pk).update(
        lease_owner="dead-host:1", lease_expires_at=timezone.now() + dt.timedelta(seconds=60)
    )
    real_take = follower_module.take_leases
    tries: list[str] = []

    def counted_take(owner: str, *args: Any) -> list[Any]:
        tries.append(owner)
        return real_take(owner, *args)

    monkeypatch.setattr(follower_module, "take_leases", counted_take)
    other = FollowerThread("second").start()
    try:
        # Left alone while the lease lasts, however slowly the new follower came up.
        wait_until(lambda: len(tries) >= 5, timeout=30)
        assert Run.objects.get(pk=run.pk).lease_owner == "dead-host:1"
        # The lease runs out.
        Run.objects.filter(pk=run.pk).update(lease_expires_at=Now())
        (form,) = pending(run)
        assert form.node_id == "manager_approval"
        run = no_stream_left(run)
    finally:
        other.stop()


def test_an_app_whose_key_the_follower_cannot_read_leaves_the_other_apps_followed(
    simulator: Any,
    sim_app: Any,
    follower: FollowerThread,
    client: Any,
    admin_user: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rotation half done: the web process has the new key first, the follower only the old
    one. The app whose API key was saved under the new key waits, and says why; every other
    app's runs are followed; it is followed as soon as its key can be read."""
    from cryptography.fernet import Fernet
    from django.conf import settings

    from inbox.follower import KEY_RETRY_SECONDS
    from tests.capture.test_api import bearer

    follower.stop()
    refunds, publish = sim_app("refund-approval"), sim_app("content-publish")
    new_key = Fernet.generate_key().decode()
    with override_settings(INBOX_ENCRYPTION_KEYS=[new_key, *settings.INBOX_ENCRYPTION_KEYS]):
        # The web process saves the key under the new key, and starts a run of each app.
        refunds.save()
        stuck = start(simulator, refunds)
        followed = start(simulator, publish)
    # The stuck run leads every batch of runs to take.
    Run.objects.filter(pk=stuck.pk).update(updated_at=timezone.now() - dt.timedelta(minutes=5))
    with caplog.at_level(logging.INFO, logger="inbox.follower"):
        old_keys = FollowerThread("old-keys").start()
        try:
            # The other app's run is followed: its form arrives.
            (form,) = pending(followed)
            assert form.run_id == followed.pk
            app = wait_until(
                lambda: DifyApp.objects.filter(
                    pk=refunds.pk, key_unreadable_since__isnull=False
                ).first(),
                timeout=15,
            )
            assert app.key_unreadable_by == "old-keys"
            stuck.refresh_from_db()
            assert stuck.follow_wanted and not stuck.lease_owner and stuck.forms.count() == 0
            # Let go, it is not taken again at every poll (0.05 s here), only after a while.
            time.sleep(1.0)
            assert KEY_RETRY_SECONDS > 1.0
            said = [r for r in caplog.records if f"(id {refunds.pk})" in r.getMessage()]
            assert len(said) == 1, [r.getMessage() for r in said]
            (line,) = said
            assert line.levelno == logging.WARNING and line.exc_info is None
            message = line.getMessage()
            assert f"'refund-approval' (id {refunds.pk})" in message
            assert "cannot be decrypted with this process's INBOX_ENCRYPTION_KEYS" in message
            assert "\n" not in message
            assert not [r for r in caplog.records if r.exc_info]
            # The run, its API and the pages say why, and no follower is blamed.
            client.force_login(admin_user)
            api = bearer(admin_user)
            body = client.get(f"/api/v1/runs/{stuck.public_id}", **api).json()
            assert body["dify"]["following"] == "key_unreadable"
            assert body["dify"]["state"] == "ok"
            page = client.get(f"/runs/{stuck.public_id}/").content.decode()
            assert "The follower old-keys cannot decrypt this app's API key" in page
            dashboard = client.get("/dashboard/").content.decode()
            assert "The follower old-keys cannot decrypt the API key of refund-approval" in (
                dashboard
            )
            assert "check that the follower process" not in dashboard
            health = client.get("/healthz").json()
            assert health["status"] == "degraded"
            assert "keys: 1 app(s) with an API key a follower cannot decrypt" in health["problems"]
            # The key entered again: followed at once, not after the retry's wait.
            refunds.refresh_from_db()
            refunds.api_key = simulator.api_key("refund-approval")
            refunds.save()
            refunds.settings_changed()
            (stuck_form,) = pending(stuck, timeout=KEY_RETRY_SECONDS / 2)
            assert stuck_form.node_id == "manager_approval"
            assert not DifyApp.objects.get(pk=refunds.pk).key_unreadable_now
            body = client.get(f"/api/v1/runs/{stuck.public_id}", **api).json()
            assert body["dify"]["following"] == "ok"
        finally:
            old_keys.stop()


def test_a_run_dify_will_not_show_is_followed_through_its_run_detail(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("refund-approval")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    # The events endpoint refuses another user's run (404), as it refuses WebApp runs.
    Run.objects.filter(pk=run.pk).update(dify_user="someone-else")
    run.refresh_from_db()
    run.request_follow(snapshot=True)

    def gone() -> Run | None:
        run.refresh_from_db()
        return run if run.events_unavailable else None

    run = wait_until(gone, timeout=15)
    assert run.needs_reconcile and not run.follow_wanted
    submit_token = Form.objects.get(pk=form.pk).form_token
    # Answered anyway (Dify does not check the submitter); the run ends without our stream.
    DifyClient.for_app(app).submit_form(
        submit_token, inputs={"decision_note": ""}, action="reject", user="inbox-tests"
    )
    simulator.wait_for_status(run.workflow_run_id, "succeeded")
    assert reconcile_runs()["finished"] == 1
    run.refresh_from_db()
    assert run.status == "succeeded" and not run.follow_wanted
    assert Form.objects.get(pk=form.pk).status == "answered_elsewhere"


@pytest.mark.parametrize(
    ("status", "code"), [(401, "unauthorized"), (403, "forbidden"), (400, "bad_request")]
)
def test_an_events_stream_refused_for_the_app_is_followed_again_once_dify_accepts_it(
    simulator: Any, sim_app: Any, follower: FollowerThread, status: int, code: str
) -> None:
    app = sim_app("content-publish")
    run = start(simulator, app)
    (first,) = pending(run)
    no_stream_left(run)
    # The app's key was rotated in Dify (or the app disabled) and not here yet: the events
    # stream refuses us while the form's token still answers.
    simulator.add_fault(
        "status", "workflow_events", times=None, status=status, code=code, message="Refused."
    )
    submit(first)

    def given_up() -> Run | None:
        run.refresh_from_db()
        return run if run.needs_reconcile and not run.follow_wanted else None

    run = wait_until(given_up, timeout=15)
    # Not a run Dify will never show (that is a 404): one the reconcile tries again.
    assert not run.events_unavailable
    # One refused stream is enough to know: retrying before someone fixes the app is no use.
    assert simulator.request_count("workflow_events") == 2
    app.refresh_from_db()
    # A 401 or 403 refuses the app's key: the app is marked, and the reconcile waits a minute
    # before asking again. A 400 `bad_request` is about the request, not the app.
    assert (app.refusal_status, app.refusal) == (
        (status, f"{status} {code}: Refused.") if status != 400 else (None, "")
    )
    # The key is fixed; the reconcile hands the run back and its next pause reaches the inbox.
    simulator.clear_faults()
    if status != 400:
        with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
            assert reconcile_runs()["held"] == 1
        assert simulator.request_count("workflow_run_detail") == 0
        later = timezone.now() - dt.timedelta(minutes=1)
        DifyApp.objects.filter(pk=app.pk).update(refused_at=later, refusal_checked_at=later)
    with override_settings(INBOX_RUN_RECONCILE_AFTER_SECONDS=3600):
        assert reconcile_runs()["followed"] == 1
    assert DifyApp.objects.get(pk=app.pk).refused_at is None
    wait_until(lambda: Form.objects.get(pk=first.pk).status == "answered_elsewhere")
    (second,) = pending(run)
    assert second.node_id == "legal_check"


def test_a_run_dify_shows_again_is_no_longer_marked_as_refusing_its_events(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("refund-approval")
    run = start(simulator, app)
    pending(run)
    no_stream_left(run)
    # Recorded under the wrong Dify user: the events endpoint answers 404.
    Run.objects.filter(pk=run.pk).update(dify_user="someone-else")
    run.request_follow(snapshot=True)
    wait_until(lambda: Run.objects.get(pk=run.pk).events_unavailable, timeout=15)
    # Put right; the next follow (a delivered decision asks for one) reads the stream again.
    Run.objects.filter(pk=run.pk).update(dify_user="inbox-tests")
    run.refresh_from_db()
    run.request_follow(snapshot=True)
    run = no_stream_left(run)
    assert not run.events_unavailable and not run.needs_reconcile


# A parallel pair whose second form's default comes from the first form's answer, so that a
# decision on the first changes what GET form says of the second.
PAIRED_REVIEW = """
app: {name: paired-review, api_key: app-test-paired, mode: workflow}
flow: [reviews, done]
nodes:
  reviews:
    type: parallel
    title: Reviews
    branches: [[first_review], [second_review]]
  first_review:
    type: human-input
    title: First review
    content: "Notes: {{#$output.notes#}}"
    inputs:
      - {type: paragraph, output_variable_name: notes, default: null}
    actions:
      - {id: done, title: Done, button_style: primary}
  second_review:
    type: human-input
    title: Second review
    content: "Second opinion: {{#$output.opinion#}}"
    inputs:
      - type: paragraph
        output_variable_name: opinion
        default: {type: variable, selector: [first_review, notes]}
    actions:
      - {id: done, title: Done, button_style: primary}
  done: {type: end, title: End, outputs: {}}
"""


def _paired_app(sim: Any) -> DifyApp:
    app = DifyApp.objects.create(
        name="paired-review",
        base_url=sim.base_url,
        api_key=sim.api_key("paired-review"),
        mode="workflow",
    )
    Route.objects.create(app=app, name="default", reminders="")
    return app


def test_the_refetch_a_decision_asks_for_survives_a_first_stream_that_fails(
    tmp_path: Any, follower: FollowerThread
) -> None:
    (tmp_path / "paired.yaml").write_text(PAIRED_REVIEW)
    with running_simulator(tmp_path, **SIMULATOR_TEST_OPTIONS) as sim:
        app = _paired_app(sim)
        run = start(sim, app)
        first, second = pending(run, 2)
        assert first.node_id == "first_review"
        assert "opinion" not in second.definition["resolved_default_values"]
        no_stream_left(run)
        # The first form is decided (as the delivery worker sends it) and Dify moves the run on
        # to its pause on the second form, whose default now holds the first one's notes.
        DifyClient.for_app(app).submit_form(
            first.form_token,
            inputs={"notes": "Checked the contract."},
            action="done",
            user=run.dify_user,
        )
        sim.wait_for(
            lambda: (
                sim.run(run.workflow_run_id)["events"][-2:]
                == ["human_input_required", "workflow_paused"]
                and "human_input_form_filled" in sim.run(run.workflow_run_id)["events"]
            )
        )
        # The first stream opened after the decision is cut before it replays anything.
        sim.add_fault("drop_stream", "workflow_events", times=1, after_events=0)
        run.request_follow(snapshot=True)
        wait_until(lambda: Form.objects.get(pk=first.pk).status == "answered_elsewhere")
        run = no_stream_left(run)
        second.refresh_from_db()
        assert second.definition["resolved_default_values"] == {"opinion": "Checked the contract."}
        assert not run.follow_snapshot


def test_a_decision_refreshes_the_other_parallel_form_though_dify_resumes_after_the_replay(
    tmp_path: Any, follower: FollowerThread
) -> None:
    (tmp_path / "paired.yaml").write_text(PAIRED_REVIEW)
    # Dify's resume task starts a while after the submit: the stream opened for the decision
    # replays the pause (the second form, its default not resolved yet) before the run moves on.
    with running_simulator(tmp_path, **{**SIMULATOR_TEST_OPTIONS, "resume_delay": 0.5}) as sim:
        app = _paired_app(sim)
        run = start(sim, app)
        first, second = pending(run, 2)
        no_stream_left(run)
        DifyClient.for_app(app).submit_form(
            first.form_token, inputs={"notes": "Checked."}, action="done", user=run.dify_user
        )
        run.request_follow(snapshot=True)
        wait_until(lambda: Form.objects.get(pk=first.pk).status == "answered_elsewhere")
        no_stream_left(run)
        second.refresh_from_db()
        assert second.definition["resolved_default_values"] == {"opinion": "Checked."}


def test_a_form_dify_could_not_be_asked_about_at_the_end_is_left_to_the_reconcile(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("refund-approval")
    run = start(simulator, app)
    (form,) = pending(run)
    no_stream_left(run)
    # Answered through the WebApp while no stream of ours is open; the run ends in Dify.
    assert simulator.submit_elsewhere(form.form_id, "approve", channel="webapp")
    simulator.wait_for_status(run.workflow_run_id, "succeeded")
    # The stream opened now carries only `workflow_finished`, and GET form fails meanwhile.
    simulator.add_fault("status", "form_get", times=None, status=503)
    run.request_follow(snapshot=True)
    run = run_status(run, "succeeded")
    # Not declared expired on a guess: it waits for the reconcile, which asks Dify again.
    form.refresh_from_db()
    assert form.status == "pending" and form.checked_at is None
    simulator.clear_faults()
    with override_settings(INBOX_RECONCILE_AFTER_SECONDS=0):
        assert reconcile_pending_forms()["answered_elsewhere"] == 1
    form.refresh_from_db()
    assert form.status == "answered_elsewhere"
    assert not AuditEntry.objects.filter(verb="form_expired").exists()


def test_an_error_event_in_the_stream_is_recorded_on_the_run(
    simulator: Any, sim_app: Any, follower: FollowerThread
) -> None:
    app = sim_app("refund-approval")
    # The follower's first stream breaks off with Dify's in-stream `error` event.
    simulator.add_fault(
        "stream_error",
        "workflow_events",
        times=1,
        after_events=1,
        status=500,
        code="internal_server_error",
        message="The model provider timed out.",
    )
    run = start(simulator, app)
    # The follower reads on (Dify's run detail says the run goes on) and reaches the pause.
    pending(run)
    run = no_stream_left(run)
    assert run.error == "The model provider timed out." and run.status == "paused"
    (stored,) = RunEvent.objects.filter(run=run, event="error")
    assert stored.payload["code"] == "internal_server_error"
    assert any(e.fault == "stream_error" for e in simulator.exchanges("workflow_events"))


def test_after_an_error_event_a_run_dify_finished_is_closed_asking_about_its_forms_from_the_loop(
    simulator: Any, sim_app: Any, follower: FollowerThread, monkeypatch: Any
) -> None:
    run = start(simulator, sim_app("refund-approval"))
    (form,) = pending(run)
    no_stream_left(run)
    # Answered through the WebApp while no stream of ours is open; the run ends in Dify.
    assert simulator.submit_elsewhere(form.form_id, "approve", channel="webapp")
    simulator.wait_for_status(run.workflow_run_id, "succeeded")

    # The open form is asked about on the follower's event loop, not with synchronous calls
    # from a database thread (which would hold it while Dify is slow).
    def no_sync_calls(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("GET form made from a database thread")

    monkeypatch.setattr(capture, "check_forms", no_sync_calls)
    # The next stream breaks off at once with an `error` event: the run detail settles it.
    simulator.add_fault(
        "stream_error",
        "workflow_events",
        times=None,
        after_events=0,
        status=500,
        code="internal_server_error",
        message="The model provider timed out.",
    )
    run.request_follow(snapshot=True)
    run = run_status(run, "succeeded")
    form.refresh_from_db()
    assert form.status == "answered_elsewhere"


def test_a_form_settled_unseen_whose_get_form_fails_is_logged_and_left_pending(
    simulator: Any, sim_app: Any, follower: FollowerThread, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="inbox.follower")
    run = start(simulator, sim_app("vendor-onboarding"))
    security, finance = pending(run, 2)
    no_stream_left(run)
    # Answered through the WebApp while no stream of ours is open: the next pause no longer
    # lists it, and GET form, asked what became of it, fails.
    assert simulator.submit_elsewhere(security.form_id, "pass", channel="webapp")
    simulator.wait_for(
        lambda: (
            simulator.run(run.workflow_run_id)["events"][-1] == "workflow_paused"
            and "human_input_form_filled" in simulator.run(run.workflow_run_id)["events"]
        )
    )
    simulator.add_fault("status", "form_get", times=None, status=503)
    run.request_follow()
    no_stream_left(run)
    assert Form.objects.get(pk=security.pk).status == "pending"
    assert f"follower: form {security.pk}: GET form failed: 503" in caplog.text
    tokens = [f.form_token for f in (security, finance, *run.forms.all())]
    assert not [t for t in tokens if t in caplog.text]


# --- two followers side by side ---


def _follow_process(owner: str) -> subprocess.Popen[bytes]:
    db = connection.settings_dict
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env.update(
        {
            "INBOX_FOLLOWER_POLL_SECONDS": "0.05",
            "INBOX_FOLLOWER_LEASE_SECONDS": "5",
            "INBOX_FOLLOWER_BACKOFF_SECONDS": "0.05",
            "INBOX_FOLLOWER_STALE_PAUSE_SECONDS": "5",
            "INBOX_FOLLOWER_SETTLE_SECONDS": "1",
            "INBOX_FOLLOWER_DB_THREADS": "4",
        }
    )
    return subprocess.Popen(
        [sys.executable, "manage.py", "follow", "--owner", owner],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_two_follower_processes_never_follow_a_run_twice(simulator: Any, sim_app: Any) -> None:
    needs_shared_database()
    simulator.set_options(resume_delay=0.2, record=False)
    app = sim_app("content-publish")
    procs = [_follow_process("follower-a"), _follow_process("follower-b")]
    owners: set[str] = set()
    # The most event streams open at once on any one run, sampled on the simulator's own loop.
    most_streams = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            busiest = simulator.call(
                lambda: max((len(r.subscribers) for r in simulator.sim.runs.values()), default=0)
            )
            most_streams[0] = max(most_streams[0], busiest)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        runs = [start(simulator, app) for _ in range(24)]
        # The start's own stream is closed before start() returns: from here on, every stream
        # of a run is a follower's.
        sampler.start()
        answered: set[int] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            owners.update(Run.objects.exclude(lease_owner="").values_list("lease_owner", flat=True))
            if all(
                r.status == "succeeded" for r in Run.objects.filter(pk__in=[r.pk for r in runs])
            ):
                break
            for form in Form.objects.filter(
                run__in=runs, status="pending", definition_fetched_at__isnull=False
            ).exclude(pk__in=answered):
                submit(form)
                answered.add(form.pk)
            time.sleep(0.02)
        sampling.set()
        sampler.join(timeout=5)
        statuses = list(
            Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)
        )
        assert statuses == ["succeeded"] * len(runs)
        assert Form.objects.filter(run__in=runs).count() == PAUSES * len(runs)
        assert AuditEntry.objects.filter(verb="form_captured").count() == PAUSES * len(runs)
        assert most_streams[0] == 1
        assert owners == {"follower-a", "follower-b"}
    finally:
        sampling.set()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            assert b"Traceback" not in out, out.decode()[-3000:]


def test_a_follower_whose_lease_renewal_hangs_stops_reading_before_its_lease_can_lapse(
    transactional_db: None, simulator: Any, sim_app: Any, monkeypatch: Any, caplog: Any
) -> None:
    from inbox import follower as follower_module

    needs_shared_database()
    # The run's first node takes 10 s: its stream stays open while the follower reads it.
    simulator.set_options(time_scale=100)
    app = sim_app("access-request")
    real_renew = follower_module.renew_leases
    hung_at: list[float] = []

    def hanging_renew(owner: str, pks: list[int], seconds: float) -> set[int]:
        # The database answers the renewal long after the lease could run out.
        hung_at.append(time.monotonic())
        time.sleep(seconds * 3)
        return real_renew(owner, pks, seconds)

    thread = FollowerThread("slow-db", lease_seconds=4.0).start()
    try:
        run = start(simulator, app)

        def streams() -> int:
            return simulator.call(lambda: len(simulator.sim.runs[run.workflow_run_id].subscribers))

        wait_until(lambda: streams() == 1, timeout=15)
        monkeypatch.setattr(follower_module, "renew_leases", hanging_renew)
        wait_until(lambda: bool(hung_at), timeout=10)
        # Stopped before the lease runs out (4 s after the last renewal that came back), not
        # when the hung renewal returns (12 s on): no other follower can take the run and read
        # it while this one still does.
        wait_until(lambda: streams() == 0, timeout=10)
        assert time.monotonic() - hung_at[0] < 6
        assert "was not renewed in time" in caplog.text
    finally:
        monkeypatch.setattr(follower_module, "renew_leases", real_renew)
        thread.stop()


def test_a_database_backlog_longer_than_the_lease_neither_stops_nor_reopens_a_stream(
    transactional_db: None, monkeypatch: Any, caplog: Any
) -> None:
    """Leases are renewed on a thread of their own: a renewal queued behind the batches in the
    database threads (a follower that starts with many runs to replay, on a busy database)
    came back after the lease could run out, so every stream was stopped, its run taken again
    and its stream opened a second time."""
    from tests.delivery.malformed import Case, definition
    from tests.delivery.scripted import Reply, ScriptedDify

    needs_shared_database()
    lease = 3.0
    dify = ScriptedDify()
    app = DifyApp.objects.create(name="backlog", base_url=dify.base_url, api_key="k-123")
    run_id, form_id, token = "R-backlog", "F-backlog", "tok-backlog"
    dify.on(
        "GET", f"/workflow/{run_id}/events", Reply(raw=Case("plain").stream(run_id, form_id, token))
    )
    dify.on("GET", f"/form/human_input/{token}", Reply(body=definition(form_id, token)))
    run = Run.objects.create(
        app=app,
        workflow_run_id=run_id,
        dify_user="u-backlog",
        status=Run.Status.RUNNING,
        follow_wanted=True,
    )
    real_apply = capture.apply_events
    busy: list[float] = []

    def slow_apply(*args: Any, **kwargs: Any) -> capture.Applied:
        # The one database thread is busy for far longer than the lease (the batches of the
        # other runs queued before this one's).
        if not busy:
            busy.append(time.monotonic())
            time.sleep(lease * 2.5)
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(capture, "apply_events", slow_apply)
    caplog.set_level(logging.INFO)
    thread = FollowerThread("backlog", lease_seconds=lease, db_threads=1).start()
    try:
        no_stream_left(run, timeout=30)
    finally:
        thread.stop()
        dify.close()
    assert busy
    assert "was not renewed in time" not in caplog.text
    assert len(dify.requests("GET", f"/workflow/{run_id}/events")) == 1
    run.refresh_from_db()
    assert run.status == "paused"
    assert list(run.forms.values_list("form_id", "status")) == [(form_id, "pending")]
