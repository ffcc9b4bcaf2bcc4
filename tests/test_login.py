"""Sign-in with a brake on password guessing (inbox.login)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from inbox.models import AuditEntry

pytestmark = pytest.mark.smoke


def sign_in(client: Client, username: str, password: str, **extra: Any) -> Any:
    return client.post("/accounts/login/", {"username": username, "password": password}, **extra)


def test_after_too_many_failures_a_username_is_refused_for_the_window(
    client: Client, reviewer: User, settings: Any
) -> None:
    settings.INBOX_LOGIN_FAILURES_PER_USER = 3
    for n in range(3):
        assert sign_in(client, "alice", f"wrong-{n}").status_code == 200
    # The right password now: not even checked until the window ends.
    refused = sign_in(client, "ALICE", "pw-alice-123")
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= settings.INBOX_LOGIN_WINDOW_SECONDS
    page = refused.content.decode()
    assert "Too many failed sign-ins. Try again in " in page and 'id="login-error"' in page
    assert "_auth_user_id" not in client.session
    chinese = sign_in(client, "alice", "pw-alice-123", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert chinese.status_code == 429 and "Too many" not in chinese.content.decode()
    # Noted once in the trail, with where it came from.
    [entry] = AuditEntry.objects.filter(verb="login_throttled")
    assert entry.object_id == str(reviewer.pk) and entry.actor_label == "127.0.0.1"
    # Another account from elsewhere is not held by Alice's count.
    User.objects.create_user("bob2", password="pw-bob-123")
    other = Client(REMOTE_ADDR="10.0.0.9")
    assert sign_in(other, "bob2", "pw-bob-123").status_code == 302


def test_a_success_clears_the_username_s_count(
    client: Client, reviewer: User, settings: Any
) -> None:
    settings.INBOX_LOGIN_FAILURES_PER_USER = 3
    for n in range(2):
        sign_in(client, "alice", f"wrong-{n}")
    assert sign_in(client, "alice", "pw-alice-123").status_code == 302
    client.logout()
    for n in range(2):
        assert sign_in(client, "alice", f"wrong-again-{n}").status_code == 200
    assert sign_in(client, "alice", "pw-alice-123").status_code == 302


def test_one_address_guessing_many_usernames_is_refused(
    client: Client, reviewer: User, settings: Any
) -> None:
    settings.INBOX_LOGIN_FAILURES_PER_IP = 4
    for n in range(4):
        assert sign_in(client, f"nobody-{n}", "guess").status_code == 200
    # Only names that exist are noted in the trail: the refused sign-in as Alice is.
    assert sign_in(client, "nobody-9", "guess").status_code == 429
    assert not AuditEntry.objects.filter(verb="login_throttled").exists()
    assert sign_in(client, "alice", "pw-alice-123").status_code == 429
    assert AuditEntry.objects.filter(verb="login_throttled").count() == 1
