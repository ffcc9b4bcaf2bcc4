"""An app's API key that no key in INBOX_ENCRYPTION_KEYS opens (a key dropped before rotating):
the pages still open, the admin takes the key again, and nothing is sent to Dify with it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone

from inbox.crypto import DecryptionError, readable
from inbox.dify.client import DifyClient
from inbox.dify.errors import ApiKeyUnreadable
from inbox.models import DifyApp, Form

pytestmark = pytest.mark.smoke


@pytest.fixture
def dropped_key(form: Form) -> Iterator[DifyApp]:
    """The app's key was encrypted under a key this process no longer has."""
    lost = Fernet.generate_key().decode()
    with override_settings(INBOX_ENCRYPTION_KEYS=[lost]):
        DifyApp.objects.filter(pk=form.run.app_id).update(api_key="app-under-a-lost-key")
    yield DifyApp.objects.get(pk=form.run.app_id)


def _stored(app: DifyApp) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM inbox_difyapp WHERE id = %s", [app.pk])
        return str(cursor.fetchone()[0])


def test_the_app_loads_and_its_key_is_refused_where_it_would_be_used(dropped_key: DifyApp) -> None:
    assert dropped_key.api_key_sealed
    assert dropped_key.masked_api_key == "not readable with this process's INBOX_ENCRYPTION_KEYS"
    with pytest.raises(ApiKeyUnreadable, match="put back the key it was encrypted with"):
        DifyClient.for_app(dropped_key)
    with pytest.raises(DecryptionError, match="DifyApp.api_key cannot be decrypted"):
        readable(dropped_key.api_key)
    # Saved with other changes, the stored key is kept as it was: the key put back opens it.
    before = _stored(dropped_key)
    dropped_key.is_active = False
    dropped_key.save()
    assert _stored(dropped_key) == before


def test_the_pages_open_and_the_admin_takes_the_key_again(
    client: Client, admin_user: User, dropped_key: DifyApp, form: Form
) -> None:
    client.force_login(admin_user)
    for path in (
        "/",
        f"/forms/{form.public_id}/",
        "/runs/",
        f"/runs/{form.run.public_id}/",
        "/apps/",
        "/dashboard/",
        "/admin/inbox/difyapp/",
        f"/admin/inbox/form/{form.pk}/change/",
        f"/admin/inbox/run/{form.run.pk}/change/",
    ):
        assert client.get(path).status_code == 200, path
    page = client.get(f"/admin/inbox/difyapp/{dropped_key.pk}/change/")
    assert page.status_code == 200
    assert "The stored key cannot be read with this process" in page.content.decode()
    # Most often a process restarted without the new key mid-rotation: said so, not only
    # "enter it again" (for every app).
    listed = client.get("/admin/inbox/difyapp/").content.decode()
    assert "not readable with this process&#x27;s INBOX_ENCRYPTION_KEYS" in listed
    assert (
        "No key in this process&#x27;s INBOX_ENCRYPTION_KEYS opens the API key: restart it with "
        "the key the API key was stored with (during a rotation, the new one), or enter the API "
        "key again." in listed
    )
    # The start page asks Dify for the app's inputs: it says why it cannot, as for Dify away.
    start = client.get(f"/apps/{dropped_key.pk}/start/")
    assert start.status_code == 502
    assert "enter the API key again in the admin" in start.content.decode()
    # Entered again, it is readable.
    saved = client.post(
        f"/admin/inbox/difyapp/{dropped_key.pk}/change/",
        {
            "name": dropped_key.name,
            "base_url": dropped_key.base_url,
            "api_key": "app-entered-again",
            "mode": dropped_key.mode,
            "is_active": "on",
        },
    )
    assert saved.status_code == 302
    assert DifyApp.objects.get(pk=dropped_key.pk).api_key == "app-entered-again"


def test_a_decision_waits_for_a_readable_key_and_goes_once_it_is_entered_again(
    dropped_key: DifyApp, form: Form, caplog: pytest.LogCaptureFixture
) -> None:
    from inbox.models import Decision

    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTING)
    decision = Decision.objects.create(
        form=form, action_id="approve", next_attempt_at=timezone.now()
    )
    with caplog.at_level("ERROR", logger="inbox.models"):
        claimed, _others, _drained = Decision.claim_due(10)
    assert claimed == []
    # The log line names the app whose key cannot be read, never the key.
    (line,) = [
        r.getMessage() for r in caplog.records if f"decision {decision.pk}:" in r.getMessage()
    ]
    assert f"of the app {dropped_key.name!r} (id {dropped_key.pk}) cannot be decrypted" in line
    assert "app-under-a-lost-key" not in line
    decision.refresh_from_db()
    assert decision.status == "queued" and decision.attempts == 0
    assert "lacks the key that encrypted it" in decision.last_error
    waits_until = decision.next_attempt_at
    # The key entered again: the decision goes now, not at the end of its wait.
    app = DifyApp.objects.get(pk=dropped_key.pk)
    app.api_key = "app-entered-again"
    app.save()
    app.settings_changed()
    decision.refresh_from_db()
    assert decision.next_attempt_at is not None and decision.next_attempt_at < waits_until


def test_a_form_token_no_key_opens_leaves_its_pages_open_and_is_never_sent(
    client: Client, admin_user: User, form: Form, caplog: pytest.LogCaptureFixture
) -> None:
    from inbox.dify.errors import FormTokenUnreadable
    from inbox.models import Decision

    lost = Fernet.generate_key().decode()
    with override_settings(INBOX_ENCRYPTION_KEYS=[lost]):
        Form.objects.filter(pk=form.pk).update(form_token="token-under-a-lost-key")
    loaded = Form.objects.get(pk=form.pk)
    assert loaded.is_answerable
    with pytest.raises(FormTokenUnreadable):
        DifyClient.for_app(loaded.run.app).get_form(loaded.form_token)
    client.force_login(admin_user)
    for path in (
        f"/forms/{form.public_id}/",
        f"/runs/{form.run.public_id}/",
        "/admin/inbox/form/",
        f"/admin/inbox/form/{form.pk}/change/",
        "/admin/inbox/decision/",
    ):
        assert client.get(path).status_code == 200, path
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTING)
    decision = Decision.objects.create(
        form=form, action_id="approve", next_attempt_at=timezone.now()
    )
    with caplog.at_level("ERROR", logger="inbox.models"):
        claimed, _others, _drained = Decision.claim_due(10)
    assert claimed == []
    # The log line names the form and its app, never the token.
    (line,) = [
        r.getMessage() for r in caplog.records if f"decision {decision.pk}:" in r.getMessage()
    ]
    app = form.run.app
    assert f"Form.form_token of form {form.pk} of the app {app.name!r} (id {app.pk})" in line
    assert "token-under-a-lost-key" not in line
    decision.refresh_from_db()
    assert decision.status == "queued" and "lacks the key" in decision.last_error
