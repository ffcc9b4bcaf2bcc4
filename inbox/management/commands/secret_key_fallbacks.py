"""Until when the earlier keys in SECRET_KEY_FALLBACKS are still needed.

What SECRET_KEY signs and a fallback keeps opening after it changes: the links in emails (to a
form with an expiry, good until that expiry however far off; to a form without one, good for
INBOX_LINK_MAX_AGE_SECONDS), password reset links (PASSWORD_RESET_TIMEOUT) and sign-in sessions.
A link does not record which key signed it, so the command counts every link sent before the key
changed (`--changed-at`, now by default): those to forms still open when they were created by
then. Sessions are looked at one by one: those only a fallback opens, until they end.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.core import signing
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Exists, Max, OuterRef
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.utils.dateparse import parse_date, parse_datetime

from inbox import notify, timefmt
from inbox.models import Form, FormRecipient

# The session engines whose sessions are rows of django_session, which can be looked at.
DB_SESSIONS = ("django.contrib.sessions.backends.db", "django.contrib.sessions.backends.cached_db")


@dataclass(frozen=True)
class Need:
    """One kind of signed thing: until when a fallback may still open some of it (None: nothing
    needs it), and what that is, in words."""

    what: str
    until: dt.datetime | None
    why: str


def when(value: dt.datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z")


def link_need(changed_at: dt.datetime, now: dt.datetime) -> Need:
    """Links emailed before `changed_at`: to forms created by then and not closed for good."""
    emailed = (
        Form.objects.exclude(status__in=notify.ENDED_STATUSES)
        .filter(created_at__lte=changed_at)
        .filter(Exists(FormRecipient.objects.filter(form=OuterRef("pk"))))
    )
    dated = emailed.filter(expiration_time__gt=now)
    last_expiry = dated.aggregate(last=Max("expiration_time"))["last"]
    undated = emailed.filter(expiration_time__isnull=True).count()
    aged_out = changed_at + notify.link_max_age()
    candidates: list[tuple[dt.datetime, str]] = []
    if last_expiry is not None:
        count = dated.count()
        candidates.append(
            (last_expiry, f"the last of {count} open form(s) with an expiry expires then")
        )
    if undated and aged_out > now:
        lasts = timefmt.span(notify.link_max_age())
        candidates.append(
            (
                aged_out,
                f"{undated} open form(s) without an expiry: their links live {lasts} "
                "(INBOX_LINK_MAX_AGE_SECONDS); older ones only offer their recipient a new link",
            )
        )
    if not candidates:
        return Need("Emailed links", None, "no open form was emailed before then")
    until, why = max(candidates)
    return Need("Emailed links", until, why)


def reset_need(changed_at: dt.datetime, now: dt.datetime) -> Need:
    timeout = dt.timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT)
    until = changed_at + timeout
    why = f"they work for {timefmt.span(timeout)}, PASSWORD_RESET_TIMEOUT"
    return Need("Password reset links", until if until > now else None, why)


def _needs_fallback(data: str, salt: str, serializer: Any) -> tuple[bool, dict[str, Any] | None]:
    """Whether only a fallback opens a session's data, and the data (None: nothing opens it)."""
    try:
        return False, signing.loads(data, salt=salt, serializer=serializer, fallback_keys=[])
    except signing.BadSignature:
        pass
    except Exception:  # as Django's decode: a session it cannot read is empty
        return False, None
    try:
        return True, signing.loads(data, salt=salt, serializer=serializer)
    except Exception:
        return False, None


def session_need(changed_at: dt.datetime, now: dt.datetime) -> Need:
    """Sessions that only a fallback opens, or whose sign-in only a fallback vouches for (a
    session saved with the new key before its user was looked at)."""
    if settings.SESSION_ENGINE not in DB_SESSIONS:
        until = changed_at + dt.timedelta(seconds=settings.SESSION_COOKIE_AGE)
        why = "they last SESSION_COOKIE_AGE; dropped earlier, those signed in sign in again"
        return Need("Sessions", until if until > now else None, why)
    from django.contrib.sessions.models import Session

    store = import_module(settings.SESSION_ENGINE).SessionStore()
    salt, serializer = store.key_salt, store.serializer
    needing: list[dt.datetime] = []
    signed_in: dict[str, list[tuple[str, dt.datetime]]] = {}
    rows = Session.objects.filter(expire_date__gt=now).values_list("session_data", "expire_date")
    for data, expires in rows.iterator(chunk_size=500):
        fallback, session = _needs_fallback(data, salt, serializer)
        if fallback:
            needing.append(expires)
        elif session and session.get(SESSION_KEY) and session.get(HASH_SESSION_KEY):
            signed_in.setdefault(str(session[SESSION_KEY]), []).append(
                (str(session[HASH_SESSION_KEY]), expires)
            )
    users = get_user_model()._default_manager.filter(pk__in=list(signed_in))
    for user in users.iterator(chunk_size=500):
        current = user.get_session_auth_hash()
        fallbacks = list(user.get_session_auth_fallback_hash())
        for hashed, expires in signed_in.get(str(user.pk), []):
            if not constant_time_compare(hashed, current) and any(
                constant_time_compare(hashed, other) for other in fallbacks
            ):
                needing.append(expires)
    if not needing:
        return Need("Sessions", None, "none is open only with an earlier key")
    return Need(
        "Sessions",
        max(needing),
        f"{len(needing)} open only with an earlier key; dropped earlier, they sign in again",
    )


def needs(changed_at: dt.datetime, now: dt.datetime) -> list[Need]:
    return [
        link_need(changed_at, now),
        reset_need(changed_at, now),
        session_need(changed_at, now),
    ]


def _parse_changed_at(value: str, now: dt.datetime) -> dt.datetime:
    try:
        parsed = parse_datetime(value)
        day = None if parsed else parse_date(value)
    except ValueError:
        parsed = day = None
    if day is not None:
        parsed = dt.datetime.combine(day, dt.time())
    if parsed is None:
        raise CommandError(
            f"--changed-at {value!r} is not a date or time: write it like 2026-12-01 or "
            "2026-12-01T09:30 (in TIME_ZONE unless it names its offset, e.g. +08:00)."
        )
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    if parsed > now:
        raise CommandError(f"--changed-at {value!r} is in the future.")
    return parsed


class Command(BaseCommand):
    help = (
        "Say until when the earlier keys in SECRET_KEY_FALLBACKS are still needed: links "
        "emailed, password reset links and sessions signed before SECRET_KEY changed open with "
        "them. Links do not record which key signed them: give --changed-at (when SECRET_KEY "
        "changed; now by default) to count only those sent before."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--changed-at",
            metavar="WHEN",
            help="When SECRET_KEY changed (every process restarted with the new key), as "
            "2026-12-01 or 2026-12-01T09:30, in TIME_ZONE unless it names its offset. Default: "
            "now, counting every link sent so far.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        given = options["changed_at"]
        changed_at = _parse_changed_at(given, now) if given else now
        fallbacks = len(settings.SECRET_KEY_FALLBACKS)
        if fallbacks:
            self.stdout.write(f"SECRET_KEY_FALLBACKS holds {fallbacks} earlier key(s).")
        else:
            self.stdout.write(
                "SECRET_KEY_FALLBACKS is empty: nothing signed with an earlier key opens now. "
                "Below: how long to keep the key SECRET_KEY had, were it changed then."
            )
        since = "now" if not given else "--changed-at"
        self.stdout.write(f"Counting what was signed before {when(changed_at)} ({since}).")
        found = needs(changed_at, now)
        for need in found:
            until = f"until {when(need.until)}" if need.until else "nothing left"
            self.stdout.write(f"  {need.what}: {until}; {need.why}")
        last = max((n.until for n in found if n.until is not None), default=None)
        if not fallbacks:
            self.stdout.write(
                f"A key replaced then would be needed in SECRET_KEY_FALLBACKS until {when(last)}."
                if last
                else "A key replaced then would need no keeping in SECRET_KEY_FALLBACKS."
            )
        elif last is None:
            self.stdout.write(
                "Nothing signed with an earlier key is still in use: SECRET_KEY_FALLBACKS can "
                "be emptied now (then restart every process)."
            )
        else:
            self.stdout.write(
                f"Links and sessions signed with a fallback key may still be in use until "
                f"{when(last)}: keep SECRET_KEY_FALLBACKS until then, then empty it and restart "
                "every process. "
                "Dropped earlier, such a link says it is not valid; the admin's \"Resend the "
                'email to every recipient" (on the Forms list) sends fresh ones.'
            )
