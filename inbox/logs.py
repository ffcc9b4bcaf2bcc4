"""Keep guest links out of the logs.

An emailed link (`/r/<signed token>/...`) lets whoever holds it open the form and decide as its
recipient, until it lapses: it is a password. Django logs the path of every refused request
(`django.request`: "Gone: /r/.../"; a POST its CSRF check refuses under `django.security.csrf`,
which `django.request` does not see), and the web servers log every request line (`django.server`
under `make run`, `gunicorn.access` in the image). The token in such a line is replaced by ***.
"""

from __future__ import annotations

import logging
import re

# A guest link's token: what `django.core.signing.dumps` writes (URL-safe base64, '.', ':'), or
# any of it percent-encoded (which opens the same page): the whole path segment.
_GUEST_LINK = re.compile(r"(/r/)[^/\s\"'?#]+")
# The signed token itself, wherever it stands and however it was spelt: a path that reaches the
# same page by another spelling (`/%72/`, `/r%2F`) or a Referer header carries it without a
# literal "/r/". Its shape is `signing.dumps`': payload, timestamp and signature, joined by
# ':' (or its %3A), any character of it possibly percent-encoded.
_CH = r"(?:[A-Za-z0-9_\-.]|%[0-9A-Fa-f]{2})"
_SEP = r"(?::|%3[Aa])"
_SIGNED = re.compile(rf"{_CH}{{8,}}{_SEP}{_CH}{{4,12}}{_SEP}{_CH}{{20,}}")
REDACTED = "***"
LOGGERS = ("django.request", "django.security.csrf", "django.server", "gunicorn.access")


def redact_links(text: str) -> str:
    return _SIGNED.sub(REDACTED, _GUEST_LINK.sub(r"\1" + REDACTED, text))


class RedactGuestLinks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            return True
        if "/r" in message or ":" in message or "%3" in message:
            redacted = redact_links(message)
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


def install() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactGuestLinks) for f in logger.filters):
            logger.addFilter(RedactGuestLinks())
