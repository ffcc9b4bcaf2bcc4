"""A reviewer's own password (inbox.accounts), and who may not sign in being told why."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.utils import timezone

from inbox import login, tasks
from inbox.logs import RedactGuestLinks, redact_links
from inbox.models import AuditEntry, DifyApp, FormRecipient, ReviewerProfile
from tests.reach.factories import make_form

pytestmark = pytest.mark.smoke

LINK = re.compile(r"https?://\S+/accounts/reset/[^/\s]+/[^/\s]+/")


@pytest.fixture(autouse=True)
def one_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The throttles' window does not end while a test runs."""
    monkeypatch.setattr(login, "_window", lambda: (1, 600))


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The reset emails queued, each sent at once (as the worker would)."""
    calls: list[tuple[Any, ...]] = []

    def apply_async(args: tuple[Any, ...]) -> None:
        calls.append(args)
        tasks.send_password_reset(*args)

    monkeypatch.setattr(tasks.send_password_reset, "apply_async", apply_async)
    return calls


@pytest.fixture
def links_queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The set-password emails an administrator queued, each sent at once (as the worker would)."""
    calls: list[tuple[Any, ...]] = []

    def apply_async(args: tuple[Any, ...]) -> None:
        calls.append(args)
        tasks.send_password_link(*args)

    monkeypatch.setattr(tasks.send_password_link, "apply_async", apply_async)
    return calls


def set_password_through(client: Client, path: str, password: str) -> str:
    """Open an emailed link's path, choose `password` on its page; the page's heading."""
    opened = client.get(path)
    assert opened.status_code == 302 and opened["Location"].endswith("/set-password/")
    page = client.get(opened["Location"]).content.decode()
    heading = re.search(r"<h1>(.*?)</h1>", page)
    assert heading is not None
    new = {"new_password1": password, "new_password2": password}
    done = client.post(opened["Location"], new)
    assert done.status_code == 302 and done["Location"] == "/accounts/reset/done/", done
    return heading.group(1)


def ask_reset(client: Client, email: str, **extra: Any) -> Any:
    return client.post("/accounts/password_reset/", {"email": email}, **extra)


def sign_in(client: Client, username: str, password: str, **extra: Any) -> Any:
    return client.post("/accounts/login/", {"username": username, "password": password}, **extra)


# ---------------------------------------------------------------------------------------------
# Links to the pages
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "words"), [("en", "Forgot your password?"), ("zh-hans", "忘记密码\uff1f")]
)
def test_the_sign_in_page_offers_a_reset(client: Client, language: str, words: str) -> None:
    page = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert f'<a href="/accounts/password_reset/">{words}</a>' in page


def test_a_signed_in_reviewer_s_name_in_the_top_bar_opens_change_password(
    client: Client, reviewer: User
) -> None:
    client.force_login(reviewer)
    page = client.get("/").content.decode()
    link = re.search(r'<a class="whoami" href="/accounts/password_change/"[^>]*>(.*?)</a>', page)
    assert link is not None
    assert link.group(1) == 'Alice<span class="visually-hidden"> · Change password</span>'
    chinese = client.get("/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert '<span class="visually-hidden"> · \u4fee\u6539\u5bc6\u7801</span></a>' in chinese
    # On its own page, the link says it is the page they are on.
    here = client.get("/accounts/password_change/").content.decode()
    assert re.search(r'<a class="whoami" href="/accounts/password_change/"[^>]*aria-current', here)


# ---------------------------------------------------------------------------------------------
# Changing one's password
# ---------------------------------------------------------------------------------------------


def test_a_reviewer_changes_the_password_they_were_given(client: Client, reviewer: User) -> None:
    client.force_login(reviewer)
    page = client.get("/accounts/password_change/")
    assert page.status_code == 200 and "Change password" in page.content.decode()
    new = {"new_password1": "n3w-Secret-pass", "new_password2": "n3w-Secret-pass"}
    wrong = client.post("/accounts/password_change/", {"old_password": "nope", **new})
    assert wrong.status_code == 200
    assert "Your password was not changed" in wrong.content.decode()
    done = client.post("/accounts/password_change/", {"old_password": "pw-alice-123", **new})
    assert done.status_code == 302 and done["Location"] == "/accounts/password_change/done/"
    # Still signed in, with the new password from now on.
    assert "Password changed" in client.get(done["Location"]).content.decode()
    reviewer.refresh_from_db()
    assert reviewer.check_password("n3w-Secret-pass")
    [entry] = AuditEntry.objects.filter(verb="password_changed")
    assert entry.object_id == str(reviewer.pk) and entry.actor == reviewer
    assert "pw-alice" not in str(entry.details) and "n3w" not in str(entry.details)


def test_the_change_page_is_in_chinese(client: Client, reviewer: User) -> None:
    client.force_login(reviewer)
    page = client.get("/accounts/password_change/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    text = page.content.decode()
    assert "<h1>修改密码</h1>" in text and "Enter your current password" not in text


def test_guessing_the_current_password_on_the_change_page_meets_the_sign_in_brake(
    client: Client, reviewer: User, settings: Any
) -> None:
    settings.INBOX_LOGIN_FAILURES_PER_USER = 2
    client.force_login(reviewer)
    new = {"new_password1": "n3w-Secret-pass", "new_password2": "n3w-Secret-pass"}
    for n in range(2):
        guess = {"old_password": f"guess-{n}", **new}
        assert client.post("/accounts/password_change/", guess).status_code == 200
    # The right one now: not even checked until the window ends, nor may alice sign in anew.
    refused = client.post("/accounts/password_change/", {"old_password": "pw-alice-123", **new})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "Too many failed sign-ins" in refused.content.decode()
    reviewer.refresh_from_db()
    assert reviewer.check_password("pw-alice-123")
    assert sign_in(Client(), "alice", "pw-alice-123").status_code == 429


def test_the_change_page_needs_a_signed_in_reviewer(client: Client, db: None) -> None:
    response = client.get("/accounts/password_change/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


# ---------------------------------------------------------------------------------------------
# Resetting a forgotten one
# ---------------------------------------------------------------------------------------------


def test_a_forgotten_password_is_reset_through_an_emailed_link(
    client: Client, reviewer: User, queued: list[Any], settings: Any, caplog: Any
) -> None:
    settings.INBOX_BASE_URL = "https://inbox.example.com/approvals"
    caplog.set_level(logging.DEBUG)
    assert client.get("/accounts/password_reset/").status_code == 200
    asked = ask_reset(client, "ALICE@example.com")
    assert asked.status_code == 302 and asked["Location"] == "/accounts/password_reset/done/"
    assert "Check your email" in client.get(asked["Location"]).content.decode()
    # Queued with the account's id and the page's language only: the link is made by the
    # worker, never carried through the broker.
    assert queued == [(reviewer.pk, "en")]
    [message] = mail.outbox
    assert message.to == ["alice@example.com"]
    assert message.subject == "Reset your password for the approval inbox"
    [url] = LINK.findall(message.body)
    assert url.startswith("https://inbox.example.com/approvals/accounts/reset/")
    assert "Hello Alice," in message.body and "(alice)" in message.body
    assert "3 days" in message.body
    html = message.alternatives[0][0]
    assert f'href="{url}"' in html and "reset your account's password" in html
    path = url.removeprefix("https://inbox.example.com/approvals")
    # Django's own confirm step: the token goes into the session, the page is at another address.
    opened = client.get(path)
    assert opened.status_code == 302 and opened["Location"].endswith("/set-password/")
    page = client.get(opened["Location"])
    assert "Choose a new password" in page.content.decode()
    new = {"new_password1": "n3w-Secret-pass", "new_password2": "n3w-Secret-pass"}
    done = client.post(opened["Location"], new)
    assert done.status_code == 302 and done["Location"] == "/accounts/reset/done/"
    assert "Your new password is set" in client.get(done["Location"]).content.decode()
    assert sign_in(Client(), "alice", "n3w-Secret-pass").status_code == 302
    # The link works once.
    again = client.get(path)
    assert (
        "This link no longer works"
        in client.get(again.url if again.status_code == 302 else path).content.decode()
    )
    verbs = list(
        AuditEntry.objects.filter(object_id=str(reviewer.pk)).values_list("verb", flat=True)
    )
    assert "password_reset_requested" in verbs and "password_reset" in verbs
    # The link is in the email only: in no log line, no audit entry.
    token = path.split("/")[-2]
    assert token not in caplog.text
    assert not AuditEntry.objects.filter(details__icontains=token).exists()


def test_the_reset_page_tells_nothing_of_which_addresses_have_accounts(
    client: Client, reviewer: User, queued: list[Any]
) -> None:
    User.objects.create_user("dave", "dave@example.com", "pw-dave-123", is_active=False)
    User.objects.create_user("erin", "erin@example.com")  # No password yet: one to choose.
    answers = [
        ask_reset(client, email)
        for email in (
            "alice@example.com",
            "nobody@example.com",
            "dave@example.com",
            "erin@example.com",
        )
    ]
    assert {(a.status_code, a["Location"]) for a in answers} == {
        (302, "/accounts/password_reset/done/")
    }
    assert [m.to for m in mail.outbox] == [["alice@example.com"], ["erin@example.com"]]


def test_an_account_without_a_password_yet_gets_its_link_from_the_reset_page(
    client: Client, queued: list[Any], settings: Any, db: None
) -> None:
    """An invited reviewer who lost the invitation asks "Forgot your password?": the link
    sets their first password, and they sign in with it."""
    settings.INBOX_PASSWORD_RESETS_PER_EMAIL = 2
    erin = User.objects.create_user("erin", "erin@example.com")
    assert not erin.has_usable_password()
    asked = ask_reset(client, "Erin@Example.com")
    assert asked.status_code == 302 and asked["Location"] == "/accounts/password_reset/done/"
    assert queued == [(erin.pk, "en")]
    [message] = mail.outbox
    assert message.to == ["erin@example.com"]
    assert message.subject == "Reset your password for the approval inbox"
    path = "/accounts/" + LINK.findall(message.body)[0].split("/accounts/", 1)[1]
    assert set_password_through(client, path, "first-Secret-pass") == "Choose your password"
    assert sign_in(Client(), "erin", "first-Secret-pass").status_code == 302
    assert AuditEntry.objects.filter(verb="password_reset_requested").count() == 1
    # Throttled as any address: past the limit, 429 and nothing sent.
    ask_reset(client, "erin@example.com")
    assert ask_reset(client, "erin@example.com").status_code == 429
    assert len(mail.outbox) == 2


def test_the_reset_email_speaks_the_reviewer_s_language(
    client: Client, reviewer: User, queued: list[Any]
) -> None:
    ReviewerProfile.remember(reviewer, language="zh-hans")
    ask_reset(client, "alice@example.com")  # From an English page.
    [message] = mail.outbox
    assert message.subject == "重置您在审批收件箱的密码"
    assert "Reset" not in message.body and "3天" in message.body.replace(" ", "")
    # Without a language on record: the page's.
    other = User.objects.create_user("bob9", "bob9@example.com", "pw-bob9-123")
    ask_reset(client, "bob9@example.com", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert queued[-1] == (other.pk, "zh-hans")
    assert mail.outbox[-1].subject == "重置您在审批收件箱的密码"


def test_reset_requests_are_throttled_per_address_whether_or_not_it_has_an_account(
    client: Client, reviewer: User, queued: list[Any], settings: Any
) -> None:
    settings.INBOX_PASSWORD_RESETS_PER_EMAIL = 2
    for email in ("alice@example.com", "nobody@example.com"):
        for _ in range(2):
            assert ask_reset(client, email).status_code == 302
        refused = ask_reset(client, email.upper())
        assert refused.status_code == 429
        assert 0 < int(refused["Retry-After"]) <= settings.INBOX_LOGIN_WINDOW_SECONDS
        assert "Too many requests for a reset link. Try again in " in refused.content.decode()
    assert len(mail.outbox) == 2
    # Another address from elsewhere is not held back.
    User.objects.create_user("bob9", "bob9@example.com", "pw-bob9-123")
    assert ask_reset(Client(REMOTE_ADDR="10.0.0.9"), "bob9@example.com").status_code == 302
    zh = ask_reset(client, "alice@example.com", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert zh.status_code == 429 and "Too many" not in zh.content.decode()


def test_an_address_spelt_with_look_alike_letters_counts_as_the_same_address(
    client: Client, queued: list[Any], settings: Any, db: None
) -> None:
    settings.INBOX_PASSWORD_RESETS_PER_EMAIL = 2
    for _ in range(2):
        assert ask_reset(client, "sam@example.com").status_code == 302
    # "\u017f" (long s) folds to "s", as Django folds an address it matches to accounts.
    assert ask_reset(client, "\u017fam@example.com").status_code == 429
    assert ask_reset(client, " SAM@Example.COM ").status_code == 429


def test_reset_requests_are_throttled_per_client_address(
    client: Client, reviewer: User, queued: list[Any], settings: Any
) -> None:
    settings.INBOX_PASSWORD_RESETS_PER_IP = 3
    for n in range(3):
        assert ask_reset(client, f"someone-{n}@example.com").status_code == 302
    assert ask_reset(client, "alice@example.com").status_code == 429
    assert not mail.outbox


def test_a_mail_server_that_fails_leaves_no_link_in_the_log(
    client: Client, reviewer: User, queued: list[Any], settings: Any, caplog: Any
) -> None:
    settings.EMAIL_BACKEND = "inbox.mail.NoMailServerBackend"
    caplog.set_level(logging.DEBUG)
    assert ask_reset(client, "alice@example.com").status_code == 302
    assert "password reset email not sent: NoMailServer" in caplog.text
    assert "/accounts/reset/" not in caplog.text


def test_the_web_servers_lines_hide_a_reset_link() -> None:
    token = "cq1x2y-0123456789abcdef0123456789abcdef"
    line = f'"GET /accounts/reset/MQ/{token}/ HTTP/1.1" 302 0 "https://mail.example/?{token}"'
    redacted = redact_links(line)
    assert token not in redacted and "MQ" not in redacted
    assert "/accounts/reset/***/***/" in redacted
    # Either slash percent-encoded reaches the same page: hidden too, in the request line and in
    # what the filter hands the web servers' loggers.
    for path, said in [
        (f"/accounts/reset/Mw%2F{token}/", "/accounts/reset/***%2F***/"),
        (f"/accounts/reset/Mw%2f{token}/", "/accounts/reset/***%2f***/"),
        (f"/accounts/reset%2FMw%2F{token}/", "/accounts/reset%2F***%2F***/"),
        (f"/accounts/reset%2FMw/{token}/", "/accounts/reset%2F***/***/"),
    ]:
        redacted = redact_links(f'"GET {path} HTTP/1.1" 200 3672')
        assert token not in redacted and "Mw" not in redacted, redacted
        assert said in redacted, redacted
        record = logging.LogRecord(
            "django.server",
            logging.INFO,
            "",
            0,
            '"%s" %s %s',
            (f"GET {path} HTTP/1.1", 200, 1),
            None,
        )
        RedactGuestLinks().filter(record)
        assert token not in record.getMessage() and said in record.getMessage()
    # The token alone, after an encoded slash (a Referer, a `next`).
    assert token not in redact_links(f"next=%2Faccounts%2Freset%2FMw%2F{token}%2F")
    assert token not in redact_links(f"%2F{token}")
    # Ids that look alike stay readable.
    uuid = "0123abcd-0123-0123-0123-0123456789ab"
    assert redact_links(f"GET /forms/{uuid}/") == f"GET /forms/{uuid}/"


# ---------------------------------------------------------------------------------------------
# Who lost access, told so
# ---------------------------------------------------------------------------------------------


def test_a_deactivated_account_with_its_right_password_is_told_so(
    client: Client, settings: Any, db: None
) -> None:
    settings.INBOX_LOGIN_FAILURES_PER_USER = 2
    User.objects.create_user("dave", "dave@example.com", "pw-dave-123", is_active=False)
    for _ in range(3):
        told = sign_in(client, "dave", "pw-dave-123")
        assert told.status_code == 200 and "_auth_user_id" not in client.session
        page = told.content.decode()
        assert "This account is deactivated. Ask your administrator." in page
        assert "didn't match" not in page
    zh = sign_in(client, "dave", "pw-dave-123", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "此账号已停用\uff0c请联系管理员\u3002" in zh.content.decode()


def test_a_wrong_password_reads_the_same_for_a_deactivated_account(
    client: Client, db: None
) -> None:
    User.objects.create_user("dave", "dave@example.com", "pw-dave-123", is_active=False)
    for username in ("dave", "nobody"):
        page = sign_in(client, username, "wrong").content.decode()
        assert "Your username and password didn't match. Please try again." in page
        assert "deactivated" not in page


def test_a_reviewer_taken_off_a_form_is_told_so(
    client: Client, dify_app: DifyApp, outsider: User
) -> None:
    form = make_form(dify_app)
    # Asked once (their emailed link), then no longer.
    FormRecipient.objects.create(
        form=form, email=outsider.email, user=outsider, withdrawn_at=timezone.now()
    )
    client.force_login(outsider)
    response = client.get(f"/forms/{form.public_id}/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "This form is no longer assigned to you." in page and "does not exist" not in page
    zh = client.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "此表单已不再分配给您\u3002" in zh.content.decode()
    # Someone it never asked reads the usual words: nothing about the form.
    stranger = User.objects.create_user("zed", "zed@example.com", "pw-zed-123")
    client.force_login(stranger)
    other = client.get(f"/forms/{form.public_id}/").content.decode()
    assert "This form does not exist, or you may not see it." in other


def test_a_password_an_administrator_sets_is_in_the_trail(admin_user: User, reviewer: User) -> None:
    admin = Client()
    admin.force_login(admin_user)
    url = f"/admin/auth/user/{reviewer.pk}/password/"
    new = {
        "password1": "n3w-Secret-pass",
        "password2": "n3w-Secret-pass",
        "usable_password": "true",
    }
    assert admin.post(url, new).status_code == 302
    reviewer.refresh_from_db()
    assert reviewer.check_password("n3w-Secret-pass")
    [entry] = AuditEntry.objects.filter(verb="password_changed")
    assert entry.object_id == str(reviewer.pk) and entry.actor == admin_user
    assert entry.details["usable"] is True and "n3w" not in str(entry.details)
    # A refused form changes nothing and notes nothing.
    assert admin.post(url, {"password1": "a", "password2": "b"}).status_code == 200
    assert AuditEntry.objects.filter(verb="password_changed").count() == 1


def test_a_reset_link_made_before_a_deactivation_sets_no_password(
    client: Client, reviewer: User, queued: list[Any]
) -> None:
    ask_reset(client, "alice@example.com")
    [message] = mail.outbox
    [url] = LINK.findall(message.body)
    path = "/accounts/" + url.split("/accounts/", 1)[1]
    User.objects.filter(pk=reviewer.pk).update(is_active=False)
    opened = client.get(path)
    page = client.get(opened.url if opened.status_code == 302 else path).content.decode()
    assert "This link no longer works" in page and "new_password1" not in page
    # Nor does a POST to where the link would have gone set one.
    new = {"new_password1": "n3w-Secret-pass", "new_password2": "n3w-Secret-pass"}
    uid = path.split("/")[-3]
    client.post(f"/accounts/reset/{uid}/set-password/", new)
    reviewer.refresh_from_db()
    assert not reviewer.check_password("n3w-Secret-pass")
    assert not AuditEntry.objects.filter(verb="password_reset").exists()


# ---------------------------------------------------------------------------------------------
# A set-password link an administrator sends (an invitation to an account made without one)
# ---------------------------------------------------------------------------------------------


def send_links(admin: Client, *users: User, **extra: Any) -> Any:
    """The users list's action on `users`, followed to the list (its messages)."""
    data = {"action": "send_password_link", "_selected_action": [u.pk for u in users]}
    return admin.post("/admin/auth/user/", data, follow=True, **extra)


def said(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_an_administrator_emails_set_password_links_to_the_accounts_selected(
    admin_user: User,
    reviewer: User,
    links_queued: list[Any],
    settings: Any,
    caplog: Any,
) -> None:
    settings.INBOX_BASE_URL = "https://inbox.example.com/approvals"
    caplog.set_level(logging.DEBUG)
    # Made in the admin without a password, as a team is onboarded; one without an address,
    # one deactivated.
    erin = User.objects.create_user("erin", "erin@example.com", first_name="Erin")
    User.objects.create_user("nomail")
    User.objects.create_user("dave", "dave@example.com", "pw-dave-123", is_active=False)
    # Alice is signed in elsewhere: a link sent to her signs her out of nothing.
    alices = Client()
    alices.force_login(reviewer)
    admin = Client()
    admin.force_login(admin_user)
    chosen = User.objects.filter(username__in=["alice", "erin", "nomail", "dave"])
    answer = send_links(admin, *chosen)
    assert answer.status_code == 200
    assert said(answer) == [
        "Set-password links are being emailed to 2 accounts: "
        "alice (alice@example.com), erin (erin@example.com).",
        "Not sent to dave: the account is deactivated, and a link sets no password while it "
        "is. Reactivate it first (tick “Active”).",
        "Not sent to nomail: the account has no email address. Add one on its page, then send "
        "the link again.",
    ]
    # The worker is given each account's id only: it makes the link as it sends the email.
    assert sorted(links_queued) == sorted([(reviewer.pk,), (erin.pk,)])
    by_address = {m.to[0]: m for m in mail.outbox}
    assert sorted(by_address) == ["alice@example.com", "erin@example.com"]
    # Erin never had a password: an invitation, saying how long the link works.
    invitation = by_address["erin@example.com"]
    assert invitation.subject == "Your approval inbox account: choose your password"
    assert "Hello Erin," in invitation.body and "username erin" in invitation.body
    assert (
        "works once, for 3 days" in invitation.body and "Forgot your password?" in invitation.body
    )
    [url] = LINK.findall(invitation.body)
    assert "reset" not in invitation.body.replace(url, "").lower()
    assert url.startswith("https://inbox.example.com/approvals/accounts/reset/")
    assert f'href="{url}"' in invitation.alternatives[0][0]
    # Alice has a password: a reset, said to come from an administrator.
    reset = by_address["alice@example.com"]
    assert reset.subject == "Reset your password for the approval inbox"
    assert "An administrator of the approval inbox sent you a link" in reset.body
    assert "Someone, we hope you" not in reset.body and "3 days" in reset.body
    reviewer.refresh_from_db()
    assert reviewer.check_password("pw-alice-123")
    assert alices.get("/").status_code == 200
    # Each sent link is in the trail, by the administrator; the accounts skipped have none.
    entries = AuditEntry.objects.filter(verb="password_link_sent").order_by("object_id")
    assert sorted(
        (e.object_id, e.actor, e.actor_label, e.details["invitation"]) for e in entries
    ) == sorted(
        [
            (str(reviewer.pk), admin_user, admin_user.get_username(), False),
            (str(erin.pk), admin_user, admin_user.get_username(), True),
        ]
    )
    # Erin's link sets her first password (Django's token is made of her unusable one), once.
    path = url.removeprefix("https://inbox.example.com/approvals")
    browser = Client()
    assert set_password_through(browser, path, "erin-Secret-pass") == "Choose your password"
    assert sign_in(Client(), "erin", "erin-Secret-pass").status_code == 302
    again = browser.get(path)
    page = browser.get(again.url if again.status_code == 302 else path).content.decode()
    assert "This link no longer works" in page
    assert AuditEntry.objects.filter(verb="password_reset", object_id=str(erin.pk)).exists()
    # The link is in the email only: in no log line, no audit entry.
    token = path.split("/")[-2]
    assert token not in caplog.text and "/accounts/reset/" not in caplog.text
    assert not AuditEntry.objects.filter(details__icontains=token).exists()


def test_setting_a_password_from_a_link_signs_out_only_that_account_s_other_sessions(
    admin_user: User, reviewer: User, links_queued: list[Any]
) -> None:
    admin = Client()
    admin.force_login(admin_user)
    alices = Client()
    alices.force_login(reviewer)
    send_links(admin, reviewer)
    [url] = LINK.findall(mail.outbox[0].body)
    path = "/accounts/" + url.split("/accounts/", 1)[1]
    # Opened in the administrator's own browser (trying it): they stay signed in.
    assert set_password_through(admin, path, "n3w-Secret-pass") == "Choose a new password"
    assert admin.get("/admin/").status_code == 200
    # Alice's old session ends with her old password, as any reset's does.
    assert alices.get("/").status_code == 302
    assert sign_in(Client(), "alice", "n3w-Secret-pass").status_code == 302


def test_the_set_password_email_speaks_the_reviewer_s_language(
    admin_user: User, links_queued: list[Any], db: None
) -> None:
    li = User.objects.create_user("li", "li@example.com", first_name="李")
    ReviewerProfile.objects.create(user=li, language="zh-hans", language_chosen=True)
    admin = Client()
    admin.force_login(admin_user)
    send_links(admin, li)  # From an English admin.
    [message] = mail.outbox
    assert message.subject == "您的审批收件箱账号\uff1a设置密码"
    body = message.body + message.alternatives[0][0]
    assert "3天" in body.replace(" ", "") and "li" in body
    assert "password" not in body.lower() and "administrator" not in body.lower()
    # With no language on record: the inbox's default.
    bo = User.objects.create_user("bo", "bo@example.com")
    send_links(admin, bo, HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert mail.outbox[-1].subject == "Your approval inbox account: choose your password"


def test_the_link_lasts_as_long_as_django_s_reset_timeout_and_says_so(
    admin_user: User, links_queued: list[Any], settings: Any, db: None
) -> None:
    settings.PASSWORD_RESET_TIMEOUT = 2 * 3600
    erin = User.objects.create_user("erin", "erin@example.com")
    admin = Client()
    admin.force_login(admin_user)
    send_links(admin, erin)
    [message] = mail.outbox
    assert "The link works once, for 2 hours." in message.body


def test_an_account_s_page_offers_the_link_and_says_why_it_cannot_go(
    admin_user: User, reviewer: User, links_queued: list[Any]
) -> None:
    admin = Client()
    admin.force_login(admin_user)
    erin = User.objects.create_user("erin", "erin@example.com")
    page = admin.get(f"/admin/auth/user/{erin.pk}/change/").content.decode()
    url = f"/admin/auth/user/{erin.pk}/password-link/"
    assert f'<a href="{url}">Send a set-password link</a>' in page
    zh = admin.get(f"/admin/auth/user/{erin.pk}/change/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "发送设置密码链接" in zh.content.decode()
    confirm = admin.get(url).content.decode()
    assert "An email goes to erin@example.com" in confirm and "invitation" in confirm
    assert not mail.outbox  # Opening the page sends nothing.
    sent = admin.post(url, follow=True)
    assert sent.redirect_chain[0][0] == f"/admin/auth/user/{erin.pk}/change/"
    assert said(sent) == ["A set-password link is being emailed to erin (erin@example.com)."]
    assert links_queued == [(erin.pk,)] and len(mail.outbox) == 1
    # A deactivated account: the page says why, offers no button, and a POST sends nothing.
    User.objects.filter(pk=erin.pk).update(is_active=False)
    refused = admin.get(url).content.decode()
    assert "Not sent to erin: the account is deactivated" in refused
    assert 'value="Send the link"' not in refused and 'value="Send the link"' in confirm
    assert said(admin.post(url, follow=True))[0].startswith("Not sent to erin:")
    assert len(mail.outbox) == 1
    assert AuditEntry.objects.filter(verb="password_link_sent").count() == 1


def test_a_team_lead_sends_no_link_to_an_account_they_may_not_change(
    admin_user: User, reviewer: User, links_queued: list[Any]
) -> None:
    from django.contrib.auth.models import Permission

    lead = User.objects.create_user("lead", "lead@example.com", "pw-lead-123", is_staff=True)
    lead.user_permissions.set(Permission.objects.filter(codename__in=["view_user", "change_user"]))
    client = Client()
    client.force_login(lead)
    answer = send_links(client, reviewer, admin_user)
    assert said(answer) == [
        "A set-password link is being emailed to alice (alice@example.com).",
        f"Not sent to {admin_user.get_username()}: you may not change this account's password.",
    ]
    assert links_queued == [(reviewer.pk,)]
    # Nor from the superuser's page, which they may only view.
    url = f"/admin/auth/user/{admin_user.pk}/password-link/"
    assert (
        "Send a set-password link</a>"
        not in client.get(f"/admin/auth/user/{admin_user.pk}/change/").content.decode()
    )
    client.post(url)
    assert links_queued == [(reviewer.pk,)]


def test_an_account_deactivated_after_its_link_was_queued_gets_no_email(
    reviewer: User, db: None
) -> None:
    User.objects.filter(pk=reviewer.pk).update(is_active=False)
    assert tasks.send_password_link(reviewer.pk) == 0
    User.objects.filter(pk=reviewer.pk).update(is_active=True, email="")
    assert tasks.send_password_link(reviewer.pk) == 0
    assert not mail.outbox


def test_a_broker_away_is_said_and_nothing_recorded(
    admin_user: User, reviewer: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu.exceptions import OperationalError

    def away(args: tuple[Any, ...]) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(tasks.send_password_link, "apply_async", away)
    admin = Client()
    admin.force_login(admin_user)
    assert said(send_links(admin, reviewer)) == [
        "Not sent to alice: the task queue could not be reached. Try again in a moment."
    ]
    assert not AuditEntry.objects.filter(verb="password_link_sent").exists()
