from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.test import override_settings

from inbox import crypto
from inbox.crypto import DecryptionError
from inbox.models import DifyApp

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
        with pytest.raises(DecryptionError, match="DifyApp.api_key cannot be decrypted"):
            DifyApp.objects.get(pk=app.pk)
