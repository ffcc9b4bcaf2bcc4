"""Keep guest links and search terms out of the logs.

An emailed link (`/r/<signed token>/...`) lets whoever holds it open the form and decide as its
recipient, until it lapses: it is a password. Django logs the path of every refused request
(`django.request`: "Gone: /r/.../"; a POST its CSRF check refuses under `django.security.csrf`,
which `django.request` does not see), and the web servers log every request line (`django.server`
under `make run`, `gunicorn.access` in the image). The token in such a line is replaced by ***.

A search's words (`?q=`, on the inbox's and the admin's lists and the API's) are most often a
person's name or address: they too are replaced by ***, as is the admin's
`_changelist_filters` (the list's search, carried to the page opened from it), and either when
percent-encoded inside another parameter (`?next=/%3Fq%3DName`).

A password reset link (`/accounts/reset/<uid>/<token>/`) sets a new password for its account:
both its segments are replaced (either slash written `/` or `%2F`), and Django's reset token
itself wherever it stands (a Referer).
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
# A password reset link's two segments (the account's id and Django's token), and the token
# itself: a base 36 timestamp, '-', 32 hex digits (`PasswordResetTokenGenerator`). Either
# slash may be written %2F (Django routes `/reset%2FMw%2F<token>/` to the same page).
_SLASH = r"(?:/|%2[Ff])"
_SEGMENT = r"(?:(?!%2[Ff])[^/\s\"'?#])+"
_RESET_LINK = re.compile(rf"(/reset{_SLASH}){_SEGMENT}({_SLASH}){_SEGMENT}")
_RESET_TOKEN = re.compile(
    r"(?:(?<=%2[Ff])|(?<![0-9A-Za-z]))[0-9a-z]{1,13}(?:-|%2[Dd])[0-9a-f]{32}(?![0-9A-Za-z])"
)
# A search parameter and its value, plain (`?q=Name&`) or percent-encoded in another one
# (`%3Fq%3DName%26`): the value runs to the next parameter, the end of the URL or the line.
SEARCH_PARAMS = ("q", "_changelist_filters")
_SEARCH = re.compile(
    r"((?:[?&;]|%3[Ff]|%26)(?:" + "|".join(SEARCH_PARAMS) + r")(?:=|%3[Dd]))"
    r"(?:(?!%26)[^&;\s\"'#])+"
)
REDACTED = "***"
LOGGERS = ("django.request", "django.security.csrf", "django.server", "gunicorn.access")


def redact_links(text: str) -> str:
    text = _SIGNED.sub(REDACTED, _GUEST_LINK.sub(r"\1" + REDACTED, text))
    text = _RESET_LINK.sub(r"\1" + REDACTED + r"\2" + REDACTED, text)
    text = _RESET_TOKEN.sub(REDACTED, text)
    return _SEARCH.sub(r"\1" + REDACTED, text)


class RedactGuestLinks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            return True
        if any(part in message for part in ("/r", ":", "%3", "%2", "=")):
            redacted = redact_links(message)
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


def install() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactGuestLinks) for f in logger.filters):
            logger.addFilter(RedactGuestLinks())
