"""The email backend of a production set-up with no mail server named.

The console backend would write every email, with its signed link (a credential), into the
worker's output. This one sends nothing and says why: each email waits, unsent, with that
reason, and the dashboard counts it ("emails not sent yet"); `manage.py check --deploy` warns
(`inbox.checks`). Setting EMAIL_HOST (or EMAIL_BACKEND) replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.mail.backends.base import BaseEmailBackend


class NoMailServer(Exception):
    pass


class NoMailServerBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[Any]) -> int:
        if not email_messages:
            return 0
        raise NoMailServer("No mail server is set up: set EMAIL_HOST (or EMAIL_BACKEND).")
