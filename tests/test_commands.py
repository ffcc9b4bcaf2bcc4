from __future__ import annotations

import io
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
        "app_created",
        "app_changed",
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
    # Two refund runs; none of document-intake, whose start needs a file someone chooses.
    assert runs.count() == len(names) + 1 - 1
    assert not runs.filter(app__name="document-intake").exists()
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


@pytest.mark.django_db
def test_prune_records_lets_go_of_what_ended_long_ago_and_never_what_is_being_sent(
    dify_app: DifyApp, settings: Any
) -> None:
    import datetime as dt

    from django.utils import timezone

    from inbox import tasks
    from inbox.models import AuditEntry, Decision, Form, Run, RunEvent

    long_ago = timezone.now() - dt.timedelta(days=40)

    def run(name: str, status: str, *, ended: dt.datetime, decision: str = "") -> Run:
        made = Run.objects.create(
            app=dify_app, dify_user="u", workflow_run_id=name, status=status, finished_at=ended
        )
        form = Form.objects.create(
            run=made, form_id=f"f-{name}", form_token="t", status="submitted"
        )
        RunEvent.objects.create(run=made, event="workflow_started")
        if decision:
            Decision.objects.create(form=form, action_id="ok", inputs={}, status=decision)
        AuditEntry.record("run_ingested", made)
        return made

    old = run("old", "succeeded", ended=long_ago, decision="delivered")
    sending = run("sending", "succeeded", ended=long_ago, decision="queued")
    running = run("running", "running", ended=long_ago)
    recent = run("recent", "failed", ended=timezone.now() - dt.timedelta(days=2))
    entries = AuditEntry.objects.update(created_at=long_ago)
    out = io.StringIO()
    # Nothing asked, nothing set: everything is kept.
    call_command("prune_records", stdout=out)
    assert "Nothing to prune" in out.getvalue() and Run.objects.count() == 4
    call_command("prune_records", "--runs-older-than", "30", "--dry-run", stdout=out)
    assert (
        "Would delete 1 run(s) with 1 form(s), 1 decision(s) and 1 event(s), 0 message file(s)"
        in out.getvalue()
    )
    assert Run.objects.count() == 4
    call_command("prune_records", "--runs-older-than", "30", "--audit-older-than", "30", stdout=out)
    assert (
        f"Deleted 1 run(s) with 1 form(s), 1 decision(s) and 1 event(s), 0 message file(s); "
        f"{entries} audit entries and 0 admin log entries." in out.getvalue()
    )
    # What is left of the trail is the prune's own record of what it let go.
    assert list(AuditEntry.objects.values_list("verb", flat=True)) == ["records_pruned"]
    # Gone with everything of it; a run whose decision is still being sent, one still going and
    # a recent one stay.
    assert set(Run.objects.values_list("pk", flat=True)) == {sending.pk, running.pk, recent.pk}
    assert not Form.objects.filter(run_id=old.pk).exists()
    assert not RunEvent.objects.filter(run_id=old.pk).exists()
    # The daily task does the same from the settings, and nothing when they are 0.
    assert tasks.prune_records() == {}
    Decision.objects.update(status="delivered")
    settings.INBOX_RETENTION_DAYS = 30
    assert tasks.prune_records()["runs"] == 1
    assert set(Run.objects.values_list("pk", flat=True)) == {running.pk, recent.pk}


@pytest.mark.django_db
def test_prune_records_lets_go_of_message_files_with_their_runs_or_unused_and_admin_log(
    dify_app: DifyApp,
) -> None:
    import datetime as dt

    from django.contrib.admin.models import DELETION, LogEntry
    from django.contrib.contenttypes.models import ContentType
    from django.utils import timezone

    from inbox.models import MessageFile, MessageFileTally

    long_ago = timezone.now() - dt.timedelta(days=40)
    old = Run.objects.create(
        app=dify_app, dify_user="u", workflow_run_id="old", status="succeeded", finished_at=long_ago
    )
    kept = Run.objects.create(app=dify_app, dify_user="u", workflow_run_id="kept", status="running")

    def upload(name: str, *runs: Run, age_days: float = 0) -> MessageFile:
        made = MessageFile.objects.create(
            app=dify_app,
            dify_user="u",
            upload_file_id=f"dify-{name}",
            name=name,
            size=10,
            category="document",
        )
        made.runs.set(runs)
        MessageFile.objects.filter(pk=made.pk).update(
            created_at=timezone.now() - dt.timedelta(days=age_days)
        )
        return made

    contract = upload("contract_Hans_Kundenmann.pdf", old, age_days=40)
    shared = upload("chat_shared.pdf", old, kept, age_days=40)
    abandoned = upload("passport_abandoned.jpg", age_days=2)
    fresh = upload("passport_fresh.jpg")
    today = timezone.localdate()
    MessageFileTally.objects.create(who="u:1", day=today - dt.timedelta(days=3), files=1)
    MessageFileTally.objects.create(who="u:2", day=today, files=1)
    carol = User.objects.create(username="carol")
    for when in (long_ago, timezone.now()):
        entry = LogEntry.objects.create(
            user=carol,
            content_type=ContentType.objects.get_for_model(User),
            object_id=str(carol.pk),
            object_repr="carol",
            action_flag=DELETION,
        )
        LogEntry.objects.filter(pk=entry.pk).update(action_time=when)
    out = io.StringIO()
    call_command(
        "prune_records",
        "--runs-older-than",
        "30",
        "--audit-older-than",
        "30",
        "--dry-run",
        stdout=out,
    )
    assert "1 event(s)" not in out.getvalue()
    assert "2 message file(s); 0 audit entries and 1 admin log entry." in out.getvalue()
    assert MessageFile.objects.count() == 4 and LogEntry.objects.count() == 2
    call_command("prune_records", "--runs-older-than", "30", "--audit-older-than", "30", stdout=out)
    assert "Deleted 1 run(s) with 0 form(s), 0 decision(s) and 0 event(s), 2 message file(s)" in (
        out.getvalue()
    )
    # The pruned run's own file and the file no run used for a day are gone (so the upload
    # cannot start another run); one a run kept still uses, and one just uploaded, stay.
    assert set(MessageFile.objects.values_list("pk", flat=True)) == {shared.pk, fresh.pk}
    assert not MessageFile.objects.filter(pk__in=[contract.pk, abandoned.pk]).exists()
    assert list(MessageFile.objects.get(pk=shared.pk).runs.all()) == [kept]
    assert list(MessageFileTally.objects.values_list("who", flat=True)) == ["u:2"]
    assert LogEntry.objects.count() == 1
    noted = AuditEntry.objects.get(verb="records_pruned").details
    assert (noted["message_files"], noted["admin_log_entries"]) == (2, 1)


def test_rotation_writes_nothing_back_over_what_changed_while_it_ran(
    db: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A form closes (the expiry sweep, as beat runs it) and an API key is entered again
    between the rotation's read of a value and its write: neither is overwritten, so the closed
    form holds no token again (conftest checks every test for that too)."""
    import datetime as dt

    from cryptography.fernet import Fernet
    from django.test import override_settings
    from django.utils import timezone

    from inbox import crypto
    from inbox.tasks import _sweep_expired_forms

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(INBOX_ENCRYPTION_KEYS=[old]):
        app = DifyApp.objects.create(name="a", base_url="http://x/v1", api_key="key-under-old")
        other = DifyApp.objects.create(name="b", base_url="http://x/v1", api_key="other-key")
        run = Run.objects.create(app=app, workflow_run_id="R1", dify_user="u")
        past = timezone.now() - dt.timedelta(minutes=1)
        closing = Form.objects.create(
            run=run, form_id="F1", form_token="t-closing", expiration_time=past
        )
        staying = Form.objects.create(run=run, form_id="F2", form_token="t-staying")
    real = crypto.decrypt
    meanwhile = {
        # Entered again in the admin by a process already restarted with the new key.
        "key-under-old": lambda: DifyApp.objects.filter(pk=app.pk).update(api_key="entered"),
        # Expired by the sweep.
        "t-closing": lambda: _sweep_expired_forms(100),
    }

    def decrypt(stored: str) -> str:
        plain = real(stored)
        if change := meanwhile.pop(plain, None):
            change()
        return plain

    monkeypatch.setattr(crypto, "decrypt", decrypt)
    with override_settings(INBOX_ENCRYPTION_KEYS=[new, old]):
        call_command("rotate_encryption_keys")
        out = capsys.readouterr().out
    assert not meanwhile
    assert "DifyApp.api_key: 1 re-encrypted, 1 changed meanwhile" in out
    assert "Form.form_token: 1 re-encrypted, 1 changed meanwhile" in out
    closing.refresh_from_db()
    assert (closing.status, closing.form_token) == (Form.Status.EXPIRED, "")
    with override_settings(INBOX_ENCRYPTION_KEYS=[new]):
        assert DifyApp.objects.get(pk=app.pk).api_key == "entered"
        assert DifyApp.objects.get(pk=other.pk).api_key == "other-key"
        assert Form.objects.get(pk=staying.pk).form_token == "t-staying"


def test_add_dify_app_records_the_admin_s_verbs_and_values_and_keeps_an_app_switched_off(
    db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    def fingerprint(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:8]

    _add_hr("--api-key", "app-first-key-1111")
    created = AuditEntry.objects.get(verb="app_created")
    assert created.actor_label == "add_dify_app"
    assert created.details["values"] == {
        "name": {"after": "hr"},
        "base_url": {"after": "http://dify.local/v1"},
        "mode": {"after": "workflow"},
        "is_active": {"after": True},
        "api_key": {"after": fingerprint("app-first-key-1111")},
    }
    # An administrator switches it off; a key rotation from the command line leaves it off.
    app = DifyApp.objects.get(name="hr")
    app.is_active = False
    app.save()
    capsys.readouterr()
    _add_hr("--api-key", "app-second-key-2222", "--base-url", "http://other.local/v1")
    app.refresh_from_db()
    assert not app.is_active and app.base_url == "http://other.local/v1"
    assert "The app stays inactive, as it was" in capsys.readouterr().out
    changed = AuditEntry.objects.get(verb="app_changed")
    assert changed.details == {
        "fields": ["api_key", "base_url"],
        "values": {
            "base_url": {"before": "http://dify.local/v1", "after": "http://other.local/v1"},
            "api_key": {
                "before": fingerprint("app-first-key-1111"),
                "after": fingerprint("app-second-key-2222"),
            },
        },
    }
    # Switched on only when asked, and recorded so.
    _add_hr("--api-key", "app-second-key-2222", "--base-url", "http://other.local/v1", "--activate")
    app.refresh_from_db()
    assert app.is_active
    last = AuditEntry.objects.filter(verb="app_changed").order_by("-id")[0]
    assert last.details == {
        "fields": ["is_active"],
        "values": {"is_active": {"before": False, "after": True}},
    }
    # Nothing changed: nothing recorded, and nothing saved (the app's `updated_at` dates its
    # settings, which the reconcile counts a run's 404s from).
    saved = DifyApp.objects.get(pk=app.pk).updated_at
    _add_hr("--api-key", "app-second-key-2222", "--base-url", "http://other.local/v1")
    assert AuditEntry.objects.filter(verb="app_changed").count() == 2
    assert DifyApp.objects.get(pk=app.pk).updated_at == saved
    assert "Unchanged: Dify app 'hr'" in capsys.readouterr().out
    with pytest.raises(CommandError):
        _add_hr("--api-key", "k", "--activate", "--inactive")


# --- An existing app given another server, a look-alike name, another app's key ---


def _open_run_and_form(app: DifyApp) -> tuple[Run, Form]:
    from tests.reach.factories import make_form, make_run

    run = make_run(app)
    return run, make_form(app, run=run)


def test_add_dify_app_refuses_to_move_an_app_with_open_runs_to_another_server_unless_asked(
    db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _add_hr("--api-key", "app-production-1111")
    app = DifyApp.objects.get(name="hr")
    _open_run_and_form(app)
    capsys.readouterr()
    # Staging's app under the same name: its key and URL would take the production app, and
    # the production forms' tokens would go to staging. Refused, with what it would move.
    with pytest.raises(CommandError) as refused:
        call_command(
            "add_dify_app", "hr", "--base-url", "http://staging.local:8713/v1", "--api-key", "s-1"
        )
    said = str(refused.value)
    assert "'hr' moves from http://dify.local to http://staging.local:8713" in said
    assert "base URL http://dify.local/v1 -> http://staging.local:8713/v1" in said
    assert "1 open run(s) and 1 pending form(s)" in said and "--move" in said
    assert "s-1" not in said
    app.refresh_from_db()
    assert (app.base_url, app.api_key) == ("http://dify.local/v1", "app-production-1111")
    assert not AuditEntry.objects.filter(verb="app_changed").exists()

    # Another path on the same server is no move.
    call_command(
        "add_dify_app", "hr", "--base-url", "http://dify.local/api/v1", "--api-key", "app-p-2"
    )
    assert "Base URL: http://dify.local/v1 -> http://dify.local/api/v1 (the same server)" in (
        capsys.readouterr().out
    )
    # Asked for: moved, said, and recorded as any change is.
    call_command(
        "add_dify_app",
        "hr",
        "--base-url",
        "http://staging.local:8713/v1",
        "--api-key",
        "app-staging-3333",
        "--move",
    )
    out = capsys.readouterr().out
    assert "'hr' moves from http://dify.local to http://staging.local:8713" in out
    assert "their forms' tokens and decisions are sent to the new server from now on" in out
    app.refresh_from_db()
    assert app.base_url == "http://staging.local:8713/v1"
    last = AuditEntry.objects.filter(verb="app_changed").order_by("-id")[0]
    assert last.actor_label == "add_dify_app"
    assert last.details["values"]["base_url"] == {
        "before": "http://dify.local/api/v1",
        "after": "http://staging.local:8713/v1",
    }


def test_add_dify_app_moves_an_app_with_nothing_open_and_says_so(
    db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _add_hr("--api-key", "app-production-1111")
    run, form = _open_run_and_form(DifyApp.objects.get(name="hr"))
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTED, form_token="")
    capsys.readouterr()
    call_command("add_dify_app", "hr", "--base-url", "https://other.local/v1", "--api-key", "k-2")
    out = capsys.readouterr().out
    assert "'hr' moves from http://dify.local to https://other.local" in out
    assert "0 open run(s) and 0 pending form(s)." in out
    assert DifyApp.objects.get(name="hr").base_url == "https://other.local/v1"


def test_add_dify_app_strips_the_name_and_refuses_an_empty_or_look_alike_one(
    db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command(
        "add_dify_app", "  hr \t", "--base-url", "http://dify.local/v1", "--api-key", "k-1"
    )
    assert "Created Dify app 'hr'" in capsys.readouterr().out
    assert list(DifyApp.objects.values_list("name", flat=True)) == ["hr"]
    # Given with spaces again, it is the same app.
    call_command("add_dify_app", "hr ", "--base-url", "http://dify.local/v1", "--api-key", "k-2")
    assert DifyApp.objects.get().api_key == "k-2"
    with pytest.raises(CommandError, match="The app's name must not be empty"):
        call_command("add_dify_app", "   ", "--base-url", "http://dify.local/v1", "--api-key", "k")
    with pytest.raises(CommandError, match="An app named 'hr' exists already: 'HR' differs"):
        call_command("add_dify_app", "HR", "--base-url", "http://dify.local/v1", "--api-key", "k")
    # One stored with a space before the command stripped names is told apart too.
    DifyApp.objects.create(name="payroll ", base_url="http://dify.local/v1", api_key="k")
    with pytest.raises(CommandError, match="An app named 'payroll ' exists already"):
        call_command(
            "add_dify_app", "Payroll", "--base-url", "http://dify.local/v1", "--api-key", "k"
        )
    assert DifyApp.objects.count() == 2


def test_add_dify_app_warns_as_the_admin_does_of_another_app_s_name_or_key(
    db: None, simulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key = simulator.api_key("refund-approval")
    call_command(
        "add_dify_app", "refund-approval", "--base-url", simulator.base_url, "--api-key", key
    )
    first = capsys.readouterr()
    assert "Created Dify app 'refund-approval'" in first.out and not first.err
    # The same Dify app again under another name: /info names it, and the server and key are
    # the first app's. Warnings only; never the key.
    call_command("add_dify_app", "refunds-dup", "--base-url", simulator.base_url, "--api-key", key)
    second = capsys.readouterr()
    assert "Created Dify app 'refunds-dup'" in second.out
    assert (
        "Warning: refunds-dup: Dify calls the app “refund-approval”, not “refunds-dup”"
        in second.err
    )
    assert "“refund-approval” already uses this server" in second.err
    assert key not in second.out + second.err
    # The same key on another server (a staging Dify sharing it) is another app.
    elsewhere = simulator.base_url.replace("127.0.0.1", "localhost")
    assert elsewhere != simulator.base_url
    call_command("add_dify_app", "refunds-dup", "--base-url", elsewhere, "--api-key", key, "--move")
    assert "already uses this server" not in capsys.readouterr().err


def test_add_dify_app_tests_the_connection_as_the_admin_does(
    db: None, simulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    base_url = simulator.base_url.rstrip("/")
    assert base_url.endswith("/v1")
    key = simulator.api_key("refund-approval")

    def add(name: str, url: str, api_key: str) -> tuple[str, str]:
        call_command("add_dify_app", name, "--base-url", url, "--api-key", api_key)
        said = capsys.readouterr()
        assert f"Created Dify app '{name}'" in said.out  # created anyway, as before
        assert api_key not in said.out + said.err
        return said.out, said.err

    out, err = add("refund-approval", base_url, key)
    assert "Connection test: Dify answered /info and /parameters." in out
    assert "connection test failed" not in err
    # A wrong key: Dify's 401, said now rather than at the first run.
    out, err = add("x3", base_url, "app-wrong-key-0000")
    assert "Warning: the connection test failed: Dify refused the key (401" in err
    assert "Connection test:" not in out
    # Recorded on the app as the admin's test records it: its list shows the refusal.
    assert DifyApp.objects.get(name="x3").refused_at is not None
    # The base URL without /v1.
    out, err = add("x4", base_url.removesuffix("/v1"), key)
    assert "Dify answered 404" in err and f"does the base URL end in /v1 ({base_url})?" in err
    # Nothing listens there.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out, err = add("x2", f"http://127.0.0.1:{port}/v1", key)
    assert f"could not reach Dify at http://127.0.0.1:{port}/v1" in err
    assert DifyApp.objects.get(name="x2").test_failed_at is not None
    assert DifyApp.objects.get(name="refund-approval").refused_at is None


def test_prune_records_names_where_its_zero_days_came_from(db: None) -> None:
    out = io.StringIO()
    call_command("prune_records", stdout=out)
    assert out.getvalue().strip() == (
        "Nothing to prune: INBOX_RETENTION_DAYS and INBOX_AUDIT_RETENTION_DAYS are 0 "
        "(keep everything)."
    )
    # The option given as 0 (keep) is not "no --runs-older-than".
    out = io.StringIO()
    call_command("prune_records", "--runs-older-than", "0", "--dry-run", stdout=out)
    assert out.getvalue().strip() == (
        "Nothing to prune: --runs-older-than and INBOX_AUDIT_RETENTION_DAYS are 0 "
        "(keep everything)."
    )


def test_add_dify_app_warns_as_the_admin_does_when_dify_names_another_kind_of_app(
    db: None, simulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Dify's /info says "chat" (a chatbot, no workflow behind it): no app to use here.
    key = simulator.api_key("faq-bot")
    call_command(
        "add_dify_app",
        "faq-bot",
        "--base-url",
        simulator.base_url,
        "--mode",
        "chatflow",
        stdin=io.StringIO(key + "\n"),
    )
    said = capsys.readouterr()
    assert "Created Dify app 'faq-bot'" in said.out
    assert (
        "Warning: faq-bot: Dify says this is a “chat” app. Such apps have no Human Input node, "
        "so they cannot be used here: only Workflow and Chatflow apps can." in said.err
    )
    assert key not in said.out + said.err
    # A workflow app set up as one: no warning; set up as a chatflow (its mode changed
    # alone), the warning again.
    key = simulator.api_key("refund-approval")
    call_command(
        "add_dify_app", "refund-approval", "--base-url", simulator.base_url, "--api-key", key
    )
    assert "names its mode" not in capsys.readouterr().err
    call_command(
        "add_dify_app",
        "refund-approval",
        "--base-url",
        simulator.base_url,
        "--api-key",
        key,
        "--mode",
        "chatflow",
    )
    said = capsys.readouterr()
    assert "Dify says this app is a Workflow, not a Chatflow: set Mode to match." in said.err


def test_create_api_token_prints_a_token_for_an_active_account_and_refuses_a_deactivated_one(
    db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from django.utils import translation

    from inbox.models import ApiToken

    User.objects.create_user("carol")
    call_command("create_api_token", "carol", "--name", "ci")
    raw = capsys.readouterr().out.strip()
    assert raw.startswith("inbx_") and ApiToken.authenticate_token(raw) is not None

    User.objects.create_user("dave", is_active=False)
    with pytest.raises(CommandError) as refused:
        call_command("create_api_token", "dave")
    assert str(refused.value) == (
        "The account 'dave' is deactivated: the API refuses its tokens, so none was issued. "
        "Activate it first (admin: Users, Active)."
    )
    assert capsys.readouterr().out == ""
    assert not ApiToken.objects.filter(user__username="dave").exists()
    assert AuditEntry.objects.filter(verb="api_token_issued").count() == 1
    # In Chinese for an operator whose inbox speaks it (LANGUAGE_CODE).
    with translation.override("zh-hans"), pytest.raises(CommandError) as chinese:
        call_command("create_api_token", "dave")
    assert "dave" in str(chinese.value) and "deactivated" not in str(chinese.value)
    with translation.override("zh-hans"), pytest.raises(CommandError) as nobody:
        call_command("create_api_token", "erin")
    assert "erin" in str(nobody.value) and "No user" not in str(nobody.value)
