"""Re-encrypt every secret at rest with the first of INBOX_ENCRYPTION_KEYS.

Rotating a key: add the new key last in INBOX_ENCRYPTION_KEYS and restart every process; move it
first (the old one after it) and restart again; run this command; then drop the old key and
restart again. A value no key can open is named, left as it is, and makes the command fail, so
the old key is not dropped while something still needs it; `--forget-closed` blanks such tokens
of forms that are closed, which are never sent again.
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Model, TextField, Value
from django.db.models.functions import Cast
from django.db.models.lookups import Exact

from inbox import crypto
from inbox.models import DifyApp, Form

# Every encrypted column: (model, field).
ENCRYPTED: list[tuple[type[Model], str]] = [(DifyApp, "api_key"), (Form, "form_token")]


# Forms whose token is never used again: no decision of theirs can be sent to Dify any more. (A
# form whose delivery failed keeps its token: an administrator may retry it or reopen the form.)
# (Those closed since forms let go of their token as they close have none left to forget.)
CLOSED = (*Form.TOKEN_DROPPED, Form.Status.NOT_ANSWERABLE)
# Values named in the error, at most; the rest are counted.
NAMED = 20


class Command(BaseCommand):
    help = "Re-encrypt API keys and form tokens with the first key of INBOX_ENCRYPTION_KEYS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--forget-closed",
            action="store_true",
            help="Blank the tokens no key opens of forms that are closed (submitted, expired, "
            "answered elsewhere, gone): they are never sent again, and a key lost with them "
            "would otherwise keep this command failing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        first = Fernet(settings.INBOX_ENCRYPTION_KEYS[0].encode())
        unreadable: list[str] = []
        if options["forget_closed"]:
            self._forget_closed()
        for model, field in ENCRYPTED:
            done = changed = 0
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
                # Saved through the field, which encrypts with the first key; only over the
                # value read, so a value changed meanwhile (a key entered again, a token let go
                # as its form closed) is not written back, nor a token of a closed form.
                unchanged = model._default_manager.filter(
                    Exact(Cast(field, TextField()), Value(stored)), pk=pk
                )
                if model is Form:
                    unchanged = unchanged.exclude(status__in=Form.TOKEN_DROPPED)
                if unchanged.update(**{field: plain}):
                    done += 1
                else:
                    changed += 1
            self.stdout.write(
                f"{model.__name__}.{field}: {done} re-encrypted"
                + (f", {changed} changed meanwhile (left as they are)" if changed else "")
            )
        if unreadable:
            more = len(unreadable) - NAMED
            raise CommandError(
                "No key in INBOX_ENCRYPTION_KEYS opens: "
                + ", ".join(unreadable[:NAMED])
                + (f" and {more} more" if more > 0 else "")
                + ". Keep the key that encrypted them (or enter those values again) before "
                "dropping any key. Tokens of closed forms are never sent again: "
                "--forget-closed blanks those no key opens."
            )

    def _forget_closed(self) -> None:
        rows = (
            Form.objects.filter(status__in=CLOSED)
            .exclude(form_token="")
            .annotate(stored=Cast("form_token", TextField()))
            .values_list("pk", "stored")
        )
        forgotten = []
        for pk, stored in rows.iterator(chunk_size=500):
            try:
                crypto.decrypt(stored)
            except InvalidToken:
                forgotten.append(pk)
        for start in range(0, len(forgotten), 500):
            Form.objects.filter(pk__in=forgotten[start : start + 500]).update(form_token="")
        self.stdout.write(f"Form.form_token: {len(forgotten)} of closed forms forgotten")
