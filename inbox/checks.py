"""Deploy checks (`manage.py check --deploy`) of what the inbox's own settings leave unsafe or
unusable in production."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def check_inbox_deploy(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    found = []
    if settings.DEVELOPMENT_ENCRYPTION_KEY in settings.INBOX_ENCRYPTION_KEYS[:1]:
        found.append(
            Warning(
                "API keys and form tokens are encrypted with the development key published with "
                "the source.",
                hint="Set INBOX_ENCRYPTION_KEYS to a key of your own (Fernet.generate_key()).",
                id="inbox.W001",
            )
        )
    if settings.EMAIL_BACKEND == "inbox.mail.NoMailServerBackend":
        found.append(
            Warning(
                "No mail server is set up: no email (form requests, reminders, notices) is sent.",
                hint="Set EMAIL_HOST (and EMAIL_HOST_USER, EMAIL_HOST_PASSWORD), or EMAIL_BACKEND.",
                id="inbox.W002",
            )
        )
    if settings.INBOX_BASE_URL.split("://", 1)[-1].split("/")[0].split(":")[0] in (
        "127.0.0.1",
        "localhost",
        "[::1]",
    ):
        found.append(
            Warning(
                f"INBOX_BASE_URL is {settings.INBOX_BASE_URL}: emailed links would point there.",
                hint="Set INBOX_BASE_URL to the inbox's public address.",
                id="inbox.W003",
            )
        )
    return found
