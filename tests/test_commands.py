from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from inbox.dify.errors import BadRequest, Forbidden, Unauthorized
from inbox.models import AuditEntry, DifyApp, Form, Route, Run

pytestmark = pytest.mark.smoke


def test_add_dify_app_creates_then_updates(db: None, capsys: pytest.CaptureFixture[str]) -> None:
    call_command(
        "add_dify_app",
        "hr",
        "--base-url",
        "http://dify.local/v1/",
        "--api-key",
        "app-1111222233334444",
    )
    out = capsys.readouterr().out
    assert "Created Dify app 'hr' (workflow, key app-…4444)" in out
    assert "app-1111222233334444" not in out
    call_command(
        "add_dify_app",
        "hr",
        "--base-url",
        "http://dify.local/v1",
        "--api-key",
        "app-new-key-99998888",
        "--mode",
        "chatflow",
    )
    app = DifyApp.objects.get(name="hr")
    assert (app.mode, app.api_key, app.base_url) == (
        "chatflow",
        "app-new-key-99998888",
        "http://dify.local/v1",
    )
    assert list(AuditEntry.objects.values_list("verb", flat=True).order_by("id")) == [
        "created",
        "updated",
    ]


def test_add_dify_app_takes_the_key_from_the_environment_or_standard_input(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    # Not on the command line, where every user of the machine sees it.
    monkeypatch.setenv("DIFY_API_KEY", "app-from-the-environment-1")
    _add_hr()
    assert DifyApp.objects.get(name="hr").api_key == "app-from-the-environment-1"
    monkeypatch.delenv("DIFY_API_KEY")
    _add_hr(stdin=io.StringIO("app-from-standard-input-2\n"))
    assert DifyApp.objects.get(name="hr").api_key == "app-from-standard-input-2"
    with pytest.raises(CommandError, match="The API key must not be empty"):
        _add_hr(stdin=io.StringIO("\n"))


def _add_hr(*args: str, **options: Any) -> None:
    call_command("add_dify_app", "hr", "--base-url", "http://dify.local/v1", *args, **options)


def test_a_new_key_from_add_dify_app_clears_a_refusal_and_hands_back_the_runs(db: None) -> None:
    _add_hr("--api-key", "app-old-key-11112222")
    app = DifyApp.objects.get(name="hr")
    assert app.note_refused(Unauthorized(401, "unauthorized", "Access token is invalid"), "start")
    run = Run.objects.create(
        app=app,
        workflow_run_id="R-1",
        dify_user="inbox-alice",
        status=Run.Status.PAUSED,
        follow_wanted=False,
        needs_reconcile=True,
    )
    # The same settings again (its inactive flag aside): nothing Dify refused is worth asking
    # again.
    _add_hr("--api-key", "app-old-key-11112222", "--inactive")
    app.refresh_from_db()
    assert app.refused_at is not None
    assert not Run.objects.get(pk=run.pk).follow_wanted

    _add_hr("--api-key", "app-new-key-33334444", "--mode", "chatflow")
    app.refresh_from_db()
    assert app.refused_at is None and app.refusal == ""
    entry = AuditEntry.objects.get(verb="app_accepted")
    assert (entry.actor, entry.actor_label, entry.details) == (
        None,
        "add_dify_app",
        {"source": "new settings"},
    )
    assert Run.objects.get(pk=run.pk).follow_wanted


def test_a_new_url_from_add_dify_app_clears_a_refusal(db: None) -> None:
    _add_hr("--api-key", "app-key-11112222")
    app = DifyApp.objects.get(name="hr")
    assert app.note_refused(Forbidden(403, "forbidden", "Workspace archived."), "follower")
    call_command(
        "add_dify_app", "hr", "--base-url", "https://dify.example/v1", "--api-key", app.api_key
    )
    app.refresh_from_db()
    assert app.refused_at is None


def test_another_kind_of_app_from_add_dify_app_clears_a_refusal_of_its_kind(db: None) -> None:
    _add_hr("--api-key", "app-key-11112222")
    app = DifyApp.objects.get(name="hr")
    wrong_kind = BadRequest(400, "not_workflow_app", "Please check if your app mode matches.")
    assert app.note_refused(wrong_kind, "start")
    _add_hr("--api-key", "app-key-11112222", "--mode", "chatflow")
    app.refresh_from_db()
    assert app.mode == "chatflow" and app.refused_at is None


def test_add_dify_app_rejects_a_bad_url(db: None) -> None:
    with pytest.raises(CommandError, match="--base-url is not an http"):
        call_command("add_dify_app", "hr", "--base-url", "dify.local", "--api-key", "k")


def test_seed_demo_registers_the_simulator_apps_and_starts_runs_once(
    db: None,
    simulator: Any,
    settings: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.DEBUG = True
    monkeypatch.setenv("INBOX_SIMULATOR_URL", simulator.base_url)
    call_command("seed_demo")
    out = capsys.readouterr().out
    # Every simulator app with a workflow, none without (the plain chat app).
    names = set(DifyApp.objects.values_list("name", flat=True))
    assert names == {n for n, spec in simulator.apps.items() if spec.mode != "chat"}
    assert DifyApp.objects.get(name="support-chat").mode == "chatflow"
    runs = Run.objects.all()
    assert runs.count() == len(names) + 1  # two refund runs
    assert f"{runs.count()} demo runs started" in out
    assert all(r.workflow_run_id and r.dify_user == "inbox-alice" for r in runs)
    # They really run in the simulator, under the run's user.
    for run in runs:
        assert simulator.run(run.workflow_run_id)["user"] == "inbox-alice"
    # Every app is routed to the reviewers before its forms arrive.
    assert Route.objects.filter(app__in=DifyApp.objects.all()).count() == len(names)
    # Seeding again (every `make run`) starts nothing more.
    call_command("seed_demo")
    assert Run.objects.count() == runs.count()
    # The simulator restarted, knowing nothing: the earlier demo's open runs end, and fresh
    # ones start.
    first = set(Run.objects.values_list("pk", flat=True))
    simulator.reset()
    capsys.readouterr()
    call_command("seed_demo")
    out = capsys.readouterr().out
    assert "run(s) of an earlier demo ended" in out
    assert set(Run.objects.filter(pk__in=first).values_list("status", flat=True)) <= {
        "failed",
        "succeeded",
    }
    assert not Form.objects.filter(run__pk__in=first, status=Form.Status.PENDING).exists()
    assert Run.objects.exclude(pk__in=first).count() == len(first)


def test_seed_demo_without_a_simulator_still_seeds_the_logins(
    db: None, settings: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.DEBUG = True
    monkeypatch.setenv("INBOX_SIMULATOR_URL", "http://127.0.0.1:9/v1")
    call_command("seed_demo")
    assert "no simulator at http://127.0.0.1:9" in capsys.readouterr().err
    assert DifyApp.objects.count() == 0
    assert User.objects.filter(username__in=["admin", "alice", "bob"]).count() == 3
