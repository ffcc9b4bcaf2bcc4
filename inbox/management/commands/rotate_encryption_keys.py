"""Re-encrypt every secret at rest with the first of INBOX_ENCRYPTION_KEYS.

Rotating a key: put the new key first in INBOX_ENCRYPTION_KEYS (keeping the old one after it)
and restart every process; run this command; then drop the old key and restart again. A value
no key can open is named, left as it is, and makes the command fail, so the old key is not
dropped while something still needs it.
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Model, TextField
from django.db.models.functions import Cast

from inbox import crypto
from inbox.models import DifyApp, Form

# Every encrypted column: (model, field).
ENCRYPTED: list[tuple[type[Model], str]] = [(DifyApp, "api_key"), (Form, "form_token")]


class Command(BaseCommand):
    help = "Re-encrypt API keys and form tokens with the first key of INBOX_ENCRYPTION_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        first = Fernet(settings.INBOX_ENCRYPTION_KEYS[0].encode())
        unreadable: list[str] = []
        for model, field in ENCRYPTED:
            done = 0
            # The stored ciphertext as text: the field itself would hand back the plain value.
            rows = (
                model._default_manager.exclude(**{field: ""})
                .annotate(stored=Cast(field, TextField()))
                .values_list("pk", "stored")
            )
            for pk, stored in rows.iterator(chunk_size=500):
                if not stored:
                    continue
                try:
                    first.decrypt(stored.encode())
                    continue  # already under the first key
                except InvalidToken:
                    pass
                try:
                    plain = crypto.decrypt(stored)
                except InvalidToken:
                    unreadable.append(f"{model.__name__}.{field} of #{pk}")
                    continue
                # Saved through the field, which encrypts with the first key.
                model._default_manager.filter(pk=pk).update(**{field: plain})
                done += 1
            self.stdout.write(f"{model.__name__}.{field}: {done} re-encrypted")
        if unreadable:
            raise CommandError(
                "No key in INBOX_ENCRYPTION_KEYS opens: "
                + ", ".join(unreadable)
                + ". Keep the key that encrypted them (or enter those values again) before "
                "dropping any key."
            )
