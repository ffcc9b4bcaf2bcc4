from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.test import override_settings

from inbox import crypto
from inbox.crypto import DecryptionError
from inbox.models import DifyApp, Form, Run

pytestmark = pytest.mark.smoke


def test_api_key_is_encrypted_in_the_database(dify_app: DifyApp) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM inbox_difyapp WHERE id = %s", [dify_app.pk])
        stored = cursor.fetchone()[0]
    assert "app-secret-key-123456" not in stored
    assert stored.startswith("gAAAA")  # a Fernet token
    assert DifyApp.objects.get(pk=dify_app.pk).api_key == "app-secret-key-123456"


def test_old_keys_still_decrypt_after_rotation(db: None) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(INBOX_ENCRYPTION_KEYS=[old]):
        app = DifyApp.objects.create(name="a", base_url="http://x/v1", api_key="key-under-old")
    with override_settings(INBOX_ENCRYPTION_KEYS=[new, old]):
        assert DifyApp.objects.get(pk=app.pk).api_key == "key-under-old"
        with connection.cursor() as cursor:
            cursor.execute("SELECT api_key FROM inbox_difyapp WHERE id = %s", [app.pk])
            rotated = crypto.rotate(cursor.fetchone()[0])
    with override_settings(INBOX_ENCRYPTION_KEYS=[new]):
        assert crypto.decrypt(rotated) == "key-under-old"


def test_a_missing_key_gives_a_clear_error(db: None) -> None:
    with override_settings(INBOX_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]):
        app = DifyApp.objects.create(name="a", base_url="http://x/v1", api_key="k")
    with override_settings(INBOX_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]):
        # The row loads (pages and the admin still open); its key is refused where it is used.
        sealed = DifyApp.objects.get(pk=app.pk).api_key
        assert isinstance(sealed, crypto.Sealed) and repr(sealed) == "<Sealed DifyApp.api_key>"
        with pytest.raises(DecryptionError, match="DifyApp.api_key cannot be decrypted"):
            crypto.readable(sealed)
        run = Run.objects.create(app=app, workflow_run_id="R1", dify_user="u")
        Form.objects.create(run=run, form_id="F1", form_token="t")
    with override_settings(INBOX_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]):
        # So does a form: its token is refused where it would be sent.
        token = Form.objects.get(form_id="F1").form_token
        assert isinstance(token, crypto.Sealed)
        with pytest.raises(DecryptionError, match="Form.form_token cannot be decrypted"):
            crypto.readable(token)


def test_rotating_re_encrypts_every_secret_so_the_old_key_can_go(
    db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from django.core.management import CommandError, call_command

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(INBOX_ENCRYPTION_KEYS=[old]):
        app = DifyApp.objects.create(name="a", base_url="http://x/v1", api_key="key-under-old")
        run = Run.objects.create(app=app, workflow_run_id="R1", dify_user="u")
        form = Form.objects.create(run=run, form_id="F1", form_token="token-under-old")
    with override_settings(INBOX_ENCRYPTION_KEYS=[new, old]):
        call_command("rotate_encryption_keys")
        assert "DifyApp.api_key: 1 re-encrypted" in capsys.readouterr().out
        # Run again: nothing left to do.
        call_command("rotate_encryption_keys")
        assert "Form.form_token: 0 re-encrypted" in capsys.readouterr().out
    with override_settings(INBOX_ENCRYPTION_KEYS=[new]):
        assert DifyApp.objects.get(pk=app.pk).api_key == "key-under-old"
        assert Form.objects.get(pk=form.pk).form_token == "token-under-old"
    # A value no key opens is named, left alone, and fails the command.
    with override_settings(INBOX_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]):
        DifyApp.objects.create(name="b", base_url="http://x/v1", api_key="lost")
    with override_settings(INBOX_ENCRYPTION_KEYS=[new]):
        with pytest.raises(CommandError, match=r"No key in INBOX_ENCRYPTION_KEYS opens: DifyApp"):
            call_command("rotate_encryption_keys")


def test_tokens_of_closed_forms_no_key_opens_can_be_forgotten_so_rotation_completes(
    db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from django.core.management import CommandError, call_command

    lost, kept = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(INBOX_ENCRYPTION_KEYS=[kept]):
        app = DifyApp.objects.create(name="a", base_url="http://x/v1", api_key="app-key")
        run = Run.objects.create(app=app, workflow_run_id="R1", dify_user="u")
    with override_settings(INBOX_ENCRYPTION_KEYS=[lost]):
        # 25 closed forms, one waiting and one whose delivery failed, under a key then lost.
        # (Closed before forms let go of their token as they closed: closed here without
        # `save`, which would let it go.)
        for n in range(25):
            Form.objects.create(run=run, form_id=f"S{n}", form_token="t", status="pending")
        Form.objects.filter(form_id__startswith="S").update(status="submitted")
        Form.objects.create(run=run, form_id="P", form_token="t", status="pending")
        Form.objects.create(run=run, form_id="F", form_token="t", status="failed")
    with override_settings(INBOX_ENCRYPTION_KEYS=[kept]):
        with pytest.raises(CommandError) as refused:
            call_command("rotate_encryption_keys")
        # Twenty named, the rest counted, and the way out said.
        assert str(refused.value).count("Form.form_token of #") == 20
        assert " and 7 more." in str(refused.value) and "--forget-closed" in str(refused.value)
        # Closed forms' tokens are blanked; the waiting and the failed form keep theirs, and
        # still fail the command: their decisions may yet need them.
        with pytest.raises(CommandError) as refused:
            call_command("rotate_encryption_keys", forget_closed=True)
        assert "Form.form_token: 25 of closed forms forgotten" in capsys.readouterr().out
        assert str(refused.value).count("Form.form_token of #") == 2
        assert Form.objects.filter(form_token="").count() == 25
        assert set(Form.objects.exclude(form_token="").values_list("form_id", flat=True)) == {
            "P",
            "F",
        }


def test_an_unreadable_value_is_said_with_whose_it_is(db: None) -> None:
    from inbox.crypto import DecryptionError, readable

    with override_settings(INBOX_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]):
        app = DifyApp.objects.create(name="refunds", base_url="http://dify/v1", api_key="secret-k")
    app = DifyApp.objects.get(pk=app.pk)
    with pytest.raises(DecryptionError) as raised:
        app.readable_api_key()
    assert str(raised.value) == (
        f"DifyApp.api_key of the app 'refunds' (id {app.pk}) cannot be decrypted with "
        "INBOX_ENCRYPTION_KEYS"
    )
    # Without a context, as before; a readable value is given back as it is.
    with pytest.raises(DecryptionError, match="^DifyApp.api_key cannot be decrypted"):
        readable(app.api_key)
    assert readable("plain", of="anything") == "plain"
