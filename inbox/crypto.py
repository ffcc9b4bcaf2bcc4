"""Encryption at rest for secrets we must keep but never show: Dify API keys and form tokens.

MultiFernet with the keys from INBOX_ENCRYPTION_KEYS: the first key encrypts, every key decrypts,
so rotating is "put the new key first, run `manage.py rotate_encryption_keys`, drop the old one"
(see that command).
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

from inbox.dify.types import SealedText


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "INBOX_ENCRYPTION_KEYS must be comma-separated Fernet keys "
            "(generate one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')"
        ) from exc


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.INBOX_ENCRYPTION_KEYS))


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(value: str) -> str:
    return _decrypt(tuple(settings.INBOX_ENCRYPTION_KEYS), value)


# An app's key is read with each of its runs and forms (a delivery batch reads it once per
# decision): the same ciphertext is not verified and decrypted again each time. Keyed by the
# keys too, so a key dropped from the settings no longer opens what it encrypted.
@lru_cache(maxsize=256)
def _decrypt(keys: tuple[str, ...], value: str) -> str:
    return _fernet(keys).decrypt(value.encode()).decode()


def rotate(value: str) -> str:
    """Re-encrypt with the first key (MultiFernet.rotate keeps the original timestamp)."""
    return fernet().rotate(value.encode()).decode()


class DecryptionError(Exception):
    pass


class Sealed(SealedText):
    """A stored value no key in INBOX_ENCRYPTION_KEYS opens (a key dropped before rotating, or a
    process started without the newest): its ciphertext, kept as it is, so that a save leaves
    it alone and the key put back opens it again. Never a secret to use: `readable` says so."""

    what = "an encrypted value"

    def __repr__(self) -> str:
        return f"<Sealed {self.what}>"


def readable(value: str, of: str = "") -> str:
    """The plain value; DecryptionError for a sealed one. `of` names whose value it is (the
    app, the form), for the message: the sealed value knows only its column."""
    if isinstance(value, Sealed):
        whose = f" of {of}" if of else ""
        raise DecryptionError(f"{value.what}{whose} cannot be decrypted with INBOX_ENCRYPTION_KEYS")
    return value


class EncryptedTextField(models.TextField):
    """A text column holding Fernet ciphertext; Python sees the plain value.

    Lookups other than isnull cannot work on ciphertext, so do not filter on this field.
    """

    description = "Text encrypted at rest with Fernet"

    def __init__(self, *args: Any, seal_unreadable: bool = False, **kwargs: Any) -> None:
        # With `seal_unreadable`, a value no key opens loads as `Sealed` (the row is still read,
        # the secret refused where it is used: `readable`) rather than failing the whole query.
        # Not part of the column, so not in migrations.
        self.seal_unreadable = seal_unreadable
        super().__init__(*args, **kwargs)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> str | None:
        if value is None or value == "":
            return value
        try:
            return decrypt(value)
        except InvalidToken as exc:
            what = f"{self.model.__name__}.{self.name}"
            if self.seal_unreadable:
                sealed = Sealed(value)
                sealed.what = what
                return sealed
            raise DecryptionError(f"{what} cannot be decrypted with INBOX_ENCRYPTION_KEYS") from exc

    def get_prep_value(self, value: Any) -> Any:
        if isinstance(value, Sealed):
            return str.__str__(value)  # the ciphertext as it was stored
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(str(value))
