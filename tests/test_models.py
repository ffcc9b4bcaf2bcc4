from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from inbox.models import AuditEntry, Decision, DifyApp, Form, Run, mask_secret

pytestmark = pytest.mark.smoke


def test_mask_secret_shows_only_the_ends() -> None:
    assert mask_secret("app-abcdefghijklmnop") == "app-…mnop"
    assert mask_secret("short") == "••••••••"
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
