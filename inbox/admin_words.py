"""Django's own admin words that its Simplified Chinese catalogue lacks (Django 5.2): marked here
so `makemessages` keeps them in the project's catalogue, which Django reads before its own."""

from __future__ import annotations

from django.utils.translation import gettext_noop

ADMIN_WORDS = (
    gettext_noop(
        "After you’ve created a user, you’ll be able to edit more user options."  # noqa: RUF001
    ),
    gettext_noop("Model name"),
    gettext_noop("Add link"),
    gettext_noop("Change or view list link"),
)
