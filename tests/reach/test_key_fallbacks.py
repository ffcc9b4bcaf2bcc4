"""`manage.py secret_key_fallbacks`: until when the keys SECRET_KEY had before are still needed,
counted from what is in the database (open forms' expiries, the link age, sessions), since a
link does not say which key signed it."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from inbox import notify
from inbox.management.commands.secret_key_fallbacks import when
from inbox.models import DifyApp, Form, Route
from tests.reach.conftest import GUEST
from tests.reach.factories import make_form

OLD_KEY = "the-key-sessions-and-emails-were-signed-with-" + "o" * 20
NEW_KEY = "the-key-of-today-" + "n" * 40


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("secret_key_fallbacks", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def rotated(settings: Any) -> Any:
    """SECRET_KEY changed, the old one kept as a fallback."""
    settings.SECRET_KEY = NEW_KEY
    settings.SECRET_KEY_FALLBACKS = [OLD_KEY]
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    return settings


def test_a_form_expiring_past_the_link_age_keeps_the_old_key_needed_until_its_expiry(
    reach_route: Route, reach_app: DifyApp, settings: Any
) -> None:
    # A link to a form with an expiry lives until that expiry, however far off: 60 days, where
    # the links' age (INBOX_LINK_MAX_AGE_SECONDS) is 30. Keeping the old key 30 days is too short.
    settings.SECRET_KEY = OLD_KEY
    form = make_form(reach_app, expires_in=dt.timedelta(days=60))
    token = notify.link_token(form.recipients.get(email=GUEST))
    settings.SECRET_KEY = NEW_KEY
    settings.SECRET_KEY_FALLBACKS = [OLD_KEY]
    day_45 = timezone.now() + dt.timedelta(days=45)
    assert notify.check_link(token, now=day_45).state == "ok"
    settings.SECRET_KEY_FALLBACKS = []
    assert notify.check_link(token, now=day_45).state == "invalid"

    settings.SECRET_KEY_FALLBACKS = [OLD_KEY]
    out = run()
    assert "SECRET_KEY_FALLBACKS holds 1 earlier key(s)." in out
    expiry = when(form.expiration_time)  # type: ignore[arg-type]
    assert f"Emailed links: until {expiry}; the last of 1 open form(s) with an expiry" in out
    assert f"may still be in use until {expiry}: keep SECRET_KEY_FALLBACKS until then" in out
    assert "Resend the email to every recipient" in out


def test_links_to_forms_without_an_expiry_need_it_for_the_link_age(
    reach_route: Route, reach_app: DifyApp, settings: Any
) -> None:
    settings.INBOX_LINK_MAX_AGE_SECONDS = 10 * 86400
    make_form(reach_app, expires_in=None)
    make_form(reach_app, expires_in=dt.timedelta(days=2))
    changed = timezone.now() - dt.timedelta(days=1)
    # Forms created after the key changed were emailed with the new key: only counted with a
    # change time after their creation.
    out = run("--changed-at", changed.isoformat())
    assert "Emailed links: nothing left; no open form was emailed before then" in out
    out = run()
    assert "1 open form(s) without an expiry: their links live 10 days" in out
    line = next(x for x in out.splitlines() if "Emailed links:" in x)
    until = dt.datetime.strptime(line.split("until ")[1][:16], "%Y-%m-%d %H:%M")
    expected = timezone.localtime(timezone.now() + dt.timedelta(days=10)).replace(tzinfo=None)
    assert abs(until - expected) < dt.timedelta(minutes=2)


def test_closed_forms_and_past_changes_leave_nothing_needing_the_old_key(
    reach_route: Route, reach_app: DifyApp, rotated: Any
) -> None:
    form = make_form(reach_app, expires_in=dt.timedelta(days=90))
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTED, form_token="")
    Form.objects.filter(pk=form.pk).update(created_at=timezone.now() - dt.timedelta(days=40))
    out = run("--changed-at", (timezone.now() - dt.timedelta(days=35)).date().isoformat())
    assert "Emailed links: nothing left" in out
    assert "Password reset links: nothing left" in out
    assert "Sessions: nothing left; none is open only with an earlier key" in out
    assert "SECRET_KEY_FALLBACKS can be emptied now" in out
    # Reopened (a failed decision given back), its links are worth keeping again.
    Form.objects.filter(pk=form.pk).update(status=Form.Status.PENDING)
    out = run("--changed-at", (timezone.now() - dt.timedelta(days=35)).date().isoformat())
    assert f"Emailed links: until {when(form.expiration_time)}" in out  # type: ignore[arg-type]


def test_sessions_only_a_fallback_opens_are_counted_until_they_end(
    reviewer: User, other_reviewer: User, settings: Any
) -> None:
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    settings.SECRET_KEY = OLD_KEY
    old = Client()
    old.force_login(reviewer)
    resaved = Client()
    resaved.force_login(other_reviewer)
    settings.SECRET_KEY = NEW_KEY
    settings.SECRET_KEY_FALLBACKS = [OLD_KEY]
    # Saved again with the new key (something changed in it) before its user was looked at:
    # its data opens with the new key, its sign-in only with the old one.
    store = SessionStore(resaved.session.session_key)
    store["something"] = 1
    store.save()
    fresh = Client()
    fresh.force_login(reviewer)
    fresh_end = Session.objects.get(session_key=fresh.session.session_key).expire_date
    Session.objects.filter(session_key=fresh.session.session_key).update(
        expire_date=fresh_end + dt.timedelta(days=5)
    )
    last = Session.objects.get(session_key=resaved.session.session_key).expire_date
    out = run()
    assert f"Sessions: until {when(last)}; 2 open only with an earlier key" in out
    # What the count means: with the old key both are still signed in (dropped, they would
    # have to sign in again), and each moves to the new key on its visit.
    assert old.get("/").status_code == 200 and resaved.get("/").status_code == 200
    out = run()
    assert "Sessions: nothing left" in out  # both moved to the new key on their visit


def test_without_fallbacks_it_says_so_and_how_long_to_keep_a_key_replaced_now(
    db: None, settings: Any
) -> None:
    settings.SECRET_KEY_FALLBACKS = []
    settings.PASSWORD_RESET_TIMEOUT = 3 * 86400
    out = run()
    assert "SECRET_KEY_FALLBACKS is empty: nothing signed with an earlier key opens now." in out
    assert (
        "Password reset links: until" in out
        and "they work for 3 days, PASSWORD_RESET_TIMEOUT" in out
    )
    assert "A key replaced then would be needed in SECRET_KEY_FALLBACKS until" in out
    out = run("--changed-at", (timezone.now() - dt.timedelta(days=4)).isoformat())
    assert "A key replaced then would need no keeping in SECRET_KEY_FALLBACKS." in out


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("last tuesday", "is not a date or time: write it like 2026-12-01"),
        ("2026-13-45", "is not a date or time"),
        ("2999-01-01", "is in the future"),
    ],
)
def test_a_bad_change_time_is_refused_with_what_to_write(
    db: None, value: str, message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        run("--changed-at", value)
