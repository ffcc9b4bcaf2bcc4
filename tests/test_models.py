from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from inbox.dify.errors import BadRequest, Unauthorized
from inbox.models import AuditEntry, Decision, DifyApp, Form, Run, mask_secret

pytestmark = pytest.mark.smoke


def test_mask_secret_shows_only_the_ends() -> None:
    assert mask_secret("app-abcdefghijklmnop") == "app-…mnop"
    assert mask_secret("short") == "••••••••"
    # Eight of eleven characters would be most of the key.
    assert mask_secret("app-sim-xss") == "••••••••"
    assert mask_secret("app-abcdefghijklmno") == "••••••••"
    assert mask_secret("") == ""


def test_base_url_loses_its_trailing_slash(db: None) -> None:
    app = DifyApp.objects.create(name="x", base_url="http://dify.local/v1/", api_key="k")
    assert app.base_url == "http://dify.local/v1"


def test_workflow_run_id_is_unique_per_app_but_blank_is_allowed_twice(dify_app: DifyApp) -> None:
    Run.objects.create(app=dify_app, dify_user="u")
    Run.objects.create(app=dify_app, dify_user="u")
    Run.objects.create(app=dify_app, dify_user="u", workflow_run_id="R1")
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(app=dify_app, dify_user="u", workflow_run_id="R1")


def test_only_one_active_decision_per_form(dify_app: DifyApp) -> None:
    run = Run.objects.create(app=dify_app, dify_user="u", workflow_run_id="R1")
    form = Form.objects.create(run=run, form_id="F1", node_id="n1", form_token="tok")
    Decision.objects.create(form=form, action_id="approve", status=Decision.Status.REJECTED)
    Decision.objects.create(form=form, action_id="approve")
    with pytest.raises(IntegrityError), transaction.atomic():
        Decision.objects.create(form=form, action_id="reject")


def test_for_user_hides_everything_from_anonymous_users(dify_app: DifyApp) -> None:
    from django.contrib.auth.models import AnonymousUser

    run = Run.objects.create(app=dify_app, dify_user="u", workflow_run_id="R1")
    Form.objects.create(run=run, form_id="F1", node_id="n1")
    assert Form.objects.for_user(AnonymousUser()).count() == 0
    assert Form.objects.for_user(None).count() == 0


def test_audit_record_names_actor_and_object(dify_app: DifyApp, reviewer: object) -> None:
    entry = AuditEntry.record("updated", dify_app, actor=reviewer, field="base_url")
    assert (entry.actor_label, entry.object_type, entry.object_id) == (
        "alice",
        "difyapp",
        str(dify_app.pk),
    )
    assert entry.details == {"field": "base_url"}
    assert AuditEntry.record("expired", dify_app).actor_label == "system"


def _revoked() -> Unauthorized:
    return Unauthorized(401, "unauthorized", "Access token is invalid")


def test_a_refused_app_is_asked_again_after_1_2_4_minutes_then_every_30(
    dify_app: DifyApp,
) -> None:
    assert dify_app.next_refusal_probe() is None
    assert dify_app.note_refused(_revoked(), "follower")
    start = dify_app.refused_at
    assert start is not None
    waits = []
    for _ in range(8):
        due = dify_app.next_refusal_probe()
        assert due is not None
        waits.append(round((due - start).total_seconds() / 60))
        dify_app.note_probed(due)
    assert waits == [1, 2, 4, 8, 16, 32, 62, 92]
    stored = DifyApp.objects.get(pk=dify_app.pk)
    assert stored.next_refusal_probe() == dify_app.next_refusal_probe()


def test_a_refusal_is_written_once_and_never_holds_the_key(dify_app: DifyApp) -> None:
    leaky = Unauthorized(401, "unauthorized", f"Bad key {dify_app.api_key}")
    assert dify_app.note_refused(leaky, "delivery")
    assert not DifyApp.objects.get(pk=dify_app.pk).note_refused(leaky, "delivery")
    stored = DifyApp.objects.get(pk=dify_app.pk)
    assert stored.refusal == "401 unauthorized: Bad key ***"
    assert AuditEntry.objects.filter(verb="app_refused").count() == 1
    assert stored.note_accepted("delivery")
    assert not stored.note_accepted("delivery")
    assert DifyApp.objects.get(pk=dify_app.pk).refused_at is None
    assert AuditEntry.objects.filter(verb="app_accepted").count() == 1


def test_an_accepted_call_clears_only_the_refusals_it_can_judge(dify_app: DifyApp) -> None:
    other_kind = BadRequest(400, "not_chat_app", "Please check if your app mode matches.")
    unpublished = BadRequest(400, "app_unavailable", "App unavailable.")
    assert dify_app.note_refused(other_kind, "start")
    # A stream or a submit says nothing of the app's kind, /parameters nothing either.
    assert not dify_app.note_accepted("follower")
    assert not dify_app.note_accepted("connection test", published=True)
    assert dify_app.note_accepted("connection test", kind=True, published=True)
    assert dify_app.note_refused(unpublished, "start")
    assert not dify_app.note_accepted("reconcile", kind=True)
    assert dify_app.note_accepted("reconcile", published=True)
    # Loaded while the key was refused; refused since for the app's kind: that stays.
    loaded = DifyApp.objects.get(pk=dify_app.pk)
    loaded.note_refused(_revoked(), "follower")
    DifyApp.objects.get(pk=dify_app.pk).note_refused(other_kind, "start")
    assert not loaded.note_accepted("follower")
    assert DifyApp.objects.get(pk=dify_app.pk).refusal_code == "not_chat_app"


def test_saving_an_app_leaves_a_refusal_recorded_meanwhile_alone(dify_app: DifyApp) -> None:
    editing = DifyApp.objects.get(pk=dify_app.pk)
    DifyApp.objects.get(pk=dify_app.pk).note_refused(_revoked(), "follower")
    editing.name = "refunds-eu"
    editing.save()
    stored = DifyApp.objects.get(pk=dify_app.pk)
    assert stored.name == "refunds-eu"
    assert stored.refusal == "401 unauthorized: Access token is invalid"


def test_a_refusal_of_the_settings_before_a_new_key_is_old_news(dify_app: DifyApp) -> None:
    stale = DifyApp.objects.get(pk=dify_app.pk)
    fixed = DifyApp.objects.get(pk=dify_app.pk)
    fixed.api_key = "app-new-key-987654"
    fixed.save()
    # A call made with the old key comes back refused after the new one was saved.
    assert not stale.note_refused(_revoked(), "follower")
    assert DifyApp.objects.get(pk=dify_app.pk).refused_at is None


def test_a_task_not_queued_while_the_broker_is_away_is_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kombu.exceptions import OperationalError

    from inbox import tasks
    from inbox.models import FormRecipient

    def away(*args: object, **kwargs: object) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.send_form_emails, "apply_async", away)
    FormRecipient.enqueue_emails(23)
    (record,) = caplog.records
    # Expected during an outage (the sweep sends them later): said, without a traceback.
    assert record.getMessage() == (
        "form 23: emails not queued, the sweep will send them: "
        "Error 111 connecting to 127.0.0.1:6379. Connection refused."
    )
    assert record.exc_info is None
    caplog.clear()

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("not serialisable")

    monkeypatch.setattr(tasks.send_form_emails, "apply_async", broken)
    FormRecipient.enqueue_emails(23)
    # Anything else is a fault of ours: its traceback is kept.
    assert caplog.records[0].exc_info is not None
